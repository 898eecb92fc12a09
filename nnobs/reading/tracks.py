"""The series of a run's history, one track each (loss, metrics, states): each extends itself from a parsed chunk
and goes back when a new line of training begins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from nnobs.protocol.schema import Tensors, tensor_rows
from nnobs.reading.bulk import ParsedLines
from nnobs.reading.series import Column, MinMaxBuckets, RecentMean, StateArchive, WindowedSeries
from nnobs.reading.steps import steps

NOT_LEARNING_REPORTS = 5  # loss reports judged for "not learning": the newest this many (a stuck loss is reported
# only by the heartbeat, once a second: five seconds)...
NOT_LEARNING_BATCHES = 200  # ...spanning at least this many batches
FLAT = 1e-3  # their spread (max - min) at most this share of their max: the loss stopped moving
FAR_ABOVE_BEST = 10.0  # and their min this many times the best loss or more
SV_BUCKETS = 200  # buckets per parameter line: its min and max in each
SV_KEPT = 256  # parameters whose trajectories are kept for the charts (all of a large net's sample); the latest
# vector is kept whole
MAX_METRICS = 32  # a script's metrics kept, in the order first logged: each costs two sets of buckets
# (a day-long run's cache is ~150 MB: written in about the time these bytes take to parse)


class Track(Protocol):
    """What every track of a history does when the run goes back (a restart from a checkpoint, a rewind)."""

    def go_back(self, batch: int) -> None:
        """Forget what was reported after batch."""


@dataclass(eq=False)
class LossTrack:
    """The loss reports, kept whole in compact arrays (64 bytes a report), with buckets beside them for the chart."""

    max_buckets: int  # of the outline and of the time axis
    batches: Column = field(default_factory=lambda: Column(np.int64))  # (n,)
    values: Column = field(default_factory=lambda: Column(float))  # (n,) NaN where the loss diverged
    windows: Column = field(default_factory=lambda: Column(float, 6))  # (n, 6): batches, min, its batch, max, ..., mean
    outline: WindowedSeries = field(init=False)  # for the chart: every window's extremes and means
    times: MinMaxBuckets = field(init=False)  # wall time of the reports by batch: a time axis
    recent: RecentMean = field(init=False)  # the mean over the newest batches, and its lowest: what runs sort by
    best: float | None = None  # the lowest single batch's loss of this line of training (of this net, since a reinit)
    latest: float | None = None  # the newest report's loss; None where it diverged
    diverged: bool = False  # whether the newest report's loss diverged

    def __post_init__(self) -> None:
        self.outline = WindowedSeries(self.max_buckets)
        self.times = MinMaxBuckets(1, self.max_buckets)
        self.recent = RecentMean(self.max_buckets)

    @property
    def recent_mean(self) -> float | None:
        """The loss over the newest RECENT_BATCHES batches or more; None before any, or where it diverged."""
        return self.recent.latest

    @recent_mean.setter
    def recent_mean(self, value: float | None) -> None:  # a fold cache's
        self.recent.latest = value

    @property
    def best_recent_mean(self) -> float | None:
        """The lowest recent_mean of this line of training."""
        return self.recent.best

    @best_recent_mean.setter
    def best_recent_mean(self, value: float | None) -> None:
        self.recent.best = value

    def extend(self, parsed: ParsedLines) -> None:
        """Fold in the chunk's loss reports."""
        if not len(parsed.loss_batch):
            return
        self._keep(parsed.loss_batch, parsed.loss_value, parsed.loss_window)
        self._outline(parsed.loss_batch, parsed.loss_value, parsed.loss_window)
        self.recent.extend(parsed.loss_batch, parsed.loss_window)
        timed = np.isfinite(parsed.loss_t)
        self.times.extend(parsed.loss_batch[timed], parsed.loss_t[timed])
        last = float(parsed.loss_value[-1])
        self.diverged = bool(np.isnan(last))
        self.latest = None if self.diverged else last

    def go_back(self, batch: int) -> None:
        """Forget the reports after batch: the outline is rebuilt from the reports kept, and so is the best loss."""
        self.times.truncate(batch)
        batches = self.batches.values()
        if len(batches) and batches.max() > batch:
            self._cut(batches <= batch)
            self.outline = WindowedSeries(self.max_buckets)
            fresh_from = self.recent.fresh_from if batch >= self.recent.fresh_from else -1
            self.recent = RecentMean(self.max_buckets)
            self.best = None
            batches, windows = self.batches.values(), self.windows.values()
            self._outline(batches, self.values.values(), windows)
            old = batches < fresh_from  # a reinitialized net's mean and best are its own
            self.recent.extend(batches[old], windows[old])
            if fresh_from >= 0:
                self.recent.begin_again(fresh_from)
            self.recent.extend(batches[~old], windows[~old])

    def not_learning(self) -> bool:
        """True when the newest reports' loss has stopped moving, far above the best this line of training reached
        (the best of its recent mean: the figure the page and status show beside the verdict)."""
        windows = self.windows.values()[-NOT_LEARNING_REPORTS:]
        batches = self.batches.values()[-NOT_LEARNING_REPORTS:]
        best = self.recent.best
        if len(windows) < NOT_LEARNING_REPORTS or batches[-1] - batches[0] < NOT_LEARNING_BATCHES or best is None:
            return False
        with np.errstate(invalid="ignore"):
            low, high = np.nanmin(windows[:, 1], initial=np.inf), np.nanmax(windows[:, 3], initial=-np.inf)
        return bool(
            np.isfinite(low)
            and np.isfinite(high)
            and high - low <= FLAT * high
            and low >= FAR_ABOVE_BEST * best
            and low > 0
        )

    def _keep(self, batches: np.ndarray, values: np.ndarray, windows: np.ndarray) -> None:
        """Keep reports: batches (n,), latest values (n,), windows (n, 6)."""
        self.batches.extend(batches)
        self.values.extend(values)
        self.windows.extend(windows)

    def _cut(self, keep: np.ndarray) -> None:
        """Keep only the reports where keep (n,) is true."""
        for column in (self.batches, self.values, self.windows):
            column.keep(keep)

    def _outline(self, batches: np.ndarray, values: np.ndarray, windows: np.ndarray) -> None:
        """Bucket reports for the chart, and take their lowest loss as the best when it is."""
        self.outline.extend(batches, values, windows)
        with np.errstate(invalid="ignore"):
            lowest = np.nanmin(windows[:, 1], initial=np.inf)
        if np.isfinite(lowest) and (self.best is None or lowest < self.best):
            self.best = float(lowest)


class LossOutline(LossTrack):
    """The loss's buckets alone, and the newest NOT_LEARNING_REPORTS reports for the verdict on learning: bounded
    memory however long the run. Going back cuts the outline at the batch, bucket by bucket, instead of rebuilding it.
    """

    def go_back(self, batch: int) -> None:
        self.times.truncate(batch)
        self.recent.go_back(batch)
        keep = self.batches.values() <= batch
        if keep.all() and self.outline.outline.last[0] <= batch:
            return
        self._cut(keep)
        self.outline.truncate(batch)
        outline = self.outline.outline
        with np.errstate(invalid="ignore"):
            lowest = np.nanmin(outline.min_value[: outline.n_buckets, 0], initial=np.inf)
        self.best = float(lowest) if np.isfinite(lowest) else None

    def _keep(self, batches: np.ndarray, values: np.ndarray, windows: np.ndarray) -> None:
        recent = slice(-NOT_LEARNING_REPORTS, None)
        for column, new in ((self.batches, batches), (self.values, values), (self.windows, windows)):
            column.extend(new[recent])
            column.keep_last(NOT_LEARNING_REPORTS)


@dataclass(eq=False)
class MetricTrack:
    """A script's other metrics, by name, at most MAX_METRICS, each as windowed buckets for its chart."""

    max_buckets: int  # of each metric's buckets
    series: dict[str, WindowedSeries] = field(default_factory=dict)  # in the order first logged
    dropped: bool = False  # whether names were logged beyond MAX_METRICS (they are not kept)

    def extend(self, parsed: ParsedLines) -> None:
        """Fold in the chunk's metric reports."""
        for name, (batches, values, windows) in parsed.metrics.items():
            metric = self.series.get(name)
            if metric is None:
                if len(self.series) >= MAX_METRICS:
                    self.dropped = True
                    continue
                metric = self.series[name] = WindowedSeries(self.max_buckets)
            metric.extend(batches, values, windows)

    def go_back(self, batch: int) -> None:
        for metric in self.series.values():
            metric.truncate(batch)


@dataclass(eq=False)
class StateTrack:
    """The state reports and what is made of them, in bounded memory: min/max buckets of the first SV_KEPT
    parameters, the latest vector whole, a spread of whole vectors, and 8 bytes a report for its batch."""

    batches: Column = field(default_factory=lambda: Column(np.int64))  # batch of every state report
    buckets: MinMaxBuckets | None = None  # over the first SV_KEPT parameters
    latest: np.ndarray | None = None  # the newest state vector, whole
    steps: MinMaxBuckets | None = None  # per state report: step length, cosine with the step before
    tail: np.ndarray | None = None  # (2, width) at most: the last two state vectors, for the next steps
    # Per state report, per tensor its schema.SUMMARY (tensors * len(SUMMARY)): a large net's worker writes them, a
    # small net's are made here from its whole state vectors, once its params record says what they hold.
    layers: MinMaxBuckets | None = None
    updates: MinMaxBuckets | None = None  # per update report, per tensor the update-to-weight ratio of a step
    dead: MinMaxBuckets | None = None  # per update report of a built-in net, per relu layer its dead units
    archive: StateArchive | None = None  # whole state vectors at a spread of the reports: replay, the path

    def extend(self, parsed: ParsedLines, tensors: Tensors | None, sample: list[int] | None) -> None:
        """Fold in the chunk's state reports, summaries and update reports, of a net whose state vector holds
        tensors, or a sample of its parameters (their indices)."""
        if len(parsed.sv_batch):
            self._add_state_vectors(parsed.sv_batch, parsed.sv_rows, tensors, sample)
        if len(parsed.summary_batch):
            self._add_summaries(parsed.summary_batch, parsed.summary_rows)
        self.updates = extended(self.updates, *parsed.updates)
        self.dead = extended(self.dead, *parsed.dead)

    def go_back(self, batch: int) -> None:
        if len(self.batches) and self.buckets is not None and self.steps is not None:
            self.batches.keep(self.batches.values() <= batch)
            self.buckets.truncate(batch)
            self.steps.truncate(batch)
            self.tail = None  # the next step starts from the state gone back to, not from one abandoned
        for per_report in (self.layers, self.updates, self.dead, self.archive):
            if per_report is not None:
                per_report.truncate(batch)

    def _add_state_vectors(
        self, batches: np.ndarray, vectors: np.ndarray, tensors: Tensors | None, sample: list[int] | None
    ) -> None:
        """Fold in state reports: batches (k,), vectors (k, width)."""
        width = vectors.shape[1]
        if (
            self.latest is None
            or len(self.latest) != width
            or self.buckets is None
            or self.steps is None
            or self.archive is None
        ):  # the first report, or another net
            self.batches = Column(np.int64)
            # A large net's sample is kept whole: it is already the few that stand for the rest.
            kept = width if sample is not None and len(sample) == width else min(width, SV_KEPT)
            self.buckets = MinMaxBuckets(kept, SV_BUCKETS)
            self.steps = MinMaxBuckets(2, SV_BUCKETS)
            self.archive = StateArchive(width)
            self.tail = None
        if tensors and sample is None and sum(int(np.prod(shape)) for _, shape in tensors) == width:
            previous = None if self.tail is None else self.tail[-1]
            self._add_summaries(batches, tensor_rows(vectors, tensors, previous))
        self.archive.extend(batches, vectors)
        self.batches.extend(batches)
        self.buckets.extend(batches, vectors[:, : self.buckets.n_columns])
        lengths, cosines = steps(self.tail, vectors)
        self.steps.extend(batches, np.column_stack((lengths, cosines)))
        tail = vectors if self.tail is None else np.vstack((self.tail, vectors))
        self.tail = tail[-2:].copy()
        self.latest = vectors[-1].copy()  # copies: views would keep the whole parsed chunk alive

    def _add_summaries(self, batches: np.ndarray, rows: np.ndarray) -> None:
        """Fold in per-tensor summaries: batches (j,), rows (j, tensors, len(SUMMARY))."""
        width = rows.shape[1] * rows.shape[2]
        if self.layers is None or self.layers.n_columns != width:  # the first summary, or another net
            self.layers = MinMaxBuckets(width, SV_BUCKETS)
        self.layers.extend(batches, rows.reshape(len(batches), width))


def extended(buckets: MinMaxBuckets | None, batches: np.ndarray, rows: np.ndarray) -> MinMaxBuckets | None:
    """buckets with rows (k, width) appended at batches; begun anew when they are the first, or of another width."""
    if not len(batches):
        return buckets
    if buckets is None or buckets.n_columns != rows.shape[1]:
        buckets = MinMaxBuckets(rows.shape[1], SV_BUCKETS)
    buckets.extend(batches, rows)
    return buckets
