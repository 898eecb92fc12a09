"""Series kept compact: growable numpy columns, min/max buckets that bound what a chart needs, and series of windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Column:
    """A growable numpy array of values or of rows; appends are amortized O(1), values() is a view, not a copy."""

    def __init__(self, dtype: type = float, row_width: int | None = None):
        self._row = () if row_width is None else (row_width,)
        self._data = np.empty((64, *self._row), dtype=dtype)
        self._n = 0

    @classmethod
    def of(cls, values: np.ndarray) -> Column:
        """A column holding values (taken, not copied, when writable): values' rows and dtype are the column's."""
        column = cls(values.dtype.type, values.shape[1] if values.ndim == 2 else None)
        column._data, column._n = (values if values.flags.writeable else values.copy()), len(values)
        return column

    def __len__(self) -> int:
        return self._n

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=self._data.dtype).reshape(-1, *self._row)
        end = self._n + len(values)
        if end > len(self._data):
            grown = np.empty((max(end, 2 * len(self._data)), *self._row), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : end] = values
        self._n = end

    def values(self) -> np.ndarray:
        return self._data[: self._n]

    def keep_last(self, n: int) -> None:
        """Keep only the newest n values."""
        if self._n > n:
            self._data[:n] = self._data[self._n - n : self._n].copy()
            self._n = n

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the values where mask (as long as the column) is true, in order."""
        kept = self.values()[mask]
        self._n = len(kept)
        self._data[: self._n] = kept


class MinMaxBuckets:
    """Per column, each bucket's min and max (with their batches) and its sum and count, at most max_buckets.

    Buckets hold `width` points each; when they would exceed max_buckets, neighbours merge and the
    width doubles. So the memory and the chart data stay bounded however long the series, an
    append costs what it appends, and no extreme is ever dropped: a merged bucket keeps the more
    extreme of its two halves. NaN (a diverged value) is never chosen as a min or max over a number.
    """

    def __init__(self, n_columns: int, max_buckets: int = 1000):
        assert max_buckets >= 2 and max_buckets % 2 == 0, f"max_buckets must be even and >= 2, not {max_buckets}"
        self.n_columns = n_columns
        self.max_buckets = max_buckets
        self.width = 1  # points per full bucket
        self.n = 0  # points appended
        k, b = n_columns, max_buckets
        self.first_batch = np.zeros(b, dtype=np.int64)  # (buckets,) batch of each bucket's first point
        self.min_value = np.zeros((b, k))
        self.min_batch = np.zeros((b, k), dtype=np.int64)
        self.max_value = np.zeros((b, k))
        self.max_batch = np.zeros((b, k), dtype=np.int64)
        self.sum = np.zeros((b, k))  # of the values, each times its weight
        self.count = np.zeros(b, dtype=np.int64)  # points
        self.weight = np.zeros(b)  # the points' weights: the batches a point stands for, 1 unless told
        self.first = (0, np.zeros(k))  # the series' first point, kept apart so it is always drawn
        self.last = (0, np.zeros(k))  # and its last

    @property
    def n_buckets(self) -> int:
        return -(-self.n // self.width)

    def extend(self, batches: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Append points: batches (m,), values (m, n_columns), weights (m,) for the means (default 1 each)."""
        batches = np.asarray(batches, dtype=np.int64)
        values = np.asarray(values, dtype=float).reshape(len(batches), self.n_columns)
        weights = np.ones(len(batches)) if weights is None else np.asarray(weights, dtype=float)
        if not len(batches):
            return
        if self.n == 0:
            self.first = (int(batches[0]), values[0].copy())
        self.last = (int(batches[-1]), values[-1].copy())
        pos = 0
        while pos < len(batches):
            if self.n % self.width == 0 and self.n_buckets == self.max_buckets:
                self._halve()
            left = len(batches) - pos
            whole = 0 if self.n % self.width else min(self.max_buckets - self.n_buckets, left // self.width)
            take = whole * self.width if whole else min(self.width - self.n % self.width, left)
            part = slice(pos, pos + take)
            if whole:  # new buckets filled whole, all at once: a long chunk costs a call per halving, not per bucket
                self._fold_whole(self.n // self.width, whole, batches[part], values[part], weights[part])
            else:
                self._fold(self.n // self.width, batches[part], values[part], weights[part])
            self.n += take
            pos += take

    def _fold_whole(self, b: int, count: int, batches: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Fold count * width points into the new buckets b, b + 1, ...: what _fold does to each, bit for bit."""
        w, k = self.width, self.n_columns
        values, batches, weights = values.reshape(count, w, k), batches.reshape(count, w), weights.reshape(count, w)
        lo = np.where(np.isnan(values), np.inf, values).argmin(axis=1)  # (count, k) row of each column's extreme
        hi = np.where(np.isnan(values), -np.inf, values).argmax(axis=1)
        at, cols, new = np.arange(count)[:, None], np.arange(k)[None, :], slice(b, b + count)
        self.first_batch[new] = batches[:, 0]
        self.min_value[new], self.min_batch[new] = values[at, lo, cols], batches[at, lo]
        self.max_value[new], self.max_batch[new] = values[at, hi, cols], batches[at, hi]
        terms = weights[:, :, None] * values
        terms[:, 0] += 0.0  # as _total starts from 0.0
        self.sum[new] = np.cumsum(terms, axis=1)[:, -1]
        self.count[new] = w
        counted = weights.copy()
        counted[:, 0] += 0.0
        self.weight[new] = np.cumsum(counted, axis=1)[:, -1]

    def _fold(self, b: int, batches: np.ndarray, values: np.ndarray, weights: np.ndarray) -> None:
        """Fold consecutive points into bucket b (new when empty)."""
        cols = np.arange(self.n_columns)
        as_min = np.where(np.isnan(values), np.inf, values)
        as_max = np.where(np.isnan(values), -np.inf, values)
        lo, hi = as_min.argmin(axis=0), as_max.argmax(axis=0)  # (k,) row of each column's extreme
        lo_value, hi_value = values[lo, cols], values[hi, cols]
        if self.n % self.width == 0:  # a new bucket
            self.first_batch[b] = batches[0]
            self.min_value[b], self.min_batch[b] = lo_value, batches[lo]
            self.max_value[b], self.max_batch[b] = hi_value, batches[hi]
            self.sum[b], self.count[b], self.weight[b] = (
                _total(0.0, weights[:, None] * values),
                len(values),
                _total(0.0, weights),
            )
            return
        lower = _lower(lo_value, self.min_value[b])
        self.min_value[b] = np.where(lower, lo_value, self.min_value[b])
        self.min_batch[b] = np.where(lower, batches[lo], self.min_batch[b])
        higher = _higher(hi_value, self.max_value[b])
        self.max_value[b] = np.where(higher, hi_value, self.max_value[b])
        self.max_batch[b] = np.where(higher, batches[hi], self.max_batch[b])
        self.sum[b] = _total(self.sum[b], weights[:, None] * values)
        self.count[b] += len(values)
        self.weight[b] = _total(self.weight[b], weights)

    def _halve(self) -> None:
        """Merge buckets pairwise: half as many, twice as wide, every extreme kept."""
        half = self.max_buckets // 2
        even, odd = slice(0, None, 2), slice(1, None, 2)
        self.first_batch[:half] = self.first_batch[even]
        lower = _lower(self.min_value[odd], self.min_value[even])
        self.min_value[:half] = np.where(lower, self.min_value[odd], self.min_value[even])
        self.min_batch[:half] = np.where(lower, self.min_batch[odd], self.min_batch[even])
        higher = _higher(self.max_value[odd], self.max_value[even])
        self.max_value[:half] = np.where(higher, self.max_value[odd], self.max_value[even])
        self.max_batch[:half] = np.where(higher, self.max_batch[odd], self.max_batch[even])
        self.sum[:half] = self.sum[even] + self.sum[odd]
        self.count[:half] = self.count[even] + self.count[odd]
        self.weight[:half] = self.weight[even] + self.weight[odd]
        self.width *= 2

    def points(self, column: int) -> tuple[np.ndarray, np.ndarray]:
        """One column's first point, every bucket's min and max, and last point, in batch order, no repeats."""
        nb = self.n_buckets
        if nb == 0:
            return np.empty(0, dtype=np.int64), np.empty(0)
        batches = np.concatenate(
            ([self.first[0]], self.min_batch[:nb, column], self.max_batch[:nb, column], [self.last[0]])
        )
        values = np.concatenate(
            ([self.first[1][column]], self.min_value[:nb, column], self.max_value[:nb, column], [self.last[1][column]])
        )
        batches, keep = np.unique(batches, return_index=True)
        return batches, values[keep]

    def means(self, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin starts (bins,), bin ends (bins,) and mean values (bins, n_columns) over at most n_bins bins."""
        nb = self.n_buckets
        if nb == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty((0, self.n_columns))
        group = -(-nb // n_bins)  # buckets per bin
        starts_at = np.arange(0, nb, group)
        sums = np.add.reduceat(self.sum[:nb], starts_at, axis=0)
        weights = np.add.reduceat(self.weight[:nb], starts_at)
        begin = self.first_batch[starts_at]
        end = np.append(begin[1:], self.last[0] + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return begin, end, sums / weights[:, None]

    def mean_batches(self) -> np.ndarray:
        """Where each bucket's mean (means(max_buckets)) belongs on the batch axis, (buckets,).

        A bucket of one point stands for the batches its weight counts up to its own (a loss report's
        window), so it goes at their middle; a value logged alone (weight 1), such as a test loss, at
        its very batch, not halfway to the next. A bucket of many points, at the middle of the batches
        from its first point to the next bucket's. Never before the point ahead of it: in batch order.
        """
        nb = self.n_buckets
        begin = self.first_batch[:nb]
        if self.width > 1:
            return (begin + np.append(begin[1:], self.last[0] + 1) - 1) // 2
        middle = begin - (np.maximum(self.weight[:nb], 1).astype(np.int64) - 1) // 2
        return np.maximum(middle, np.append(begin[:1], begin[:-1]))

    def truncate(self, batch: int) -> None:
        """Forget the points after batch (a run went back to it), bucket by bucket.

        A bucket that holds points on both sides of batch is kept, its extremes moved to batch
        at the latest: the one place where points after batch may still show.
        """
        if self.n == 0 or self.last[0] <= batch:
            return
        kept = int(np.searchsorted(self.first_batch[: self.n_buckets], batch, side="right"))
        self.n = kept * self.width  # the next point starts a bucket of its own
        if kept:
            np.minimum(self.min_batch[kept - 1], batch, out=self.min_batch[kept - 1])
            np.minimum(self.max_batch[kept - 1], batch, out=self.max_batch[kept - 1])
            self.last = (min(self.last[0], batch), self.sum[kept - 1] / max(self.weight[kept - 1], 1e-300))
        else:
            self.first = self.last = (0, np.zeros(self.n_columns))


def _total(start, terms: np.ndarray):
    """start + terms[0] + terms[1] + ..., added one at a time in order (per column for rows of terms).

    Not a dot product or a pairwise sum: a series folded in pieces, wherever they were cut, must
    sum to the very bits of one folded whole (a run reopened from its fold cache is one such).
    """
    terms = terms.copy()
    terms[0] += start  # then the rest one at a time: cumsum, unlike sum, adds in order
    return np.cumsum(terms, axis=0)[-1]


def _lower(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Where new replaces old as a minimum: it is lower, or it is a number and old is NaN."""
    return (new < old) | (np.isnan(old) & ~np.isnan(new))


def _higher(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Where new replaces old as a maximum: it is higher, or it is a number and old is NaN."""
    return (new > old) | (np.isnan(old) & ~np.isnan(new))


class StateArchive:
    """Whole state vectors at a spread of the reported batches, for replay and the path through parameter space.

    At most `capacity` vectors are kept (fewer the wider they are: memory stays bounded). When it is full,
    every other one goes and from then on only every other report is taken, so the kept ones stay spread over
    the run the way the reports were: densely where the net learnt fastest, the first and the newest always
    among them.
    """

    def __init__(self, width: int, max_numbers: int = 1_000_000, max_states: int = 1000):
        self.width = width
        self.capacity = 2 * max(1, min(max_states, max_numbers // max(1, width)) // 2)
        self.batches = np.empty(self.capacity, np.int64)
        self.vectors = np.empty((self.capacity, width))
        self.n = 0  # vectors kept
        self.stride = 1  # every stride-th report is kept
        self.seen = 0  # reports offered since the archive began
        self.newest: tuple[int, np.ndarray] | None = None  # the newest report, kept or not, so that replay reaches it
        self.derived: dict = {}  # what readers made of the kept states (the page's path through them): gone on change

    def extend(self, batches: np.ndarray, vectors: np.ndarray) -> None:
        for batch, vector in zip(batches.tolist(), vectors):
            if self.seen % self.stride == 0:
                if self.n == self.capacity:
                    half = self.n // 2
                    self.batches[:half], self.vectors[:half] = self.batches[: self.n : 2], self.vectors[: self.n : 2]
                    self.n, self.stride = half, 2 * self.stride
                if self.seen % self.stride == 0:
                    self.batches[self.n], self.vectors[self.n] = batch, vector
                    self.n += 1
            self.seen += 1
        if len(batches):
            self.newest = (int(batches[-1]), vectors[-1].copy())
            self.derived = {}

    def kept(self) -> tuple[np.ndarray, np.ndarray]:
        """The batches (n,) and state vectors (n, width) kept, oldest first, the newest report last."""
        batches, vectors = self.batches[: self.n], self.vectors[: self.n]
        if self.newest is not None and (not self.n or batches[-1] != self.newest[0]):
            return np.append(batches, self.newest[0]), np.vstack((vectors, self.newest[1][None, :]))
        return batches, vectors

    def at(self, batch: int) -> tuple[int, np.ndarray] | None:
        """The state kept at batch, or at the latest kept batch before it; None before the first."""
        batches, vectors = self.kept()
        k = int(np.searchsorted(batches, batch, side="right")) - 1
        return None if k < 0 else (int(batches[k]), vectors[k])

    def truncate(self, batch: int) -> None:
        """Forget the states after batch (a run went back to it)."""
        self.n = int(np.searchsorted(self.batches[: self.n], batch, side="right"))
        self.derived = {}
        if self.newest is not None and self.newest[0] > batch:
            self.newest = None


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


RECENT_BATCHES = 100  # the loss a person can sort runs by: its mean over at least this many of the newest batches
MEANS_BLOCK = 4096  # reports whose means are summed together: bounds the memory of a long file's first fold


@dataclass(eq=False)
class RecentMean:
    """A series' mean over its newest RECENT_BATCHES batches or more (the newest reports' whole windows, weighted by
    the batches each covers), and the lowest that mean has been: figures that one lucky minibatch does not move.

    A window longer than RECENT_BATCHES stands alone: its mean is the newest report's. While the series holds fewer
    batches, the mean is over all of them.
    """

    max_buckets: int  # of the trace
    latest: float | None = None  # NaN-free: None while the newest windows hold a diverged value
    best: float | None = None
    trace: MinMaxBuckets = field(init=False)  # the mean at each report, bounded: best and going back need it
    # (k, 4): batch, batches covered, their sum, diverged (0 or 1), of the newest reports the next mean needs
    tail: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))
    fresh_from: int = -1  # the batch the net was last reinitialized at

    def __post_init__(self) -> None:
        self.trace = MinMaxBuckets(1, self.max_buckets)

    def extend(self, batches: np.ndarray, windows: np.ndarray) -> None:
        """Fold in reports: batches (n,) and windows (n, 6) as a loss report's (n batches first, their mean last)."""
        # a report covers one batch at least, whatever its window claims: a run of windows claiming none would
        # otherwise make every mean reach back over the whole tail (quadratic work)
        counts = np.maximum(np.nan_to_num(windows[:, 0], nan=1.0, posinf=1.0), 1.0)
        total = counts * windows[:, 5]
        diverged = np.isnan(total)  # kept apart: a NaN in a running sum would spoil every mean after it
        newest = self.tail[-1, 0] if len(self.tail) else -1
        later = batches > np.maximum.accumulate(np.append(newest, batches[:-1]))  # a repeated report covers nothing
        self._recover(batches, diverged, later)
        if not later.any():
            return
        rows = np.column_stack((batches, counts, np.where(diverged, 0.0, total), diverged))[later]
        reports = np.concatenate((self.tail, rows))  # (t + n, 4)
        covered = np.concatenate(([0.0], np.cumsum(reports[:, 1])))  # batches before each report: whole, so exact
        ends = np.arange(len(self.tail), len(reports))  # each new report's row
        starts = np.maximum(np.searchsorted(covered, covered[ends + 1] - RECENT_BATCHES, side="right") - 1, 0)
        means = np.concatenate(
            [
                _window_means(reports, ends[at : at + MEANS_BLOCK], starts[at : at + MEANS_BLOCK])
                for at in range(0, len(ends), MEANS_BLOCK)
            ]
        )
        self.trace.extend(rows[:, 0].astype(np.int64), means[:, None])
        self._take(float(means[-1]), means)
        self.tail = reports[starts[-1] :]

    def _recover(self, batches: np.ndarray, diverged: np.ndarray, later: np.ndarray) -> None:
        """A worker that diverged goes back to finite parameters and reports the batch it diverged at again, with a
        number: that report stands for the batch instead of the diverged one (later is changed to say so)."""
        newest_diverged = bool(len(self.tail) and self.tail[-1, 3])
        at = set(batches[later & diverged].tolist()) | ({self.tail[-1, 0]} if newest_diverged else set())
        if not at:
            return
        for i in np.flatnonzero(~later & ~diverged & np.isin(batches, list(at))):  # a few, however long the file
            standing = np.flatnonzero(later[:i] & (batches[:i] == batches[i]))
            if len(standing) and diverged[standing[-1]]:
                later[standing[-1]], later[i] = False, True
            elif not len(standing) and newest_diverged and batches[i] == self.tail[-1, 0]:
                self.tail, newest_diverged, later[i] = self.tail[:-1], False, True

    def go_back(self, batch: int) -> None:
        """Forget the reports after batch: the mean is the trace's there, until reports come again."""
        self.trace.truncate(batch)
        self.tail = self.tail[self.tail[:, 0] <= batch]
        if batch < self.fresh_from:  # back before the net was reinitialized: which net began when is not known
            self.fresh_from = -1
        nb = self.trace.n_buckets
        self.latest = self.best = None
        if nb:
            own = self.trace.min_batch[:nb, 0] >= self.fresh_from  # a reinitialized net's best is its own
            self._take(float(self.trace.last[1][0]), self.trace.min_value[:nb, 0][own])

    def begin_again(self, batch: int) -> None:
        """The net was reinitialized at batch: its mean and best are of its own batches alone."""
        self.best = None
        self.fresh_from = batch
        self.skip()

    def skip(self) -> None:
        """The reports that follow are not the next ones (a reader skipped the middle of a file): the next mean is of
        them alone, never of two far apart."""
        self.tail = self.tail[:0]

    def before(self, batch: int) -> float | None:
        """The mean as it was at batch: of the extremes the trace keeps in the buckets around it, the one nearest
        batch and not after it (a bucket may reach past batch, and what came after a command is what is measured
        against this); None before any finite mean."""
        trace = self.trace
        at = int(np.searchsorted(trace.first_batch[: trace.n_buckets], batch, side="right")) - 1
        for k in (at, at - 1):
            if k < 0:
                break
            extremes = [(trace.min_batch[k, 0], trace.min_value[k, 0]), (trace.max_batch[k, 0], trace.max_value[k, 0])]
            found = [(b, v) for b, v in extremes if b <= batch and np.isfinite(v)]
            if found:
                return float(max(found)[1])
        return None

    def _take(self, latest: float, means: np.ndarray) -> None:
        self.latest = latest if np.isfinite(latest) else None
        with np.errstate(invalid="ignore"):
            lowest = np.nanmin(means, initial=np.inf)
        if np.isfinite(lowest) and (self.best is None or lowest < self.best):
            self.best = float(lowest)


def _window_means(reports: np.ndarray, ends: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The mean of the reports (k, 4) from each start to its end, both included; NaN where one of them diverged.

    Summed newest first, one report a step, so a mean comes out the same bit for bit however the file was cut into
    chunks: a fold cache's history then equals the whole fold's. Prefix sums would not.
    """
    widths = ends - starts + 1
    total, batches, diverged = np.zeros(len(ends)), np.zeros(len(ends)), np.zeros(len(ends))
    for lag in range(int(widths.max(initial=0))):
        taken = lag < widths
        rows = reports[np.where(taken, ends - lag, ends)]
        total += np.where(taken, rows[:, 2], 0.0)
        batches += np.where(taken, rows[:, 1], 0.0)
        diverged += np.where(taken, rows[:, 3], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / batches
    means[diverged > 0] = np.nan
    return means
