"""Chart frames: a run's history as bounded pandas frames for the charts, and the smoothing of their lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from nnobs.protocol.schema import TEST_LOSS, Tensors, parameter_name, sample_indices
from nnobs.reading.history import SV_KEPT, Marker, RunHistory, WindowedSeries
from nnobs.reading.series import MinMaxBuckets
from nnobs.views.surface import as_picture

MAX_SV_LINES = 128  # parameters drawn as lines: every one of a small net (the 105 of a 2-8-8-1 spiral net, the
# page's examples); the heatmap shows up to history.SV_KEPT (256)
HEATMAP_COLUMNS = 100  # batch bins across the heatmap
SMOOTHING_SPANS = 1000  # the smoothing weight applies per 1/1000 of the run's batches


def loss_frame(history: RunHistory) -> pd.DataFrame:
    """The loss chart's points: first, last, and each bucket's min and max (at most history's max_points)."""
    return outline_frame(history.loss_outline, "loss")


def outline_frame(series: WindowedSeries, field: str) -> pd.DataFrame:
    """A windowed series' raw points (batch, field): first, last, and each bucket's min and max."""
    batches, values = series.outline.points(0)
    return pd.DataFrame({"batch": batches, field: values})


def metric_frames(history: RunHistory) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """Per metric, in the order first logged: its raw points (batch, value) and its means (batch, mean)."""
    return {name: (outline_frame(series, "value"), means_frame(series)) for name, series in history.metrics.items()}


def markers_frame(history: RunHistory) -> pd.DataFrame:
    """Where commands took effect and generations began: batch, label, kind, lane; one label per batch."""
    lanes = 3  # labels step down in turn, so markers at nearby batches do not write over each other
    groups: list[list[Marker]] = []  # markers at one batch (commands, then the restart that came back to it)
    for marker in history.markers:
        if groups and groups[-1][0].batch == marker.batch:
            groups[-1].append(marker)
        else:
            groups.append([marker])
    return pd.DataFrame(
        {
            "batch": [g[0].batch for g in groups],
            "label": [" · ".join(m.label for m in g) for g in groups],
            # A batch where a generation began reads as one: its parameters changed there, whatever else did.
            "kind": ["generation" if any(m.kind == "generation" for m in g) else g[-1].kind for g in groups],
            "lane": [3 + 13 * (g[0].number % lanes) for g in groups],
        }  # pixels from the top
    )


def smooth(
    batches: np.ndarray, values: np.ndarray, smoothing: float, span: float, restarts: np.ndarray | None = None
) -> np.ndarray:
    """An exponential moving average over batches: the weight of the past falls by `smoothing` every `span` batches.

    Like W&B's time-weighted EMA, it decays by distance in batches rather than per point, and it is
    debiased like TensorBoard's, so it starts at the data. Each point weighs for the batches since
    the one before it (at least one), so a dense stretch of reports outweighs no sparse one, a flat
    series stays exactly flat at any spacing, and a point far past the last one takes over. NaN
    (diverged) points pass through and do not disturb the average. Smoothing 0 is off. At each
    batch of restarts (where a generation began: new parameters, a reinitialized net) the average
    starts afresh, so a new net's loss is not read through the old one's.
    """
    out = np.asarray(values, dtype=float).copy()
    if smoothing <= 0 or span <= 0:
        return out
    finite = np.flatnonzero(np.isfinite(out))
    at = np.asarray(batches, dtype=float)[finite]
    gaps = np.maximum(np.diff(at, prepend=at[:1] - 1), 1.0)  # batches each point stands for; a rewind counts one
    decay = np.log(smoothing) / span * gaps
    kept, added = np.exp(decay), -np.expm1(decay)  # added = 1 - kept, exact when kept is nearly 1
    segment = np.searchsorted(
        np.sort(np.asarray(restarts if restarts is not None else [], dtype=float)), at, side="right"
    )
    fresh = np.diff(segment, prepend=segment[:1]) != 0  # the first point past a restart
    total = mass = 0.0
    smoothed = []
    for keep, add, value, anew in zip(kept.tolist(), added.tolist(), out[finite].tolist(), fresh.tolist()):
        if anew:  # floats, not numpy scalars, in this loop: ten times faster
            total = mass = 0.0
        total = keep * total + add * value
        mass = keep * mass + add
        smoothed.append(total / mass)
    out[finite] = _significant(np.asarray(smoothed), 12)
    return out


def _significant(values: np.ndarray, digits: int) -> np.ndarray:
    """values rounded to digits significant digits: a flat series' average stays exactly flat, not a float's last bits
    away from it, which would make its axis span 1e-17 and label every tick 0.0999999999999."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(values))))
    scale[~np.isfinite(scale)] = 1.0
    return np.round(values * scale) / scale


def loss_means_frame(history: RunHistory) -> pd.DataFrame:
    """Each loss bucket's mean where it belongs (means_frame): of every report's window mean, weighted by the
    batches it covers."""
    return means_frame(history.loss_outline)


def means_frame(series: WindowedSeries) -> pd.DataFrame:
    """Each bucket's mean (batch, mean), weighted by the batches each report's window covers, where it belongs
    (MinMaxBuckets.mean_batches: a test loss at its batch, a report's window at its middle)."""
    buckets = series.means
    _, _, means = buckets.means(buckets.max_buckets)
    return pd.DataFrame({"batch": buckets.mean_batches(), "mean": means[:, 0]})


def loss_chart_frame(
    loss: pd.DataFrame,
    means: pd.DataFrame,
    markers: pd.DataFrame,
    smoothing: float,
    log_scale: bool,
    batches: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """The loss chart's data: raw points (batch, loss), smoothed points (batch, smoothed), markers (label, kind, lane).
    The loss frame's second column names the raw points' column: a metric's chart is built the same way.

    The smoothing runs over the buckets' means, not the min/max outline drawn raw, and decays over
    batches: by `smoothing` every 1/SMOOTHING_SPANS of the run's batches (first to latest, from
    `batches`, else the means'), as TensorBoard's does per point over 1,000 evenly spaced points.
    So it follows the data however unevenly the reports are spaced. On a log axis it averages
    log(loss), so the line follows the curve drawn rather than lagging decades above it.

    Empty (no rows) while fewer than two batches have a loss the axis can draw: a chart of one
    point has nothing to say, and the page shows charts.LOSS_PENDING instead.
    """
    field = loss.columns[1]
    raw = loss[field].to_numpy(dtype=float)
    drawn = np.isfinite(raw) & (raw > 0) if log_scale else np.isfinite(raw)
    if loss["batch"][drawn].nunique() < 2:
        return pd.DataFrame({column: [] for column in ("batch", field, "smoothed", "label", "kind", "lane")})
    at = means["batch"].to_numpy(dtype=float)
    values = means["mean"].to_numpy(dtype=float)
    first, latest = batches if batches is not None else (at.min(), at.max())
    span = (latest - first) / SMOOTHING_SPANS
    restarts = markers.loc[markers["kind"] == "generation", "batch"].to_numpy()
    if log_scale:
        with np.errstate(divide="ignore", invalid="ignore"):
            smoothed = np.exp(smooth(at, np.where(values > 0, np.log(values), np.nan), smoothing, span, restarts))
    else:
        smoothed = smooth(at, values, smoothing, span, restarts)
    frame = pd.concat([loss, pd.DataFrame({"batch": means["batch"], "smoothed": smoothed}), markers], ignore_index=True)
    return frame.astype({"label": "category", "kind": "category"})  # few distinct strings: sent once each


def batch_range(latest: int, frames: list[pd.DataFrame]) -> tuple[int, int]:
    """The run's batches, from the first any chart shows to the latest (never fewer than one batch across)."""
    shown = [frame["batch"] for frame in frames if len(frame)]
    first = int(min(batch.min() for batch in shown)) if shown else 0
    last = int(max([latest] + [batch.max() for batch in shown]))
    return first, max(last, first + 1)


def with_batch_range(frame: pd.DataFrame, batches: tuple[int, int]) -> pd.DataFrame:
    """The frame and two invisible rows (extent true, nothing else but their batch) at the run's first and latest batch.

    Every chart over batches draws them with an invisible mark, so all of them span the whole run
    while their specs stay the same between refreshes. Built column by column: pd.concat of frames
    with different columns costs milliseconds a refresh.
    """
    columns: dict[str, object] = {}
    for name, column in frame.items():
        if name == "batch":
            columns[name] = np.append(column.to_numpy(), batches)
        elif isinstance(column.dtype, pd.CategoricalDtype):  # categories stay categories: each name sent once
            codes = np.append(column.cat.codes.to_numpy(), [-1, -1])  # -1: no category
            columns[name] = pd.Categorical.from_codes(codes, dtype=column.dtype)
        else:
            columns[name] = np.append(column.to_numpy(dtype=float), [np.nan, np.nan])
    columns["extent"] = np.append(np.zeros(len(frame), dtype=bool), [True, True])
    return pd.DataFrame(columns)


def layer_of(name: str) -> str:
    """The group a parameter is drawn in: "L1.W[0,1]" belongs to "L1.W"."""
    return name.split("[", 1)[0]


def steps_frame(history: RunHistory, column: int) -> pd.DataFrame:
    """Step lengths (column 0) or cosines between successive steps (column 1), per state report."""
    if history.step_buckets is None:
        return pd.DataFrame({"batch": [], "value": []})
    batches, values = history.step_buckets.points(column)
    return pd.DataFrame({"batch": batches, "value": values})


BOUNDED_OUTPUTS = {"tanh": 1.0}  # activations whose output cannot leave [-bound, bound]


def surface_frame(
    x1: np.ndarray, x2: np.ndarray, output: np.ndarray, facts: tuple[np.ndarray, np.ndarray], activation: str
) -> pd.DataFrame:
    """The decision surface's cells (x1, x2, output), the training points on top (x1, x2, target), and two
    rows that fix the colour scale (output -bound and +bound, no x1).

    The bound is the activation's (tanh: 1), else the largest magnitude of the output and the targets:
    zero is always white, and a net whose output is -1 everywhere is drawn full blue, not pale.
    """
    x, ideal = facts
    cells = pd.DataFrame({"x1": x1, "x2": x2, "output": output})
    points = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "target": ideal[:, 0]})
    bound = BOUNDED_OUTPUTS.get(activation)
    if bound is None:
        magnitudes = np.abs(np.concatenate((output, ideal[:, 0])))
        magnitudes = magnitudes[np.isfinite(magnitudes)]
        bound = float(magnitudes.max()) if len(magnitudes) and magnitudes.max() > 0 else 1.0
    scale = pd.DataFrame({"output": [-bound, bound]})
    return as_picture(pd.concat([cells, points, scale], ignore_index=True))  # a picture: 7 digits are plenty


def sv_frames(history: RunHistory, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-form frames for the parameter lines and the heatmap, bounded however long the run.

    Lines: MAX_SV_LINES parameters (see line_columns), each bucket's min and max. Heatmap: the mean of
    each kept parameter over at most HEATMAP_COLUMNS batch bins.
    """
    buckets = history.sv_buckets
    if buckets is None or buckets.n == 0:
        return pd.DataFrame(columns=["batch", "layer", "parameter", "value"]), pd.DataFrame(
            columns=["batch", "batch_end", "parameter", "value"]
        )
    drawn = line_columns(buckets.n_columns)
    lines = _with_layers(lines_frame(buckets, drawn, [names[j] for j in drawn], "parameter"))
    starts, ends, means = buckets.means(HEATMAP_COLUMNS)  # (bins,), (bins,), (bins, kept)
    n_bins, kept = means.shape
    heat = pd.DataFrame(
        {
            "batch": np.repeat(starts, kept),
            "batch_end": np.repeat(ends, kept),
            "parameter": np.tile(np.array(names[:kept], dtype=object), n_bins),
            "value": means.ravel(),
        }
    )
    return lines, heat.astype({"parameter": "category"})


def _with_layers(lines: pd.DataFrame) -> pd.DataFrame:
    """The parameter lines' frame with the layer each belongs to (layer_of its name) as its second column."""
    layers = [layer_of(name) for name in lines["parameter"].cat.categories]
    codes = lines["parameter"].cat.codes
    lines.insert(
        1, "layer", pd.Categorical(np.array(layers, dtype=object)[codes], categories=list(dict.fromkeys(layers)))
    )
    return lines


SPREAD_STATES = 400  # kept states drawn on the lines of spread_sv_frames: as many points as a bucketed line's


def spread_sv_frames(
    batches: np.ndarray, vectors: np.ndarray, tensors: Tensors
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The parameter charts' frames (sv_frames') made from whole state vectors, batches (n,) and vectors (n, width)
    as the replay archive keeps them, over SV_KEPT parameters spread over every tensor of the net; and their names.

    For a net whose whole vector is reported but wider than the SV_KEPT trajectories the history keeps (those
    are its first parameters, so its last layers, the output among them, would never be drawn). Points at the
    kept states rather than every report's extremes: the archive keeps them densest where the net learnt fastest.
    """
    columns = np.array(sample_indices(tensors, SV_KEPT))
    names = [parameter_name(tensors, int(index)) for index in columns]
    states = np.unique(np.linspace(0, len(batches) - 1, min(len(batches), SPREAD_STATES)).round().astype(int))
    drawn = line_columns(len(columns))
    at, values = batches[states], vectors[np.ix_(states, columns[drawn])]  # (s,), (s, lines)
    lines = pd.DataFrame(
        {
            "batch": np.tile(at, len(drawn)),
            "parameter": pd.Categorical.from_codes(
                np.repeat(np.arange(len(drawn)), len(at)), categories=pd.Index([names[j] for j in drawn], dtype=object)
            ),
            "value": values.T.ravel(),
        }
    )
    bins = np.array_split(np.arange(len(batches)), min(HEATMAP_COLUMNS, len(batches)))
    starts = batches[[b[0] for b in bins]]
    ends = np.append(starts[1:], batches[-1] + 1)
    means = np.stack([vectors[np.ix_(b, columns)].mean(axis=0) for b in bins])  # (bins, kept)
    heat = pd.DataFrame(
        {
            "batch": np.repeat(starts, len(columns)),
            "batch_end": np.repeat(ends, len(columns)),
            "parameter": np.tile(np.array(names, dtype=object), len(bins)),
            "value": means.ravel(),
        }
    )
    return _with_layers(lines), heat.astype({"parameter": "category"}), names


def lines_frame(buckets: MinMaxBuckets, columns: list[int], names: list[str], named: str) -> pd.DataFrame:
    """Long form (batch, named, value) of the buckets' columns, one line each: every bucket's min and max.

    Built from arrays in one go, not a frame per line (those cost a millisecond each, a refresh), the names
    as categories in the order given: each sent to the browser once, not once a point.
    """
    points = [buckets.points(j) for j in columns]
    lengths = [len(batches) for batches, _ in points]
    return pd.DataFrame(
        {
            "batch": np.concatenate([batches for batches, _ in points]) if points else np.empty(0, np.int64),
            named: pd.Categorical.from_codes(
                np.repeat(np.arange(len(names)), lengths), categories=pd.Index(names, dtype=object)
            )
            if points
            else pd.Categorical([]),
            "value": np.concatenate([values for _, values in points]) if points else np.empty(0),
        }
    )


def line_columns(kept: int) -> list[int]:
    """The kept parameters drawn as lines: all up to MAX_SV_LINES, else that many spread evenly over them, so a
    large net's lines show every tensor, not only the first."""
    return np.unique(np.linspace(0, kept - 1, min(kept, MAX_SV_LINES)).round().astype(int)).tolist()


def with_replay_mark(table: pa.Table, batch: int) -> pa.Table:
    """The state-vector lines' table with one more row at batch, no parameter and its extent false (as the data's,
    unlike the extent rows): the chart's red line there.

    A row of data rather than a layer of the spec, and in the table's own columns: the browser draws a chart anew
    when its spec or its columns change, and under the quick reruns of a moving slider that redraw fails. The shared
    table is not copied: the row is a chunk of its own."""
    columns = [
        pa.array([batch], field.type)
        if field.name == "batch"
        else pa.array([False], field.type)
        if field.name == "extent"
        else pa.nulls(1, field.type)
        for field in table.schema
    ]
    return pa.concat_tables([table, pa.Table.from_arrays(columns, schema=table.schema)])


def with_test_loss(
    loss: pd.DataFrame,
    points: pd.DataFrame,
    means: pd.DataFrame,
    markers: pd.DataFrame,
    smoothing: float,
    log_scale: bool,
    batches: tuple[int, int],
) -> pd.DataFrame:
    """The loss chart's frame (loss_chart_frame's) and the test loss's rows beside it: raw (batch, test_loss) and
    smoothed (batch, test_smoothed), smoothed over the same batches, so the two lines can be read against each other."""
    test = loss_chart_frame(points.rename(columns={"value": TEST_LOSS}), means, markers, smoothing, log_scale, batches)
    test = test[test["label"].isna()].drop(columns=["label", "kind", "lane"])  # the markers are the loss frame's
    if not len(loss):
        return loss
    test = test.rename(columns={"smoothed": "test_smoothed"})
    frame = pd.concat([loss, test], ignore_index=True)
    for column in ("label", "kind"):  # concat drops a categorical that only one side has to object
        frame[column] = pd.Categorical(frame[column], categories=loss[column].cat.categories)
    return frame
