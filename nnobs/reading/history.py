"""A run's records folded into the series and latest values that status, charts and the CLI show."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

import numpy as np

from nnobs.protocol import events
from nnobs.protocol.commands import marker_label
from nnobs.protocol.numbers import is_int
from nnobs.protocol.records import Record, encode_record
from nnobs.protocol.schema import Tensors, tensor_rows
from nnobs.reading.bulk import number, pair, parse_lines
from nnobs.reading.series import Column, MinMaxBuckets, StateArchive
from nnobs.reading.steps import steps


@dataclass
class Answer:
    """The worker's answer to one command."""

    ok: bool
    batch: int
    reason: str = ""
    t: float | None = None  # wall time of the answer


@dataclass
class Event:
    """A lifecycle event: started, target_reached, shutdown, error, control_error."""

    kind: str
    batch: int
    gen: int | None
    t: float | None
    detail: str = ""
    by: str = ""  # who asked for it, when someone did: "page", "cli", ...


@dataclass
class Marker:
    """Where something changed the run: a command took effect, or a worker generation began."""

    batch: int
    label: str  # e.g. "eta 0.05", "target 5,000", "gen 2"
    kind: str  # "command" or "generation"
    number: int  # counts the batches with markers from the first: a stable place for their label


MARKER_LABELS = {"eta": "eta {:g}", "target": "target {:,}", "report_every": "snapshot every {:,}", "tell_state": "snapshot",
                 "pace": "pace {:g}/s", "reinit": "reinit, seed {}"}
NEW_LINE_EVENTS = tuple(map(events.needle, events.NEW_LINE))  # where a new line of training begins, as a byte search finds it
NOT_LEARNING_REPORTS = 5  # loss reports judged for "not learning": the newest this many (a stuck loss is reported
# only by the heartbeat, once a second: five seconds)...
NOT_LEARNING_BATCHES = 200  # ...spanning at least this many batches
FLAT = 1e-3  # their spread (max - min) at most this share of their max: the loss stopped moving
FAR_ABOVE_BEST = 10.0  # and their min this many times the best loss or more
MAX_MARKERS = 200  # the newest are kept; a chart with more would be unreadable anyway
PROGRESS_SAMPLES = 64  # (time, batch, loss) samples, for the training rate and the loss trend
PROGRESS_EVERY_S = 0.5  # at most this often, however many sessions refresh: 64 samples span 30 s or more
MAX_POINTS = 2000  # loss points sent to the browser: the min and max of 1,000 buckets
SV_BUCKETS = 200  # buckets per parameter line: its min and max in each
SV_KEPT = 256  # parameters whose trajectories are kept for the charts (all of a large net's sample); the latest
# vector is kept whole
MAX_METRICS = 32  # a script's metrics kept, in the order first logged: each costs two sets of buckets
# (a day-long run's cache is ~150 MB: written in about the time these bytes take to parse)


class RunHistory:
    """Series and latest values of one run; feed it records in file order with add().

    State vectors cost bounded memory: their trajectories are kept as min/max buckets of the
    first SV_KEPT parameters, the latest vector whole, and 8 bytes a report for its batch. The
    loss is kept whole in compact arrays (64 bytes a report), with buckets beside it for the chart.
    An outline-only history (for comparisons) keeps the buckets alone: bounded memory however long
    the run, no state vectors, and a rewind cuts the outline at its batch instead of rebuilding it.
    """

    def __init__(self, max_points: int = MAX_POINTS, outline_only: bool = False):
        self.outline_only = outline_only
        self.loss_batches = Column(np.int64)  # outline only: the newest NOT_LEARNING_REPORTS
        self.loss_values = Column(float)  # NaN where the loss diverged
        self.loss_windows = Column(float, 6)  # per report: batches, min, batch of min, max, batch of max, mean
        self.loss_outline = WindowedSeries(max_points // 2)  # for the chart: every window's extremes and means
        self.loss_times = MinMaxBuckets(1, max_points // 2)  # wall time of the loss reports by batch: a time axis
        self.metrics: dict[str, WindowedSeries] = {}  # the script's other metrics, by name, at most MAX_METRICS
        self.metrics_dropped = False  # whether names were logged beyond MAX_METRICS (they are not kept)
        self.sv_batches = Column(np.int64)  # batch of every state report
        self.sv_buckets: MinMaxBuckets | None = None  # over the first SV_KEPT parameters
        self.sv_latest: np.ndarray | None = None  # the newest state vector, whole
        self.step_buckets: MinMaxBuckets | None = None  # per state report: step length, cosine with the step before
        self._sv_tail: np.ndarray | None = None  # the last two state vectors, for the next steps
        self.tensors: Tensors | None = None  # what the state vector holds, from the newest params record
        self.sample: list[int] | None = None  # the state-vector indices a large net's state reports carry instead
        # Per state report, per tensor its schema.SUMMARY (tensors * len(SUMMARY)): a large net's worker writes them, a
        # small net's are made here from its whole state vectors, once its params record says what they hold.
        self.layers: MinMaxBuckets | None = None
        self.updates: MinMaxBuckets | None = None  # per update report, per tensor the update-to-weight ratio of a step
        self.dead: MinMaxBuckets | None = None  # per update report of a built-in net, per relu layer its dead units
        self.archive: StateArchive | None = None  # whole state vectors at a spread of the reports: replay, the path
        self.events: list[Event] = []
        self.markers: deque[Marker] = deque(maxlen=MAX_MARKERS)
        self._marked_batches = 0
        self.progress: deque[tuple[float, int, float | None]] = deque(maxlen=PROGRESS_SAMPLES)
        self.answers: dict[str, Answer] = {}  # by command id
        self.batch = 0
        self.loss: float | None = None
        self.eta: float | None = None
        self.target: int | None = None
        self.report_every: int | None = None
        self.pace: float | None = None
        self.best_loss: float | None = None
        self.not_learning = False
        self.gen: int | None = None
        self.last_t: float | None = None  # wall time of the newest record: the heartbeat
        self.diverged = False
        self.n_records = 0  # complete JSON lines folded in
        self.skipped_lines = 0  # lines that were not a JSON object

    def add(self, records: list[Record]) -> None:
        """Fold in records already parsed (tests, tools); they take the same path as lines read from a file."""
        self.add_lines(b"".join(encode_record(record) for record in records))

    def add_lines(self, chunk: bytes) -> None:
        """Fold in a chunk of complete run-file lines, in file order; a line that cannot be folded is skipped.

        A worker that starts from a checkpoint, or rewinds to an older one, goes back in batches:
        what the run file says after that point of the line before replaces it; a reinitialized
        net's best loss is its own. So the chunk is folded in pieces that end where a new line of
        training begins.
        """
        self.fold(chunk)
        self.settle()

    def fold(self, chunk: bytes) -> None:
        """Fold in the chunk's lines; what it leaves to settle() depends on the wall clock or only on the end state,
        so a file folded in chunks, wherever they were cut, makes the history one whole fold would."""
        for piece, begins in _pieces(chunk):
            if begins is not None:
                kind, batch = begins
                if kind == "reinit":
                    self.best_loss = None
                else:
                    self._go_back(batch)
            self._add_piece(piece)

    def settle(self) -> None:
        """Once per refresh: a progress sample for the rate, and the verdict on learning."""
        if self.last_t is not None and (not self.progress or self.progress[-1][0] + PROGRESS_EVERY_S <= self.last_t):
            self.progress.append((self.last_t, self.batch, self.loss))
        self.not_learning = self._judge_not_learning()

    def _add_piece(self, chunk: bytes) -> None:
        state_vectors = not self.outline_only
        try:
            parsed = parse_lines(chunk, state_vectors)
        except (ValueError, TypeError, OverflowError):  # a line of a shape nothing here foresaw: one at a time
            for line in chunk.splitlines(keepends=True):
                try:
                    self._add_parsed(parse_lines(line, state_vectors), line)
                except (ValueError, TypeError, OverflowError):
                    self.skipped_lines += 1
            return
        self._add_parsed(parsed, chunk)

    def _add_parsed(self, parsed, chunk: bytes) -> None:
        self.n_records += chunk.count(b"\n") - parsed.skipped
        self.skipped_lines += parsed.skipped
        if parsed.params is not None:  # on the line a worker starts with: before the reports it describes
            self.tensors, self.sample = parsed.params
        if len(parsed.loss_batch):
            self._add_losses(parsed.loss_batch, parsed.loss_value, parsed.loss_window)
            timed = np.isfinite(parsed.loss_t)
            self.loss_times.extend(parsed.loss_batch[timed], parsed.loss_t[timed])
            self.batch = int(parsed.loss_batch[-1])
            last = float(parsed.loss_value[-1])
            self.diverged = bool(np.isnan(last))
            self.loss = None if self.diverged else last
        if len(parsed.sv_batch):
            self._add_state_vectors(parsed.sv_batch, parsed.sv_rows)
        if len(parsed.summary_batch) and not self.outline_only:
            self._add_summaries(parsed.summary_batch, parsed.summary_rows)
        if not self.outline_only:
            self.updates = _extended(self.updates, *parsed.updates)
            self.dead = _extended(self.dead, *parsed.dead)
        for name, reports in parsed.metrics.items():
            self._add_metric(name, *reports)
        for topic, value in parsed.settings.items():
            setattr(self, topic, value)
        for record in parsed.records:
            self._add_record(record)
        try:
            newest = json.loads(parsed.last_line) if parsed.last_line else {}
        except ValueError:
            newest = {}
        if isinstance(newest, dict):
            self.last_t = number(newest.get("t")) or self.last_t
            self.gen = newest["gen"] if isinstance(newest.get("gen"), int) else self.gen
            # The newest line is the worker's latest word on its batch, whatever it reports.
            self.batch = next((p[0] for p in map(pair, newest.values()) if p), self.batch)

    def _add_losses(self, batches: np.ndarray, values: np.ndarray, windows: np.ndarray, keep: bool = True) -> None:
        """Fold in loss reports: batches (n,), latest values (n,), windows (n, 6); keep=False only re-buckets them."""
        if keep:
            for column, new in ((self.loss_batches, batches), (self.loss_values, values), (self.loss_windows, windows)):
                column.extend(new[-NOT_LEARNING_REPORTS:] if self.outline_only else new)
                if self.outline_only:
                    column.keep_last(NOT_LEARNING_REPORTS)
        self.loss_outline.extend(batches, values, windows)
        with np.errstate(invalid="ignore"):
            lowest = np.nanmin(windows[:, 1], initial=np.inf)
        if np.isfinite(lowest) and (self.best_loss is None or lowest < self.best_loss):
            self.best_loss = float(lowest)

    def _go_back(self, batch: int) -> None:
        """The run went back to batch: forget every loss, state vector and marker after it."""
        batches = self.loss_batches.values()
        self.loss_times.truncate(batch)
        if self.outline_only:
            self._cut_outline(batch)
        elif len(batches) and batches.max() > batch:
            keep = batches <= batch
            for column in (self.loss_batches, self.loss_values, self.loss_windows):
                column.keep(keep)
            self.loss_outline = WindowedSeries(self.loss_outline.outline.max_buckets)
            self.best_loss = None
            self._add_losses(self.loss_batches.values(), self.loss_values.values(), self.loss_windows.values(), keep=False)
        if len(self.sv_batches):
            self.sv_batches.keep(self.sv_batches.values() <= batch)
            self.sv_buckets.truncate(batch)
            self.step_buckets.truncate(batch)
            self._sv_tail = None  # the next step starts from the state gone back to, not from one abandoned
        for per_report in (self.layers, self.updates, self.dead, self.archive):
            if per_report is not None:
                per_report.truncate(batch)
        for metric in self.metrics.values():
            metric.truncate(batch)
        while self.markers and self.markers[-1].batch > batch:
            self.markers.pop()
        self.progress.clear()  # the rate and the loss's trend are of the line of training gone on with

    def _cut_outline(self, batch: int) -> None:
        """An outline-only history goes back: the outline is cut bucket by bucket; the best loss is the kept buckets'."""
        keep = self.loss_batches.values() <= batch
        if keep.all() and self.loss_outline.outline.last[0] <= batch:
            return
        for column in (self.loss_batches, self.loss_values, self.loss_windows):
            column.keep(keep)
        self.loss_outline.truncate(batch)
        outline = self.loss_outline.outline
        with np.errstate(invalid="ignore"):
            lowest = np.nanmin(outline.min_value[: outline.n_buckets, 0], initial=np.inf)
        self.best_loss = float(lowest) if np.isfinite(lowest) else None

    def _judge_not_learning(self) -> bool:
        """True when the newest reports' loss has stopped moving, far above the best this line of training reached."""
        windows = self.loss_windows.values()[-NOT_LEARNING_REPORTS:]
        batches = self.loss_batches.values()[-NOT_LEARNING_REPORTS:]
        if len(windows) < NOT_LEARNING_REPORTS or batches[-1] - batches[0] < NOT_LEARNING_BATCHES or self.best_loss is None:
            return False
        with np.errstate(invalid="ignore"):
            low, high = np.nanmin(windows[:, 1], initial=np.inf), np.nanmax(windows[:, 3], initial=-np.inf)
        return bool(np.isfinite(low) and np.isfinite(high) and high - low <= FLAT * high and low >= FAR_ABOVE_BEST * self.best_loss
                    and low > 0)

    def rate(self, window_s: float = 10.0) -> tuple[float | None, float | None]:
        """Batches per second and the loss's relative change over about the last window_s of the run's time."""
        if len(self.progress) < 2:
            return None, None
        t1, b1, loss1 = self.progress[-1]
        recent = [p for p in list(self.progress)[:-1] if p[0] >= t1 - window_s]
        t0, b0, loss0 = recent[0] if recent else self.progress[-2]
        if t1 <= t0 or b1 < b0:  # no time passed, or a restart went back to a checkpoint
            return None, None
        change = (loss1 - loss0) / loss0 if loss0 and loss1 is not None else None
        return (b1 - b0) / (t1 - t0), change

    def _add_record(self, record: Record) -> None:
        """Events and command answers: the rare lines, each parsed as JSON."""
        t = number(record.get("t"))
        event = pair(record.get("event"))
        if event and isinstance(event[1], str):
            if isinstance(record.get("gen"), int):
                self.gen = record["gen"]
            self._add_event(event[0], event[1], record, t)
        for topic, ok in (("ack", True), ("reject", False)):
            answer = pair(record.get(topic))
            if answer and isinstance(answer[1], dict):
                self.answers[str(answer[1].get("id"))] = Answer(ok, answer[0], str(answer[1].get("reason", "")), t)
                if ok and (label := marker_label(answer[1].get("cmd"), answer[1].get("value"), record)):
                    self._mark(answer[0], label, "command")
                if ok and answer[1].get("cmd") == "pace":
                    self.progress.clear()  # the rate counts from the new pace: the old one's says nothing of it

    def _add_state_vectors(self, batches: np.ndarray, vectors: np.ndarray) -> None:
        """Fold in state reports: batches (k,), vectors (k, width)."""
        width = vectors.shape[1]
        if self.sv_latest is None or len(self.sv_latest) != width:  # the first report, or another net
            self.sv_batches = Column(np.int64)
            # A large net's sample is kept whole: it is already the few that stand for the rest.
            kept = width if self.sample is not None and len(self.sample) == width else min(width, SV_KEPT)
            self.sv_buckets = MinMaxBuckets(kept, SV_BUCKETS)
            self.step_buckets = MinMaxBuckets(2, SV_BUCKETS)
            self.archive = StateArchive(width)
            self._sv_tail = None
        if self.tensors and self.sample is None and sum(int(np.prod(shape)) for _, shape in self.tensors) == width:
            previous = None if self._sv_tail is None else self._sv_tail[-1]
            self._add_summaries(batches, tensor_rows(vectors, self.tensors, previous))
        self.archive.extend(batches, vectors)
        self.sv_batches.extend(batches)
        self.sv_buckets.extend(batches, vectors[:, : self.sv_buckets.n_columns])
        lengths, cosines = steps(self._sv_tail, vectors)
        self.step_buckets.extend(batches, np.column_stack((lengths, cosines)))
        tail = vectors if self._sv_tail is None else np.vstack((self._sv_tail, vectors))
        self._sv_tail = tail[-2:].copy()
        self.sv_latest = vectors[-1].copy()  # copies: views would keep the whole parsed chunk alive

    def _add_summaries(self, batches: np.ndarray, rows: np.ndarray) -> None:
        """Fold in per-tensor summaries: batches (j,), rows (j, tensors, len(SUMMARY))."""
        width = rows.shape[1] * rows.shape[2]
        if self.layers is None or self.layers.n_columns != width:  # the first summary, or another net
            self.layers = MinMaxBuckets(width, SV_BUCKETS)
        self.layers.extend(batches, rows.reshape(len(batches), width))

    def _add_metric(self, name: str, batches: np.ndarray, values: np.ndarray, windows: np.ndarray) -> None:
        metric = self.metrics.get(name)
        if metric is None:
            if len(self.metrics) >= MAX_METRICS:
                self.metrics_dropped = True
                return
            metric = self.metrics[name] = WindowedSeries(self.loss_outline.outline.max_buckets)
        metric.extend(batches, values, windows)

    def _add_event(self, batch: int, kind: str, record: Record, t: float | None) -> None:
        detail = str(record.get("error", ""))
        if kind in ("started", "rewound", "reinit"):
            self._mark(batch, f"gen {self.gen}", "generation")
        if kind == "started" and isinstance(record.get("resumed_from"), int):
            detail = f"resumed from the checkpoint at batch {record['resumed_from']:,}"
        self.events.append(Event(kind, batch, self.gen, t, detail, str(record.get("by") or "")))

    def _mark(self, batch: int, label: str, kind: str) -> None:
        """Add a marker; markers at the batch of the one before share its number, and so its label's place."""
        if not self.markers or self.markers[-1].batch != batch:
            self._marked_batches += 1
        self.markers.append(Marker(batch, label, kind, self._marked_batches))

    @property
    def last_lifecycle(self) -> Event | None:
        """The newest event other than a control-file warning."""
        return next((e for e in reversed(self.events) if e.kind != "control_error"), None)

    def wall_time_at(self, batches: np.ndarray) -> np.ndarray:
        """The wall time (unix seconds) when the run was at each of batches (n,), from the loss reports' times in
        buckets, interpolated between them; NaN for all when no loss report had a time (a notebook's file)."""
        known, times = self.loss_times.points(0)
        if not len(known):
            return np.full(len(batches), np.nan)
        return np.interp(batches, known, times)

    def loss_series(self) -> tuple[np.ndarray, np.ndarray]:
        """Every reported loss: batches (n,) and values (n,), NaN where diverged."""
        return self.loss_batches.values(), self.loss_values.values()


def _extended(buckets: MinMaxBuckets | None, batches: np.ndarray, rows: np.ndarray) -> MinMaxBuckets | None:
    """buckets with rows (k, width) appended at batches; begun anew when they are the first, or of another width."""
    if not len(batches):
        return buckets
    if buckets is None or buckets.n_columns != rows.shape[1]:
        buckets = MinMaxBuckets(rows.shape[1], SV_BUCKETS)
    buckets.extend(batches, rows)
    return buckets


class WindowedSeries:
    """A series reported with windows (the loss, a metric), for its chart: the outline of every window's extremes
    and latest values, and the windows' means weighted by the batches each covers, both in bounded buckets."""

    def __init__(self, max_buckets: int):
        self.outline = MinMaxBuckets(1, max_buckets)
        self.means = MinMaxBuckets(1, max_buckets)
        self.latest: tuple[int, float] | None = None  # (batch, value) of the newest report

    def extend(self, batches: np.ndarray, values: np.ndarray, windows: np.ndarray) -> None:
        """Fold in reports: batches (n,), latest values (n,), windows (n, 6) as in a loss report."""
        if not len(batches):
            return
        # Each report is up to three points in batch order: its window's min and max where they were, and its last.
        at = np.column_stack((windows[:, 2], windows[:, 4], batches)).astype(np.int64)  # (n, 3)
        value = np.column_stack((windows[:, 1], windows[:, 3], values))
        order = np.argsort(at, axis=1, kind="stable")
        at, value = np.take_along_axis(at, order, axis=1), np.take_along_axis(value, order, axis=1)
        distinct = np.ones(at.shape, dtype=bool)
        distinct[:, 1:] = at[:, 1:] != at[:, :-1]
        self.outline.extend(at[distinct], value[distinct][:, None])
        # A report at a batch no later than the one before (a shutdown repeating the last loss) covers no batch the
        # means lack: drawn in the outline, left out of the means, where it would pull the smoothed line's end
        # to one minibatch's loss.
        before = np.append(self.latest[0] if self.latest is not None else -1, batches[:-1])
        new = batches > before
        self.means.extend(batches[new], windows[new, 5:6], weights=windows[new, 0])
        self.latest = (int(batches[-1]), float(values[-1]))

    def truncate(self, batch: int) -> None:
        """Forget the reports after batch (a run went back to it)."""
        self.outline.truncate(batch)
        self.means.truncate(batch)
        if self.latest is not None and self.latest[0] > batch:
            self.latest = None  # the next report says it again


def _pieces(chunk: bytes) -> list[tuple[bytes, tuple[str, int] | None]]:
    """The chunk cut before each line where a new line of training begins, each piece with (event, batch gone on from).

    The first piece begins nothing (None). Such lines are rare and found by a plain search, so a
    chunk of ordinary reports costs one scan per kind.
    """
    starts: dict[int, tuple[str, int]] = {}  # line start -> (event, batch)
    for needle in NEW_LINE_EVENTS:
        at = chunk.find(needle)
        while at != -1:
            line_start = chunk.rfind(b"\n", 0, at) + 1
            line_end = chunk.find(b"\n", at)
            begins = _new_line_of(chunk[line_start : line_end if line_end != -1 else len(chunk)])
            if begins is not None:
                starts[line_start] = begins
            at = chunk.find(needle, at + 1)
    if not starts:
        return [(chunk, None)]
    cuts = sorted(starts)
    pieces = [(chunk[: cuts[0]], None)] if cuts[0] else []
    for begin, end in zip(cuts, cuts[1:] + [len(chunk)]):
        pieces.append((chunk[begin:end], starts[begin]))
    return pieces


def _new_line_of(line: bytes) -> tuple[str, int] | None:
    """(event, batch) of a record where a new line of training begins: a start goes on from its checkpoint's
    batch (0 for a fresh start), a rewind and a reinit from their own."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    event = pair(record.get("event")) if isinstance(record, dict) else None
    if not event:
        return None
    if event[1] in ("rewound", "reinit"):
        return event[1], event[0]
    if event[1] == "started":
        resumed = record.get("resumed_from")
        return "started", resumed if is_int(resumed) else 0
    return None


