"""The run file's two common record shapes: built here for the worker, and matched here by the bulk parser.

Every line is a JSON object whose topics map to [batch, value]. The worker writes almost only
two shapes, loss reports and state reports, and json.dumps keeps a dict's key order, so the
builders below fix the exact text the parser's regex expects. Change one, change the other:
tests/test_records.py parses what these builders write, fast path and JSON path alike.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

Record = dict[str, Any]
# A loss report's window, when it covers more than its own batch: every batch since the report before.
Window = tuple[int, float, int, float, int, float]  # (batches, min, batch of min, max, batch of max, mean)
SETTINGS = ("eta", "target", "report_every", "pace")  # what a state report carries beside the state vector
TEST_LOSS = "test_loss"  # the metric the built-in worker reports its test-set loss as
SYSTEM_METRIC = "system."  # how the machine's figures are named as metrics: system.cpu, system.rss_mb, system.gpu0.util
SYSTEM_FIGURES = ("cpu", "rss_mb", "util", "mem_mb", "temp_c")  # a process's, then each GPU's, in the order shown


METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # the names a metric may have in a loss report


def system_parts(name: str) -> tuple[str | None, str | None, str]:
    """A machine's figure's rank (None: the process's own, rank 0's under a job), GPU (None: the process's) and
    figure: system.rank1.gpu0.util is ("1", "0", "util")."""
    *device, figure = name.removeprefix(SYSTEM_METRIC).split(".")
    rank = device.pop(0).removeprefix("rank") if device and device[0].startswith("rank") else None
    gpu = device[0].removeprefix("gpu") if device and device[0].startswith("gpu") else None
    return rank, gpu, figure


def system_order(name: str) -> tuple[int, int, int, str]:
    """Where a machine's figure goes among the others: rank by rank, rank 0 (a name with no rank) first, each rank's
    process before its GPUs, each GPU's figures in SYSTEM_FIGURES' order."""
    rank, gpu, figure = system_parts(name)
    order = SYSTEM_FIGURES.index(figure) if figure in SYSTEM_FIGURES else len(SYSTEM_FIGURES)
    return _number(rank, 0), _number(gpu, -1), order, figure


def system_names(names: Iterable[str]) -> list[str]:
    """The machine's figures among metric names, in system_order."""
    return sorted((name for name in names if name.startswith(SYSTEM_METRIC)), key=system_order)


def _number(label: str | None, absent: int) -> int:
    """A rank's or GPU's number ("1": 1); absent where there is none, and one that is not a number goes last."""
    return absent if label is None else int(label) if label.isdigit() else 1 << 30


def loss_report(batch: int, loss: float, window: Window | None = None) -> Record:
    """{"loss": [batch, latest loss], "window": [batch, [n, min, min_at, max, max_at, mean]]}.

    The window covers the n batches since the last report, this one included; it is left out
    when it covers only this batch (n == 1: min, max and mean are the loss itself).
    """
    record: Record = {"loss": [batch, loss]}
    if window is not None and window[0] > 1:
        n, low, low_at, high, high_at, mean = window
        # Seven digits draw any chart and keep long run files short; the latest loss keeps all of its own.
        record["window"] = [batch, [n, _short(low), low_at, _short(high), high_at, _short(mean)]]
    return record


def metric_entry(latest: float, window: Window | None) -> list[float]:
    """A metric in a loss report's "metrics": {name: entry}: [latest], or [latest, n, min, min_at, max, max_at, mean]
    when it was logged at more than one batch since the report before (the window as for the loss)."""
    if window is None or window[0] <= 1:
        return [latest]
    n, low, low_at, high, high_at, mean = window
    return [latest, n, _short(low), low_at, _short(high), high_at, _short(mean)]


def _short(value: float) -> float:
    """value to 7 significant digits (NaN and infinities as they are: the writer spells them null)."""
    return float(f"{value:.7g}")


def state_report(batch: int, eta: float, sv: np.ndarray, target: int, report_every: int, pace: float) -> Record:
    """The seed's state report, eta and the state vector, with the run's settings beside them."""
    return {
        "eta": [batch, eta],
        "sv": [batch, sv],  # an array: written as a list by the writer's thread
        **_settings(batch, target, report_every, pace),
    }


def summary_report(
    batch: int,
    eta: float,
    summary: list[list[float | None]],
    sample: np.ndarray,
    target: int,
    report_every: int,
    pace: float,
) -> Record:
    """A large net's state report: per tensor its SUMMARY, and the sampled parameters' values (see params_record)."""
    return {
        "eta": [batch, eta],
        "summary": [batch, summary],
        "sample": [batch, sample],
        **_settings(batch, target, report_every, pace),
    }


def _settings(batch: int, target: int, report_every: int, pace: float) -> Record:
    return {"target": [batch, target], "report_every": [batch, report_every], "pace": [batch, pace]}


# -- what the state vector holds --------------------------------------------------------------

Tensors = list[tuple[str, tuple[int, ...]]]  # (name, shape) of each tensor, in state-vector order
FULL_STATE_MAX_PARAMS = 10_000  # state reports carry the whole vector up to this many parameters (about 200 KB)
SAMPLE_SIZE = 256  # beyond it, these many parameters, spread over the tensors, stand for the rest in every report
SUMMARY = ("norm", "mean", "std", "min", "max", "change", "p7", "p16", "p31", "p50", "p69", "p84", "p93")  # per tensor;
# change: the distance moved since the last state report, relative to the norm then; pN: the Nth percentile of its
# values, TensorBoard's distribution bands (a normal's median and 0.5, 1 and 1.5 sigmas either side; min and max beside)
BANDS = (7, 16, 31, 50, 69, 84, 93)
MOMENTS = SUMMARY[:5]  # what is measured over all of a tensor; the rest of SUMMARY over its marks beyond MARKS_EACH
# A large tensor's percentiles, change and update ratio are measured on this many of its entries, drawn once at random
# (spread evenly, they could fall on a few columns of a matrix): exact up to it, within about 1 % beyond.
MARKS_EACH = 8192
SUMMARY_BEFORE_BANDS = 6  # the width of summaries written before the bands: read with the bands unknown (NaN)


def params_record(batch: int, tensors: Tensors, n_params: int) -> Record:
    """What the state vector holds, written as a worker starts: its tensors, and the sample a large net reports."""
    sample = sample_indices(tensors) if n_params > FULL_STATE_MAX_PARAMS else None
    return {"params": [batch, {"tensors": [[name, list(shape)] for name, shape in tensors], "sample": sample}]}


def sample_indices(tensors: Tensors, size: int = SAMPLE_SIZE) -> list[int]:
    """A fixed set of parameters, named by their place in the state vector: every tensor gets a share of size
    (at least one, none of an empty one), its parameters spread evenly over it."""
    counts = [int(np.prod(shape)) for _, shape in tensors]
    total, indices, start = max(1, sum(counts)), [], 0
    for count in counts:
        share = min(count, max(1, round(size * count / total)))
        indices += [start + int(i) for i in np.linspace(0, count - 1, share).round()]
        start += count
    return sorted(set(indices))


def tensor_summary(sv: np.ndarray, tensors: Tensors, previous: np.ndarray | None) -> list[list[float | None]]:
    """Per tensor its SUMMARY numbers, to seven digits, as a large net's state report carries them; change is None
    without a previous vector of the same size (not NaN: the run file spells NaN null and calls the line diverged)."""
    rows = tensor_rows(sv[None, :], tensors, previous)[0]
    return [[None if math.isnan(v) else _short(v) for v in row] for row in rows.tolist()]


def mark_picks(count: int) -> np.ndarray:
    """The entries of a tensor of count entries that stand for it in its percentiles and changes: all of them up to
    MARKS_EACH, else MARKS_EACH drawn at random, the same for every run of a tensor this size."""
    if count <= MARKS_EACH:
        return np.arange(count)
    return np.sort(np.random.default_rng(count).choice(count, MARKS_EACH, replace=False))


def marked_summary(
    moments: np.ndarray, marks: list[np.ndarray], previous: list[np.ndarray] | None
) -> list[list[float | None]]:
    """tensor_summary() of a large net from what its trainer measured where the tensors live: per tensor its MOMENTS
    over all of it, its change from the previous marks and its percentile bands over its marks."""
    rows = np.full((len(marks), len(SUMMARY)), np.nan)
    rows[:, : len(MOMENTS)] = moments
    for t, values in enumerate(marks):
        if previous is not None and len(previous) == len(marks) and len(previous[t]) == len(values):
            rows[t, SUMMARY_BEFORE_BANDS - 1] = relative_change(values, previous[t])
        if len(values):
            rows[t, SUMMARY_BEFORE_BANDS:] = np.percentile(values, BANDS)
    return [[None if math.isnan(v) else _short(v) for v in row] for row in rows.tolist()]


def tensor_rows(vectors: np.ndarray, tensors: Tensors, previous: np.ndarray | None = None) -> np.ndarray:
    """(k, tensors, len(SUMMARY)): per state vector (a row of vectors, k of them) and tensor, its SUMMARY numbers.

    A vector's change is measured from the row before it; the first row's from previous, NaN without one of the
    same width. The readers summarize a small net's whole vectors with this, the worker a large net's.
    """
    vectors = np.asarray(vectors, dtype=float)
    k, width = vectors.shape
    before = np.full((k, width), np.nan)
    before[1:] = vectors[:-1]
    if previous is not None and len(previous) == width:
        before[0] = previous
    rows = np.full((k, len(tensors), len(SUMMARY)), np.nan)
    for t, (start, end) in enumerate(tensor_bounds(tensors)):
        part = vectors[:, start:end]
        if end <= start or end > width:
            continue
        rows[:, t, 0] = np.linalg.norm(part, axis=1)
        rows[:, t, 1] = part.mean(axis=1)
        rows[:, t, 2] = part.std(axis=1)
        rows[:, t, 3] = part.min(axis=1)
        rows[:, t, 4] = part.max(axis=1)
        rows[:, t, 5] = relative_change(part, before[:, start:end])
        rows[:, t, SUMMARY_BEFORE_BANDS:] = np.percentile(part, BANDS, axis=1).T
    return rows


def relative_change(part: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Per row, how far part moved from before, relative to before's norm: NaN where before is unknown or zero."""
    norm_before = np.linalg.norm(before, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.linalg.norm(part - before, axis=-1) / norm_before
    return np.where(norm_before > 0, change, np.nan)


def tensor_bounds(tensors: Tensors) -> list[tuple[int, int]]:
    """(start, end) of each tensor's entries in the state vector."""
    bounds, start = [], 0
    for _, shape in tensors:
        end = start + math.prod(shape)  # not np.prod: 3 µs a call, and a report makes many
        bounds.append((start, end))
        start = end
    return bounds


def update_report(batch: int, ratios: list[float | None], dead: list[int] | None = None) -> Record:
    """What one step did, reported beside a state report: per tensor the update-to-weight ratio of the batch that
    led to it, |w(batch) - w(batch - 1)| / |w(batch - 1)| (about 1e-3 is the rule of thumb); and for a built-in
    net, per layer with relu, its dead units (those whose output is 0 on every training point)."""
    record: Record = {"update": [batch, ratios]}
    if dead is not None:
        record["dead"] = [batch, dead]
    return record


def update_ratios(sv: np.ndarray, before: np.ndarray, tensors: Tensors) -> list[float | None]:
    """Per tensor, |sv - before| / |before| to seven digits; None where before is zero (nothing to compare with).

    Every tensor's sums in one pass (np.add.reduceat): a small net's report comes many times a second early on,
    and four numpy calls a tensor cost XOR's snapshots more than the rest of them."""
    bounds = tensor_bounds(tensors)
    if not bounds or any(start == end for start, end in bounds):  # reduceat cannot sum an empty stretch
        return [_ratio(sv[start:end], before[start:end]) for start, end in bounds]
    starts = [start for start, _ in bounds]
    moved = np.sqrt(np.add.reduceat(np.square(sv - before), starts)).tolist()
    was = np.sqrt(np.add.reduceat(np.square(before), starts)).tolist()
    return [_short(m / w) if w > 0 and math.isfinite(m / w) else None for m, w in zip(moved, was, strict=True)]


def _ratio(part: np.ndarray, before: np.ndarray) -> float | None:
    ratio = float(relative_change(part, before))
    return None if math.isnan(ratio) else _short(ratio)


def marked_update_ratios(marks: list[np.ndarray], before: list[np.ndarray]) -> list[float | None]:
    """update_ratios() of a large net, over each tensor's marks (see MARKS_EACH)."""
    return [_ratio(now, then) if len(now) == len(then) else None for now, then in zip(marks, before, strict=True)]


def parameter_name(tensors: Tensors, index: int) -> str:
    """The name of the state vector's entry index: "fc1.weight[3,7]" is tensor fc1.weight's row 3, column 7."""
    start = 0
    for name, shape in tensors:
        count = int(np.prod(shape))
        if index < start + count:
            where = np.unravel_index(index - start, shape) if shape else ()
            return f"{name}[{','.join(str(int(i)) for i in where)}]" if shape else name
        start += count
    return f"[{index}]"


# Numbers are matched loosely here, for speed, and checked strictly when converted (bulk.py): a window's
# numbers by one character class (a third faster than six numbers spelt out), their count checked there.
_NUM = rb"[-+.eE0-9]+"
_STAMP = rb',"t":[.0-9]+,"gen":[0-9]+\}'
_TIMED_STAMP = rb',"t":([.0-9]+),"gen":[0-9]+\}'  # a loss report's time is kept: the time axis of comparisons
# Groups: a loss report's "batch,loss" (1), window numbers (2, empty without one) and time (3); a
# state report's "batch,eta" (4), state vector (5), target (6), report interval (7) and pace (8, empty
# in files written before pace existed); any other line whole (9).
LINE = re.compile(
    rb'^(?:\{"loss":\[([0-9]+,'
    + _NUM
    + rb')\](?:,"window":\[[0-9]+,\[([-+.eE0-9,]+)\]\])?'
    + _TIMED_STAMP
    + rb'|\{"eta":\[([0-9]+,'
    + _NUM
    + rb')\],"sv":\[[0-9]+,\[([-+.eE0-9,]+)\]\],'
    + rb'"target":\[[0-9]+,([0-9]+)\],"report_every":\[[0-9]+,([0-9]+)\](?:,"pace":\[[0-9]+,('
    + _NUM
    + rb")\])?"
    + _STAMP
    + rb"|(.+))$",
    re.MULTILINE,
)
ANY_LINE = re.compile(rb"^()()()()()()()()(.+)$", re.MULTILINE)  # the same groups, every line in the last
GROUPS = 9
LOSS, WINDOW, LOSS_T, STATE, SV, TARGET, REPORT_EVERY, PACE, OTHER = range(GROUPS)


def all_parameter_names(tensors: Tensors) -> list[str]:
    """Every state-vector entry's name, in order (see parameter_name)."""
    names = []
    for name, shape in tensors:
        if not shape:
            names.append(name)
            continue
        names += [f"{name}[{','.join(map(str, where))}]" for where in itertools.product(*(range(n) for n in shape))]
    return names
