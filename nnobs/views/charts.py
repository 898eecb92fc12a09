"""Chart data from a run's history, bounded in size, and Vega-Lite specs that stay the same between refreshes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache, wraps

import altair as alt
import numpy as np
import pandas as pd
import pyarrow as pa

from nnobs.reading.history import Marker, RunHistory, WindowedSeries
from nnobs.reading.series import MinMaxBuckets
from nnobs.views.surface import EXTENT, GRID, as_picture

MAX_SV_LINES = 64  # parameters drawn as lines; the heatmap shows up to history.SV_KEPT
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
        {"batch": [g[0].batch for g in groups], "label": [" · ".join(m.label for m in g) for g in groups],
         # A batch where a generation began reads as one: its parameters changed there, whatever else did.
         "kind": ["generation" if any(m.kind == "generation" for m in g) else g[-1].kind for g in groups],
         "lane": [3 + 13 * (g[0].number % lanes) for g in groups]}  # pixels from the top
    )


def smooth(batches: np.ndarray, values: np.ndarray, smoothing: float, span: float,
           restarts: np.ndarray | None = None) -> np.ndarray:
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
    segment = np.searchsorted(np.sort(np.asarray(restarts if restarts is not None else [], dtype=float)), at, side="right")
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


LOSS_PENDING = "The loss chart appears once the run has reported a loss at two batches."


def loss_chart_frame(
    loss: pd.DataFrame, means: pd.DataFrame, markers: pd.DataFrame, smoothing: float, log_scale: bool,
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
    point has nothing to say, and the page shows LOSS_PENDING instead.
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


def metric_pending(name: str, points: pd.DataFrame) -> str:
    """What stands in for a metric's chart while fewer than two batches have a value to draw."""
    finite = points[np.isfinite(points["value"].to_numpy(dtype=float))]
    if not len(finite):
        return f"**{name}**: logged, but not yet as a number."
    batch, value = finite.iloc[-1]
    return f"**{name}**: {value:.4g} at batch {int(batch):,}, the one batch it was logged at so far."


def steps_frame(history: RunHistory, column: int) -> pd.DataFrame:
    """Step lengths (column 0) or cosines between successive steps (column 1), per state report."""
    if history.step_buckets is None:
        return pd.DataFrame({"batch": [], "value": []})
    batches, values = history.step_buckets.points(column)
    return pd.DataFrame({"batch": batches, "value": values})


BOUNDED_OUTPUTS = {"tanh": 1.0}  # activations whose output cannot leave [-bound, bound]


def surface_frame(x1: np.ndarray, x2: np.ndarray, output: np.ndarray, facts, activation: str) -> pd.DataFrame:
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
    lines = _lines_frame(buckets, drawn, [names[j] for j in drawn], "parameter")
    layers = [layer_of(name) for name in lines["parameter"].cat.categories]
    lines.insert(1, "layer", pd.Categorical(np.array(layers, dtype=object)[lines["parameter"].cat.codes],
                                            categories=list(dict.fromkeys(layers))))
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


def _lines_frame(buckets: MinMaxBuckets, columns: list[int], names: list[str], named: str) -> pd.DataFrame:
    """Long form (batch, named, value) of the buckets' columns, one line each: every bucket's min and max.

    Built from arrays in one go, not a frame per line (those cost a millisecond each, a refresh), the names
    as categories in the order given: each sent to the browser once, not once a point.
    """
    points = [buckets.points(j) for j in columns]
    lengths = [len(batches) for batches, _ in points]
    return pd.DataFrame({
        "batch": np.concatenate([batches for batches, _ in points]) if points else np.empty(0, np.int64),
        named: pd.Categorical.from_codes(np.repeat(np.arange(len(names)), lengths), categories=pd.Index(names, dtype=object))
        if points else pd.Categorical([]),
        "value": np.concatenate([values for _, values in points]) if points else np.empty(0),
    })


def line_columns(kept: int) -> list[int]:
    """The kept parameters drawn as lines: all up to MAX_SV_LINES, else that many spread evenly over them, so a
    large net's lines show every tensor, not only the first."""
    return np.unique(np.linspace(0, kept - 1, min(kept, MAX_SV_LINES)).round().astype(int)).tolist()


def _spec(chart: alt.Chart) -> dict:
    """The chart as a Vega-Lite spec without data: the page sends data beside it, so the spec never changes
    between refreshes and the browser swaps the data in place instead of drawing the chart anew."""
    spec = chart.to_dict()
    for key in ("data", "datasets", "config"):
        spec.pop(key, None)
    for layer in spec.get("layer", []):
        layer.pop("data", None)  # every layer reads the one dataset sent beside the spec
    return spec


def _built_once(build: Callable[..., dict]) -> Callable[..., dict]:
    """Build each spec once (Altair's validation costs milliseconds), and hand out copies the page may change."""
    cached = lru_cache(maxsize=8)(build)

    @wraps(build)
    def fresh_copy(*args):
        return copy.deepcopy(cached(*args))

    return fresh_copy


def _zoom() -> alt.Parameter:
    # A fixed name: a generated one would differ on every refresh and force a redraw.
    return alt.selection_interval(bind="scales", encodings=["x"], name="zoom")


def _batch_axis() -> alt.X:
    """The x of every chart over batches: the data's extent exactly (the run's, from its extent rows), whole batches."""
    return alt.X("batch:Q", title="batch", scale=alt.Scale(nice=False, zero=False),
                 axis=alt.Axis(format=",d", tickMinStep=1))


def _run_extent() -> alt.Chart:
    """An invisible layer over the extent rows: it stretches the batch axis over the whole run and draws nothing.

    Charts put it first, under their marks, so it never takes their tooltips.
    """
    return alt.Chart().transform_filter("datum.extent === true").mark_rule(opacity=0).encode(x=_batch_axis())


LOG_LABELS = "replace(datum.label, 'e+', 'e')"  # 1e-2, 1e0, 1e3: one style over any number of decades
# A colour legend's labels: as Vega makes them (0.5, 10), but a diverged net's 1e129 as that, not 130 digits.
HUGE_SHORT = "abs(datum.value) >= 1e6 ? replace(format(datum.value, '.2~e'), 'e+', 'e') : datum.label"
LABEL_AT_RIGHT = "scale('x', datum.batch) + 8 + 6 * length(datum.label) > width"  # would run past the edge


TRAINING_COLOUR, TEST_COLOUR = "#1f77b4", "#009E73"  # test loss green: orange and purple are the markers'
LOSS_LEGEND = ("training loss", "test loss")


@_built_once
def loss_spec(log_scale: bool, with_test: bool = False) -> dict:
    """Raw loss faint, smoothed loss over it, and a labelled rule where each command or generation took effect;
    with_test, the test loss beside it the same way, in green, and a legend naming the two.

    Labels sit right of their rule, or left of it where they would run past the chart's right edge,
    on a white halo that no line or other rule crosses. Their colour says what they mark (orange a
    command, purple a generation), and their text says it too, so there is no legend for them.
    """
    raw, smoothed = _raw_and_smoothed("loss", "loss", log_scale)
    lines = [raw, smoothed]
    if with_test:
        test_raw, _ = _raw_and_smoothed("test_loss", "test loss", log_scale, smoothed="test_smoothed",
                                        colours=("#7fc8b0", TEST_COLOUR), zoom=False)
        lines = [raw, test_raw, _smoothed_pair(log_scale)]
    markers = alt.Chart().transform_filter("isValid(datum.label)")
    placed = {"align": {"expr": f"{LABEL_AT_RIGHT} ? 'right' : 'left'"},
              "dx": {"expr": f"{LABEL_AT_RIGHT} ? -4 : 4"}, "baseline": "top", "fontSize": 10, "clip": True}
    where = {"x": _batch_axis(), "y": alt.Y("lane:Q", scale=None), "text": "label:N"}
    halos = markers.mark_text(fill="white", stroke="white", strokeWidth=6, strokeJoin="round", **placed).encode(**where)
    labels = markers.mark_text(**placed).encode(color=_MARKER_COLOR, **where)
    layers = alt.layer(_run_extent(), *lines, _marker_rules(), halos, labels, title="Loss")
    if with_test:  # the markers' colours are a scale of their own, with no legend
        layers = layers.resolve_scale(color="independent")
    return _spec(layers.properties(height=320))


@_built_once
def metric_spec(name: str) -> dict:
    """A metric drawn as the loss is, raw faint and smoothed over it, on a linear axis; the markers' rules without
    their labels, which the loss chart above already shows (a rule's tooltip says what it marks)."""
    raw, smoothed = _raw_and_smoothed("value", name, log_scale=False)
    return _spec(alt.layer(_run_extent(), raw, smoothed, _marker_rules(), title=name).properties(height=200))


_MARKER_COLOR = alt.Color(
    "kind:N", scale=alt.Scale(domain=["command", "generation"], range=["#e07b00", "#7b3fb5"]), legend=None
)


def _marker_rules() -> alt.Chart:
    """A dashed rule where each command or generation took effect: orange a command, purple a generation."""
    return alt.Chart().transform_filter("isValid(datum.label)").mark_rule(strokeDash=[4, 3], clip=True).encode(
        x=_batch_axis(), color=_MARKER_COLOR, tooltip=["label:N", alt.Tooltip("batch:Q", format=",")]
    )


def _smoothed_pair(log_scale: bool) -> alt.Chart:
    """The smoothed training and test loss as one layer of two lines, coloured by which, with a legend naming them."""
    plotted = "datum.value > 0" if log_scale else "isValid(datum.value)"
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False, nice=True)
    axis = alt.Axis(format="~e", labelExpr=LOG_LABELS) if log_scale else alt.Axis(format="~g")
    names = f"datum.label == 'smoothed' ? '{LOSS_LEGEND[0]}' : '{LOSS_LEGEND[1]}'"
    legend = alt.Legend(orient="top-right", title=None, labelExpr=names, symbolStrokeWidth=3, fillColor="white",
                        padding=4, labelFontSize=12)
    return (
        alt.Chart().transform_fold(["smoothed", "test_smoothed"], as_=["series", "value"]).transform_filter(plotted)
        .mark_line(clip=True)
        .encode(x=_batch_axis(),
                y=alt.Y("value:Q", title="loss" + (" (log)" if log_scale else ""), scale=scale, axis=axis),
                color=alt.Color("series:N", scale=alt.Scale(domain=["smoothed", "test_smoothed"],
                                                            range=[TRAINING_COLOUR, TEST_COLOUR]), legend=legend),
                tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g", title="smoothed")])
    )


def _raw_and_smoothed(field: str, name: str, log_scale: bool, smoothed: str = "smoothed",
                      colours: tuple[str, str] = ("#8c9bab", TRAINING_COLOUR), zoom: bool = True,
                      ) -> tuple[alt.Chart, alt.Chart]:
    """A windowed series' two lines: its raw outline (field) faint and zoomable, its smoothed line over it."""
    if log_scale:
        scale = alt.Scale(type="log")
        axis = alt.Axis(format="~e", labelExpr=LOG_LABELS)
    else:
        scale, axis = alt.Scale(zero=False, nice=True), alt.Axis(format="~g")
    title = ("loss" if field == "test_loss" else name) + (" (log)" if log_scale else "")  # one axis for both
    tip = [alt.Tooltip("batch:Q", format=","), alt.Tooltip(f"{field}:Q", format=".4g", title=name),
           alt.Tooltip(f"{smoothed}:Q", format=".4g", title="smoothed")]

    def line(column: str) -> alt.Chart:
        plotted = f"datum.{column} > 0" if log_scale else f"isValid(datum.{column})"  # a log axis has no zero
        return alt.Chart().transform_filter(plotted).encode(
            x=_batch_axis(), y=alt.Y(f"{column}:Q", title=title, scale=scale, axis=axis), tooltip=tip
        )

    raw = line(field).mark_line(opacity=0.3, color=colours[0], clip=True)
    if zoom:  # one zoom per chart: a second parameter of the same name is an error
        raw = raw.add_params(_zoom())
    return raw, line(smoothed).mark_line(color=colours[1], clip=True)


SV_ALL = "every parameter"


@_built_once
def sv_lines_spec(names: tuple[str, ...], shown: str = SV_ALL) -> dict:
    """One line per parameter, coloured by the layer's weights or biases it belongs to, over the whole run."""
    lines = (
        alt.Chart()
        .transform_filter("isValid(datum.parameter)")
        .mark_line(strokeWidth=1.5, clip=True)
        .encode(
            x=_batch_axis(),
            y=alt.Y("value:Q", title="value", axis=alt.Axis(format="~g")),
            # In state-vector order (the frame's), not alphabetical: a layer's weights before its biases.
            color=alt.Color("layer:N", title="layer", sort=None, legend=alt.Legend(orient="top", columns=4)),  # in
            # rows of four (a layer's weights and biases, two layers a row): the last is not cut off at the edge
            detail="parameter:N",
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(_zoom())
    )
    # The state replayed, as a red line: a row of the data (see with_replay_mark), so that the spec never changes.
    replayed = alt.Chart().transform_filter("datum.extent === false && !isValid(datum.parameter)").mark_rule(color="#d62728", strokeWidth=2).encode(
        x=_batch_axis())
    return _spec(
        alt.layer(_run_extent(), lines, replayed, title=alt.Title("State vector", subtitle=shown))
        .properties(height=max(260, 12 * min(len(names), 80)))
    )


def with_replay_mark(table: pa.Table, batch: int) -> pa.Table:
    """The state-vector lines' table with one more row at batch, no parameter and its extent false (as the data's,
    unlike the extent rows): the chart's red line there.

    A row of data rather than a layer of the spec, and in the table's own columns: the browser draws a chart anew
    when its spec or its columns change, and under the quick reruns of a moving slider that redraw fails. The shared
    table is not copied: the row is a chunk of its own."""
    columns = [pa.array([batch], field.type) if field.name == "batch" else pa.array([False], field.type)
               if field.name == "extent" else pa.nulls(1, field.type) for field in table.schema]
    return pa.concat_tables([table, pa.Table.from_arrays(columns, schema=table.schema)])


@_built_once
def steps_spec(figure: str) -> dict:
    """Step length (how far each state report moved) or cosine between successive steps, over the whole run."""
    cosine = figure == "cosine"
    colour = "#2a9d8f" if cosine else "#6a4c93"  # the points the same as their line
    line = (
        alt.Chart()
        # Not filtered for valid values: a line breaks where there is no step (a converged net) instead of
        # drawing one straight across the gap, as Vega-Lite does for path marks by default.
        .transform_filter("!datum.extent")
        .mark_line(point=alt.OverlayMarkDef(size=12, color=colour), color=colour, clip=True)
        .encode(
            x=_batch_axis(),
            y=alt.Y("value:Q", title="cosine" if cosine else "length", axis=alt.Axis(format="~g"),
                    scale=alt.Scale(domain=[-1, 1]) if cosine else alt.Scale(type="symlog")),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(_zoom())
    )
    title = "Cosine between successive steps" if cosine else "Step length between state reports"
    return _spec(alt.layer(_run_extent(), line, title=title).properties(height=170))


@_built_once
def surface_spec(title: str = "Decision surface (latest state)") -> dict:
    """The net's output over the input plane, with the training points on top, both on one diverging scale.

    The scale's domain comes from the data: the surface frame's two rows without x1 hold the
    output's range, centred on zero, so white is always zero and full colour the output's limit.
    The points' fill has a scale of its own (a point legend would replace the gradient), with the
    same domain: the targets and those two rows, which hold the targets' range too.
    """
    half = EXTENT / (GRID - 1)  # half a cell: the grid is GRID points across [-EXTENT, EXTENT], 2 * EXTENT wide
    overlap = 1.05 * half  # cells overlap a little: no seams between neighbours
    diverging = alt.Scale(scheme="redblue", domainMid=0, reverse=True, nice=False, zero=False)
    colour = alt.Color("output:Q", scale=diverging, title="output", legend=alt.Legend(labelExpr=HUGE_SHORT))
    axis = alt.Scale(domain=[-EXTENT - half, EXTENT + half], nice=False)
    output_range = alt.Chart().transform_filter("!isValid(datum.x1)").mark_rect(opacity=0)  # under the cells
    ranges = [output_range.encode(color=colour),
              output_range.encode(fill=alt.Fill("output:Q", scale=diverging, legend=None))]
    cells = (
        alt.Chart().transform_filter("isValid(datum.x1) && isValid(datum.output)")
        .transform_calculate(left=f"datum.x1 - {overlap}", right=f"datum.x1 + {overlap}",
                             bottom=f"datum.x2 - {overlap}", top=f"datum.x2 + {overlap}")
        .mark_rect(clip=True)
        .encode(x=alt.X("left:Q", title="input 1", scale=axis), x2="right:Q",
                y=alt.Y("bottom:Q", title="input 2", scale=axis), y2="top:Q", color=colour,
                tooltip=[alt.Tooltip("x1:Q", format=".2f"), alt.Tooltip("x2:Q", format=".2f"),
                         alt.Tooltip("output:Q", format=".3~g")])
    )
    facts = (
        alt.Chart().transform_filter("isValid(datum.target)")
        .mark_point(filled=True, size=140, stroke="black", strokeWidth=1.5)
        .encode(x="x1:Q", y="x2:Q", fill=alt.Fill("target:Q", scale=diverging, legend=None),
                tooltip=["x1:Q", "x2:Q", "target:Q"])
    )
    return _spec(alt.layer(*ranges, cells, facts, title=title).properties(height=300))


@_built_once
def sv_heatmap_spec(names: tuple[str, ...], shown: str = SV_ALL) -> dict:
    """Each kept parameter's mean over batch bins, red positive, blue negative, white zero, over the whole run."""
    cells = (
        alt.Chart()
        .transform_filter("isValid(datum.parameter)")
        .mark_rect()
        .encode(
            x=_batch_axis(),
            x2="batch_end:Q",
            y=alt.Y("parameter:N", sort=None, title=None),  # data order is state-vector order
            color=alt.Color("value:Q", scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True), title="value",
                            legend=alt.Legend(labelExpr=HUGE_SHORT)),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
    )
    return _spec(
        alt.layer(_run_extent(), cells, title=alt.Title("State vector over batches", subtitle=shown))
        .properties(height=max(240, 14 * min(len(names), 80)))
    )


@_built_once
def compare_spec(title: str, axis: str, log_scale: bool, runs: tuple[str, ...], colours: tuple[str, ...],
                 dashes: tuple[tuple[int, ...], ...]) -> dict:
    """Several runs' smoothed lines, one colour each (the compare page's palette, fixed by the spec), over batches
    or the clock. The colours are in the spec, not the data: a run keeps its colour on every chart and refresh."""
    if log_scale:
        y = alt.Y("value:Q", title=f"{title} (log)", scale=alt.Scale(type="log"),
                  axis=alt.Axis(format="~e", labelExpr=LOG_LABELS))
    else:
        y = alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, nice=True), axis=alt.Axis(format="~g"))
    if axis == "time":
        x = alt.X("t:T", title="wall time", axis=alt.Axis(labelOverlap=True))
        shown = "isValid(datum.t)"
    else:
        x = alt.X("batch:Q", title="batch", scale=alt.Scale(nice=False, zero=False),
                  axis=alt.Axis(format=",d", tickMinStep=1, labelOverlap=True))
        shown = "true"
    legend = alt.Legend(orient="top", title=None, labelLimit=260, symbolStrokeWidth=3, columns=min(len(runs), 4) or 1)
    lines = (
        alt.Chart().transform_filter(shown).mark_line(clip=True, strokeWidth=2)
        .encode(
            x=x, y=y,
            color=alt.Color("run:N", scale=alt.Scale(domain=list(runs), range=list(colours)), legend=legend),
            strokeDash=alt.StrokeDash("run:N", scale=alt.Scale(domain=list(runs), range=[list(d) or [1, 0] for d in dashes]),
                                      legend=None),
            tooltip=["run:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("t:T", title="time", format="%H:%M:%S"),
                     alt.Tooltip("value:Q", format=".4g", title=title)],
        )
        .add_params(_zoom())
    )
    return _spec(lines.properties(title=title, height=320))


TEST_METRIC = "test_loss"  # the metric the built-in worker reports its test-set loss as


def with_test_loss(loss: pd.DataFrame, points: pd.DataFrame, means: pd.DataFrame, markers: pd.DataFrame,
                   smoothing: float, log_scale: bool, batches: tuple[int, int]) -> pd.DataFrame:
    """The loss chart's frame (loss_chart_frame's) and the test loss's rows beside it: raw (batch, test_loss) and
    smoothed (batch, test_smoothed), smoothed over the same batches, so the two lines can be read against each other."""
    test = loss_chart_frame(points.rename(columns={"value": TEST_METRIC}), means, markers, smoothing, log_scale, batches)
    test = test[test["label"].isna()].drop(columns=["label", "kind", "lane"])  # the markers are the loss frame's
    if not len(loss):
        return loss
    test = test.rename(columns={"smoothed": "test_smoothed"})
    frame = pd.concat([loss, test], ignore_index=True)
    for column in ("label", "kind"):  # concat drops a categorical that only one side has to object
        frame[column] = pd.Categorical(frame[column], categories=loss[column].cat.categories)
    return frame
