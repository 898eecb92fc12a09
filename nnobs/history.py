"""A run's records folded into the series and latest values that status, charts and the CLI show."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from nnobs.analytics import steps
from nnobs.bulk import number, pair, parse_lines
from nnobs.records import Record, RecordReader, encode_record
from nnobs.series import Column, MinMaxBuckets



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


MARKER_LABELS = {"eta": "eta {:g}", "target": "target {:,}", "report_every": "report every {:,}", "tell_state": "state"}
MAX_MARKERS = 200  # the newest are kept; a chart with more would be unreadable anyway
PROGRESS_SAMPLES = 64  # (time, batch, loss) samples, for the training rate and the loss trend
PROGRESS_EVERY_S = 0.5  # at most this often, however many sessions refresh: 64 samples span 30 s or more
MAX_POINTS = 2000  # loss points sent to the browser: the min and max of 1,000 buckets
SV_BUCKETS = 200  # buckets per parameter line: its min and max in each
SV_KEPT = 256  # parameters whose trajectories are kept for the charts; a larger net keeps its latest vector whole


class RunHistory:
    """Series and latest values of one run; feed it records in file order with add().

    State vectors cost bounded memory: their trajectories are kept as min/max buckets of the
    first SV_KEPT parameters, the latest vector whole, and 8 bytes a report for its batch. The
    loss is kept whole in compact arrays (16 bytes a report), with buckets beside it for the chart.
    """

    def __init__(self, max_points: int = MAX_POINTS):
        self.loss_batches = Column(np.int64)
        self.loss_values = Column(float)  # NaN where the loss diverged
        self.loss_buckets = MinMaxBuckets(1, max_points // 2)
        self.sv_batches = Column(np.int64)  # batch of every state report
        self.sv_buckets: MinMaxBuckets | None = None  # over the first SV_KEPT parameters
        self.sv_latest: np.ndarray | None = None  # the newest state vector, whole
        self.step_buckets: MinMaxBuckets | None = None  # per state report: step length, cosine with the step before
        self._sv_tail: np.ndarray | None = None  # the last two state vectors, for the next steps
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
        """Fold in a chunk of complete run-file lines, in file order; a line that cannot be folded is skipped."""
        try:
            parsed = parse_lines(chunk)
        except (ValueError, TypeError, OverflowError):  # a line of a shape nothing here foresaw: one at a time
            for line in chunk.splitlines(keepends=True):
                try:
                    self._add_parsed(parse_lines(line), line)
                except (ValueError, TypeError, OverflowError):
                    self.skipped_lines += 1
            return
        self._add_parsed(parsed, chunk)

    def _add_parsed(self, parsed, chunk: bytes) -> None:
        self.n_records += chunk.count(b"\n") - parsed.skipped
        self.skipped_lines += parsed.skipped
        if len(parsed.loss_batch):
            self.loss_batches.extend(parsed.loss_batch)
            self.loss_values.extend(parsed.loss_value)
            self.loss_buckets.extend(parsed.loss_batch, parsed.loss_value[:, None])
            self.batch = int(parsed.loss_batch[-1])
            last = float(parsed.loss_value[-1])
            self.diverged = bool(np.isnan(last))
            self.loss = None if self.diverged else last
        if len(parsed.sv_batch):
            self._add_state_vectors(parsed.sv_batch, parsed.sv_rows)
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
        if self.last_t is not None and (not self.progress or self.progress[-1][0] + PROGRESS_EVERY_S <= self.last_t):
            self.progress.append((self.last_t, self.batch, self.loss))

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
                label = MARKER_LABELS.get(answer[1].get("cmd"))
                if ok and label:
                    value = answer[1].get("value")
                    text = label.format(value) if value is not None else label
                    self._mark(answer[0], text, "command")

    def _add_state_vectors(self, batches: np.ndarray, vectors: np.ndarray) -> None:
        """Fold in state reports: batches (k,), vectors (k, width)."""
        if self.sv_latest is None or len(self.sv_latest) != vectors.shape[1]:  # the first report, or another net
            self.sv_batches = Column(np.int64)
            self.sv_buckets = MinMaxBuckets(min(vectors.shape[1], SV_KEPT), SV_BUCKETS)
            self.step_buckets = MinMaxBuckets(2, SV_BUCKETS)
            self._sv_tail = None
        self.sv_batches.extend(batches)
        self.sv_buckets.extend(batches, vectors[:, :SV_KEPT])
        lengths, cosines = steps(self._sv_tail, vectors)
        self.step_buckets.extend(batches, np.column_stack((lengths, cosines)))
        tail = vectors if self._sv_tail is None else np.vstack((self._sv_tail, vectors))
        self._sv_tail = tail[-2:].copy()
        self.sv_latest = vectors[-1].copy()  # copies: views would keep the whole parsed chunk alive

    def _add_event(self, batch: int, kind: str, record: Record, t: float | None) -> None:
        detail = str(record.get("error", ""))
        if kind == "started":
            self._mark(batch, f"gen {self.gen}", "generation")
            if record.get("resumed_from") is not None:
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

    def loss_series(self) -> tuple[np.ndarray, np.ndarray]:
        """Every reported loss: batches (n,) and values (n,), NaN where diverged."""
        return self.loss_batches.values(), self.loss_values.values()


class RunWatcher:
    """A run file's reader and its history, refreshed incrementally; one per run, shared by every viewer."""

    def __init__(self, path):
        self.reader = RecordReader(path)
        self.history = RunHistory()
        # Page sessions run in threads of their own: hold this while refreshing and reading the history.
        self.lock = threading.Lock()

    def refresh(self) -> RunHistory:
        """Fold in what was appended since the last refresh; start over if the file was replaced or shrank."""
        restarts = self.reader.restarts
        chunk = self.reader.read_new_lines()
        if self.reader.restarts != restarts:
            self.history = RunHistory()
        self.history.add_lines(chunk)
        return self.history
