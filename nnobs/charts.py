"""Chart data from a run's history, bounded in size, and Vega-Lite specs that stay the same between refreshes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache, wraps

import altair as alt
import numpy as np
import pandas as pd

from nnobs.analytics import EXTENT, GRID
from nnobs.history import Marker, RunHistory

MAX_SV_LINES = 64  # parameters drawn as lines; the heatmap shows up to history.SV_KEPT
HEATMAP_COLUMNS = 100  # batch bins across the heatmap


def loss_frame(history: RunHistory) -> pd.DataFrame:
    """The loss chart's points: first, last, and each bucket's min and max (at most history's max_points)."""
    batches, losses = history.loss_buckets.points(0)
    return pd.DataFrame({"batch": batches, "loss": losses})


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
         "kind": [g[-1].kind for g in groups],
         "lane": [3 + 13 * (g[0].number % lanes) for g in groups]}  # pixels from the top
    )


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, bias-corrected so it starts at the data.

    NaN (diverged) points pass through unsmoothed and do not disturb the average.
    """
    out = values.astype(float)
    if weight <= 0:
        return out
    last, n = 0.0, 0
    for i, value in enumerate(out):
        if np.isfinite(value):
            last = last * weight + (1 - weight) * value
            n += 1
            out[i] = last / (1 - weight**n)
    return out


def loss_means_frame(history: RunHistory) -> tuple[pd.DataFrame, int]:
    """Each loss bucket's mean at its middle batch, and how many reports a full bucket holds."""
    buckets = history.loss_buckets
    starts, ends, means = buckets.means(buckets.max_buckets)
    return pd.DataFrame({"batch": (starts + ends - 1) // 2, "mean": means[:, 0]}), buckets.width


def loss_chart_frame(
    loss: pd.DataFrame, means: pd.DataFrame, width: int, markers: pd.DataFrame, smoothing: float, log_scale: bool
) -> pd.DataFrame:
    """The loss chart's data: raw points (batch, loss), smoothed points (batch, smoothed), markers (label, kind).

    The smoothing runs over the buckets' means, not the min/max outline drawn raw, with the weight
    raised to the bucket width, so a setting spans the same number of reports however long the
    run. On a log axis it averages log(loss), so the line follows the curve drawn rather than
    lagging decades above it once the loss has fallen.
    """
    values = means["mean"].to_numpy(dtype=float)
    weight = smoothing**width
    if log_scale:
        with np.errstate(divide="ignore", invalid="ignore"):
            smooth = np.exp(ema(np.where(values > 0, np.log(values), np.nan), weight))
    else:
        smooth = ema(values, weight)
    smoothed = pd.DataFrame({"batch": means["batch"], "smoothed": smooth})
    frame = pd.concat([loss, smoothed, markers], ignore_index=True)
    return frame.astype({"label": "category", "kind": "category"})  # few distinct strings: sent once each


def layer_of(name: str) -> str:
    """The group a parameter is drawn in: "L1.W[0,1]" belongs to "L1.W"."""
    return name.split("[", 1)[0]


def steps_frame(history: RunHistory, column: int) -> pd.DataFrame:
    """Step lengths (column 0) or cosines between successive steps (column 1), per state report."""
    if history.step_buckets is None:
        return pd.DataFrame({"batch": [], "value": []})
    batches, values = history.step_buckets.points(column)
    return pd.DataFrame({"batch": batches, "value": values})


def surface_frame(x1: np.ndarray, x2: np.ndarray, output: np.ndarray, facts) -> pd.DataFrame:
    """The decision surface's cells (x1, x2, output) and the training points on top (x1, x2, target)."""
    x, ideal = facts
    cells = pd.DataFrame({"x1": x1, "x2": x2, "output": output})
    points = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1], "target": ideal[:, 0]})
    return pd.concat([cells, points], ignore_index=True).astype("float32")  # a picture: 7 digits are plenty


def sv_frames(history: RunHistory, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-form frames for the parameter lines and the heatmap, bounded however long the run.

    Lines: the first MAX_SV_LINES parameters, each bucket's min and max. Heatmap: the mean of
    each kept parameter over at most HEATMAP_COLUMNS batch bins.
    """
    buckets = history.sv_buckets
    if buckets is None or buckets.n == 0:
        return pd.DataFrame(columns=["batch", "layer", "parameter", "value"]), pd.DataFrame(
            columns=["batch", "batch_end", "parameter", "value"]
        )
    lines = []
    for j in range(min(buckets.n_columns, MAX_SV_LINES)):
        batches, values = buckets.points(j)
        lines.append(pd.DataFrame({"batch": batches, "layer": layer_of(names[j]), "parameter": names[j], "value": values}))
    categories = {"layer": "category", "parameter": "category"}  # each name sent once, not once a point
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
    return pd.concat(lines, ignore_index=True).astype(categories), heat.astype({"parameter": "category"})


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


@_built_once
def loss_spec(log_scale: bool) -> dict:
    """Raw loss faint, smoothed loss over it, and a labelled rule where each command or generation took effect."""
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    title = "loss" + (" (log)" if log_scale else "")
    x = alt.X("batch:Q", title="batch")
    tip = [alt.Tooltip("batch:Q", format=","), alt.Tooltip("loss:Q", format=".4g"),
           alt.Tooltip("smoothed:Q", format=".4g")]

    def line(field: str) -> alt.Chart:
        plotted = f"datum.{field} > 0" if log_scale else f"isValid(datum.{field})"  # a log axis has no zero
        return alt.Chart().transform_filter(plotted).encode(
            x=x, y=alt.Y(f"{field}:Q", title=title, scale=scale), tooltip=tip
        )

    raw = line("loss").mark_line(opacity=0.3, color="#8c9bab").add_params(_zoom())
    smoothed = line("smoothed").mark_line(color="#1f77b4")
    marker_color = alt.Color(
        "kind:N", scale=alt.Scale(domain=["command", "generation"], range=["#e07b00", "#7b3fb5"]),
        legend=alt.Legend(title="marker", orient="top"),
    )
    markers = alt.Chart().transform_filter("isValid(datum.label)")
    rules = markers.mark_rule(strokeDash=[4, 3]).encode(
        x=x, color=marker_color, tooltip=["label:N", alt.Tooltip("batch:Q", format=",")]
    )
    labels = markers.mark_text(align="left", baseline="top", dx=3, fontSize=10).encode(
        x=x, y=alt.Y("lane:Q", scale=None), text="label:N", color=marker_color
    )
    return _spec(alt.layer(raw, smoothed, rules, labels, title="Loss").properties(height=320))


@_built_once
def sv_lines_spec(names: tuple[str, ...]) -> dict:
    """One line per parameter, coloured by the layer's weights or biases it belongs to."""
    return _spec(
        alt.Chart(title="State vector: every parameter")
        .mark_line(strokeWidth=1.5)
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("value:Q", title="value"),
            color=alt.Color("layer:N", title="layer", legend=alt.Legend(orient="top")),
            detail="parameter:N",
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(_zoom())
        .properties(height=max(260, 12 * min(len(names), 80)))
    )


@_built_once
def steps_spec(figure: str) -> dict:
    """Step length (how far each state report moved) or cosine between successive steps, over batches."""
    cosine = figure == "cosine"
    return _spec(
        alt.Chart(title="Cosine between successive steps" if cosine else "Step length between state reports")
        .mark_line(point=alt.OverlayMarkDef(size=12), color="#2a9d8f" if cosine else "#6a4c93")
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("value:Q", title="cosine" if cosine else "length",
                    scale=alt.Scale(domain=[-1, 1]) if cosine else alt.Scale(type="symlog")),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .transform_filter("isValid(datum.value)")
        .add_params(_zoom())
        .properties(height=170)
    )


@_built_once
def surface_spec() -> dict:
    """The net's output over the input plane, with the training points on top, both on one diverging scale."""
    half = EXTENT / (GRID - 1) / 2  # half a cell: the grid is GRID points across [-EXTENT, EXTENT]
    diverging = alt.Scale(scheme="redblue", domainMid=0, reverse=True)
    axis = alt.Scale(domain=[-EXTENT - half, EXTENT + half], nice=False)
    cells = (
        alt.Chart().transform_filter("isValid(datum.output)")
        .transform_calculate(left=f"datum.x1 - {half}", right=f"datum.x1 + {half}",
                             bottom=f"datum.x2 - {half}", top=f"datum.x2 + {half}")
        .mark_rect()
        .encode(x=alt.X("left:Q", title="input 1", scale=axis), x2="right:Q",
                y=alt.Y("bottom:Q", title="input 2", scale=axis), y2="top:Q",
                color=alt.Color("output:Q", scale=diverging, title="output"),
                tooltip=[alt.Tooltip("x1:Q", format=".2f"), alt.Tooltip("x2:Q", format=".2f"),
                         alt.Tooltip("output:Q", format=".3f")])
    )
    facts = (
        alt.Chart().transform_filter("isValid(datum.target)")
        .mark_point(filled=True, size=140, stroke="black", strokeWidth=1.5)
        .encode(x="x1:Q", y="x2:Q", fill=alt.Fill("target:Q", scale=diverging, legend=None),
                tooltip=["x1:Q", "x2:Q", "target:Q"])
    )
    return _spec(alt.layer(cells, facts, title="Decision surface (latest state)").properties(height=300))


@_built_once
def sv_heatmap_spec(names: tuple[str, ...]) -> dict:
    return _spec(
        alt.Chart(title="State vector over batches")
        .mark_rect()
        .encode(
            x=alt.X("batch:Q", title="batch"),
            x2="batch_end:Q",
            y=alt.Y("parameter:N", sort=None, title=None),  # data order is state-vector order
            color=alt.Color("value:Q", scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True), title="value"),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=max(240, 14 * min(len(names), 80)))
    )
