"""A run's records folded into the series and latest values that status, charts and the CLI show."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

import numpy as np

from nnobs.protocol import events
from nnobs.protocol.events import EventKind
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int, number
from nnobs.protocol.records import Record, encode_record, pair
from nnobs.protocol.schema import Tensors
from nnobs.reading.bulk import ParsedLines, parse_lines
from nnobs.reading.journal import MAX_MARKERS, Answer, Event, Journal, Marker
from nnobs.reading.series import Column, MinMaxBuckets, StateArchive, WindowedSeries
from nnobs.reading.tracks import (
    MAX_METRICS,
    NOT_LEARNING_REPORTS,
    SV_KEPT,
    LossOutline,
    LossTrack,
    MetricTrack,
    StateTrack,
    Track,
)

__all__ = [
    "MAX_MARKERS",
    "MAX_METRICS",
    "MAX_POINTS",
    "NEW_LINE_EVENTS",
    "NOT_LEARNING_REPORTS",
    "SV_KEPT",
    "Answer",
    "Event",
    "Marker",
    "Rise",
    "RunHistory",
    "WindowedSeries",
]

# Where a new line of training begins, as a byte search finds it.
NEW_LINE_EVENTS = tuple(map(events.needle, events.NEW_LINE))
PROGRESS_SAMPLES = 64  # (time, batch, loss) samples, for the training rate and the loss trend
PROGRESS_EVERY_S = 0.5  # at most this often, however many sessions refresh: 64 samples span 30 s or more
LOSS_NOISE_FLOOR = (64 * float(np.finfo(float).eps)) ** 2  # about 2e-28: a squared error of 64 ulps at 1
NOISE_ULPS = 64  # a change of a value within this many of its ulps is rounding
MAX_POINTS = 2000  # loss points sent to the browser: the min and max of 1,000 buckets

RISE_FACTOR = 3.0  # the loss's recent mean this many times what it was when a command took effect: it went wrong
T = TypeVar("T")


@dataclass(frozen=True)
class Rise:
    """The loss rose after a command: which, where it took effect, and the loss's recent mean then and now."""

    command: str  # the marker's label: "eta 500"
    batch: int
    before: float
    now: float


class _OfTrack(Generic[T]):
    """An attribute of the history that one of its tracks keeps: read and written there."""

    def __init__(self, track: str, name: str):
        self.track, self.name = track, name

    @overload
    def __get__(self, history: None, owner: type) -> _OfTrack[T]: ...
    @overload
    def __get__(self, history: RunHistory, owner: type) -> T: ...
    def __get__(self, history: RunHistory | None, owner: type) -> T | _OfTrack[T]:
        return self if history is None else getattr(getattr(history, self.track), self.name)

    def __set__(self, history: RunHistory, value: T) -> None:
        setattr(getattr(history, self.track), self.name, value)


class _OfStates(Generic[T]):
    """An attribute of the history's state track, read there; None for an outline-only history, which has none."""

    def __init__(self, name: str):
        self.name = name

    @overload
    def __get__(self, history: None, owner: type) -> _OfStates[T]: ...
    @overload
    def __get__(self, history: RunHistory, owner: type) -> T | None: ...
    def __get__(self, history: RunHistory | None, owner: type) -> T | None | _OfStates[T]:
        if history is None:
            return self
        return None if history.state_track is None else getattr(history.state_track, self.name)


class RunHistory:
    """Series and latest values of one run; feed it records in file order with add().

    Its tracks keep the series: the loss, the script's metrics, the state reports and the journal of events,
    answers and markers; each extends itself from a parsed chunk and goes back when a new line of training
    begins. An outline-only history (for comparisons) has no state track and keeps the loss's buckets alone:
    bounded memory however long the run.
    """

    loss_batches = _OfTrack[Column]("loss_track", "batches")  # outline only: the newest NOT_LEARNING_REPORTS
    loss_values = _OfTrack[Column]("loss_track", "values")  # NaN where the loss diverged
    loss_windows = _OfTrack[Column]("loss_track", "windows")  # per report: batches, min, batch of min, max, ..., mean
    loss_outline = _OfTrack[WindowedSeries]("loss_track", "outline")  # for the chart: extremes and means
    loss_times = _OfTrack[MinMaxBuckets]("loss_track", "times")  # wall time of the loss reports by batch: a time axis
    loss = _OfTrack["float | None"]("loss_track", "recent_mean")  # over the newest RECENT_BATCHES batches or more
    best_loss = _OfTrack["float | None"]("loss_track", "best_recent_mean")  # the lowest that has been
    batch_loss = _OfTrack["float | None"]("loss_track", "latest")  # the newest report's: one minibatch's loss
    lowest_batch_loss = _OfTrack["float | None"]("loss_track", "best")  # one minibatch's: the verdict on learning's
    diverged = _OfTrack[bool]("loss_track", "diverged")
    metrics = _OfTrack["dict[str, WindowedSeries]"]("metric_track", "series")  # by name, at most MAX_METRICS
    metrics_dropped = _OfTrack[bool]("metric_track", "dropped")  # whether names beyond MAX_METRICS were logged
    sv_buckets = _OfStates[MinMaxBuckets]("buckets")  # over the first SV_KEPT parameters
    sv_latest = _OfStates[np.ndarray]("latest")  # the newest state vector, whole
    step_buckets = _OfStates[MinMaxBuckets]("steps")  # step length, cosine with the one before
    layers = _OfStates[MinMaxBuckets]("layers")  # per state report, per tensor its SUMMARY
    updates = _OfStates[MinMaxBuckets]("updates")  # per tensor the update-to-weight ratio
    dead = _OfStates[MinMaxBuckets]("dead")  # per relu layer of a built-in net, its dead units
    archive = _OfStates[StateArchive]("archive")  # whole state vectors at a spread of reports
    events = _OfTrack["list[Event]"]("journal", "events")
    answers = _OfTrack["dict[str, Answer]"]("journal", "answers")  # by command id
    markers = _OfTrack["deque[Marker]"]("journal", "markers")
    gen = _OfTrack["int | None"]("journal", "gen")

    def __init__(self, max_points: int = MAX_POINTS, outline_only: bool = False):
        self.loss_track: LossTrack = (LossOutline if outline_only else LossTrack)(max_points // 2)
        self.metric_track = MetricTrack(max_points // 2)
        self.state_track: StateTrack | None = None if outline_only else StateTrack()
        self.journal = Journal()
        self.tensors: Tensors | None = None  # what the state vector holds, from the newest params record
        self.sample: list[int] | None = None  # the state-vector indices a large net's state reports carry instead
        self.progress: deque[tuple[float, int, float | None]] = deque(maxlen=PROGRESS_SAMPLES)
        self.batch = 0
        self.eta: float | None = None
        self.target: int | None = None
        self.report_every: int | None = None
        self.pace: float | None = None
        self.not_learning = False
        self.rose: Rise | None = None  # the loss rose by RISE_FACTOR or more since the newest command took effect
        self.last_t: float | None = None  # wall time of the newest record: the heartbeat
        self.n_records = 0  # complete JSON lines folded in
        self.skipped_lines = 0  # lines that were not a JSON object

    @property
    def outline_only(self) -> bool:
        """Whether this history keeps the outlines alone: no state track."""
        return self.state_track is None

    @property
    def sv_batches(self) -> Column:
        """Batch of every state report (none for an outline-only history)."""
        return Column(np.int64) if self.state_track is None else self.state_track.batches

    def tracks(self) -> tuple[Track, ...]:
        """The tracks this history keeps."""
        kept: tuple[Track, ...] = (self.loss_track, self.metric_track, self.journal)
        return kept if self.state_track is None else (*kept, self.state_track)

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
                if kind == EventKind.REINIT:
                    self.loss_track.best = None
                    self.loss_track.recent.begin_again(batch)
                else:
                    self._go_back(batch)
            self._add_piece(piece)

    def settle(self) -> None:
        """Once per refresh: a progress sample for the rate, and the verdict on learning."""
        if self.last_t is not None and (not self.progress or self.progress[-1][0] + PROGRESS_EVERY_S <= self.last_t):
            self.progress.append((self.last_t, self.batch, self.loss_track.recent_mean))
        self.not_learning = self.loss_track.not_learning()
        self.rose = self._rise_since_command()

    def _rise_since_command(self) -> Rise | None:
        """The newest command and how far the loss rose since it took effect, when by RISE_FACTOR or more."""
        # A reinitialized net starts high again: no command before it, nor the reinit itself, made that loss.
        fresh_from = max((e.batch for e in self.events if e.kind == EventKind.REINIT), default=-1)
        commands = [m for m in self.markers if m.kind == "command" and fresh_from < m.batch < self.batch]
        now = self.loss_track.recent_mean
        if not commands or now is None:
            return None
        batch = commands[-1].batch  # commands that took effect together (eta and target) are named together
        before = self.loss_track.recent.before(batch)
        if before is None or before <= 0 or now < RISE_FACTOR * before:
            return None
        return Rise(" and ".join(m.label for m in commands if m.batch == batch), batch, before, now)

    def _add_piece(self, chunk: bytes) -> None:
        state_vectors = self.state_track is not None
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

    def _add_parsed(self, parsed: ParsedLines, chunk: bytes) -> None:
        self.n_records += chunk.count(b"\n") - parsed.skipped
        self.skipped_lines += parsed.skipped
        if parsed.params is not None:  # on the line a worker starts with: before the reports it describes
            self.tensors, self.sample = parsed.params
        self.loss_track.extend(parsed)
        if len(parsed.loss_batch):
            self.batch = int(parsed.loss_batch[-1])
        if self.state_track is not None:
            self.state_track.extend(parsed, self.tensors, self.sample)
        self.metric_track.extend(parsed)
        for topic, value in parsed.settings.items():
            setattr(self, topic, value)
        if self.journal.extend(parsed.records):
            self.progress.clear()  # the rate counts from the new pace: the old one's says nothing of it
        try:
            newest = parse_json(parsed.last_line) if parsed.last_line else {}
        except ValueError:
            newest = {}
        if isinstance(newest, dict):
            self.last_t = number(newest.get("t")) or self.last_t
            self.journal.gen = newest["gen"] if isinstance(newest.get("gen"), int) else self.journal.gen
            # The newest line is the worker's latest word on its batch, whatever it reports.
            self.batch = next((p[0] for p in map(pair, newest.values()) if p), self.batch)

    def _go_back(self, batch: int) -> None:
        """The run went back to batch: forget every loss, state vector and marker after it."""
        for track in self.tracks():
            track.go_back(batch)
        self.progress.clear()  # the rate and the loss's trend are of the line of training gone on with

    def rate(self, window_s: float = 10.0) -> tuple[float | None, float | None]:
        """Batches per second and the loss's relative change over about the last window_s of the run's time."""
        if len(self.progress) < 2:
            return None, None
        t1, b1, loss1 = self.progress[-1]
        recent = [p for p in list(self.progress)[:-1] if p[0] >= t1 - window_s]
        t0, b0, loss0 = recent[0] if recent else self.progress[-2]
        if t1 <= t0 or b1 < b0:  # no time passed, or a restart went back to a checkpoint
            return None, None
        change = (loss1 - loss0) / loss0 if loss0 and loss1 is not None and beyond_float_noise(loss0, loss1) else None
        return (b1 - b0) / (t1 - t0), change

    @property
    def last_lifecycle(self) -> Event | None:
        """The newest event other than a control-file warning."""
        return self.journal.last_lifecycle

    def wall_time_at(self, batches: np.ndarray) -> np.ndarray:
        """The wall time (unix seconds) when the run was at each of batches (n,), from the loss reports' times in
        buckets, interpolated between them; NaN for all when no loss report had a time (a notebook's file)."""
        known, times = self.loss_track.times.points(0)
        if not len(known):
            return np.full(len(batches), np.nan)
        return np.interp(batches, known, times)

    def loss_series(self) -> tuple[np.ndarray, np.ndarray]:
        """Every reported loss: batches (n,) and values (n,), NaN where diverged."""
        return self.loss_track.batches.values(), self.loss_track.values.values()


def beyond_float_noise(before: float, after: float) -> bool:
    """Whether a loss moved from before to after by more than rounding could: a loss below LOSS_NOISE_FLOOR is made of
    errors within a few dozen ulps of outputs near 1, so its changes (1.86e-31 to 1e-32) are rounding, not learning;
    above it, a change within a few ulps of the values themselves is no change either."""
    if max(abs(before), abs(after)) < LOSS_NOISE_FLOOR:
        return False
    return bool(abs(after - before) > NOISE_ULPS * np.finfo(float).eps * max(abs(before), abs(after)))


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
    pieces: list[tuple[bytes, tuple[str, int] | None]] = [(chunk[: cuts[0]], None)] if cuts[0] else []
    for begin, end in zip(cuts, cuts[1:] + [len(chunk)]):
        pieces.append((chunk[begin:end], starts[begin]))
    return pieces


def _new_line_of(line: bytes) -> tuple[str, int] | None:
    """(event, batch) of a record where a new line of training begins: a start goes on from its checkpoint's
    batch (0 for a fresh start), a rewind and a reinit from their own."""
    try:
        record = parse_json(line)
    except ValueError:
        return None
    event = pair(record.get("event")) if isinstance(record, dict) else None
    if not event:
        return None
    if event[1] in (EventKind.REWOUND, EventKind.REINIT):
        return event[1], event[0]
    if event[1] == EventKind.STARTED:
        resumed = record.get("resumed_from")
        return EventKind.STARTED, resumed if is_int(resumed) else 0
    return None
