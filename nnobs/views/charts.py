"""The run page's charts as Vega-Lite specs: loss, metrics, state vector, steps, decision surface, comparisons."""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from nnobs.protocol.schema import TEST_LOSS
from nnobs.views.surface import EXTENT, GRID
from nnobs.views.vegalite import (
    HUGE_SHORT,
    Spec,
    batch_axis,
    built_once,
    log_axis,
    plain_axis,
    run_extent,
    spec_of,
    zoom,
)
from nnobs.views.wording import as_text

LOSS_PENDING = "The loss chart appears once the run has reported a loss at two batches."


def off_the_log_axis(loss: pd.DataFrame) -> str:
    """What a log-scale loss chart leaves out, in words: reports of a loss of 0 or below, which a log axis has no
    place for (a model that fits its data exactly reaches 0); "" when there are none."""
    off = loss["loss"].to_numpy(dtype=float) <= 0
    below = int(off.sum())
    if not below:
        return ""
    first = int(loss["batch"].to_numpy()[off][0])
    reports, lie, them = ("report", "lies", "it") if below == 1 else ("reports", "lie", "them")
    return (
        f"{below:,} loss {reports} of 0 or below, the first at batch {first:,}, {lie} off the log scale: turn off "
        f"Log-scale loss to see {them}."
    )


def metric_pending(name: str, points: pd.DataFrame) -> str:
    """What stands in for a metric's chart while fewer than two batches have a value to draw."""
    finite = points[np.isfinite(points["value"].to_numpy(dtype=float))]
    shown = as_text(name)  # a script names its metrics
    if not len(finite):
        return f"**{shown}**: logged, but not yet as a number."
    batch, value = finite.iloc[-1]
    return f"**{shown}**: {value:.4g} at batch {int(batch):,}, the one batch it was logged at so far."


# A diverging colour scale's domain: the data's, and a hair either side of its middle, 0. Without it a scale whose
# data do not reach past 0 on both sides (none yet, as the browser first draws a chart; a heatmap of positive
# weights) has its middle outside its domain, and Vega's legend gradient then reads its colour scheme at NaN and
# throws "TypeError: a[t] is not a function" in the browser.
AROUND_ZERO = alt.DomainUnionWith(unionWith=[-1e-30, 1e-30])

LABEL_AT_RIGHT = "scale('x', datum.batch) + 8 + 6 * length(datum.label) > width"  # would run past the edge


# The longest a loss or metric chart's y axis title is drawn: a metric chart's plot is about 150 px tall, and a title
# longer than that pushes the chart's own title out of sight above it.
AXIS_TITLE_PX = 140
TRAINING_COLOUR, TEST_COLOUR = "#1f77b4", "#009E73"  # test loss green: orange and purple are the markers'
LOSS_LEGEND = ("training loss", "test loss")


@built_once
def loss_spec(log_scale: bool, with_test: bool = False) -> Spec:
    """Raw loss faint, smoothed loss over it, and a labelled rule where each command or generation took effect;
    with_test, the test loss beside it the same way, in green, and a legend naming the two.

    Labels sit right of their rule, or left of it where they would run past the chart's right edge,
    on a white halo that no line or other rule crosses. Their colour says what they mark (orange a
    command, purple a generation), and their text says it too, so there is no legend for them.
    """
    raw, smoothed = _raw_and_smoothed("loss", "loss", log_scale)
    lines = [raw, smoothed]
    if with_test:
        test_raw, _ = _raw_and_smoothed(
            TEST_LOSS,
            "test loss",
            log_scale,
            smoothed="test_smoothed",
            colours=("#7fc8b0", TEST_COLOUR),
            zoomable=False,
        )
        lines = [raw, test_raw, _smoothed_pair(log_scale)]
    markers = alt.Chart().transform_filter("isValid(datum.label)")
    placed: dict[str, Any] = {
        "align": {"expr": f"{LABEL_AT_RIGHT} ? 'right' : 'left'"},
        "dx": {"expr": f"{LABEL_AT_RIGHT} ? -4 : 4"},
        "baseline": "top",
        "fontSize": 10,
        "clip": True,
    }
    where = {"x": batch_axis(), "y": alt.Y("lane:Q", scale=None), "text": "label:N"}
    halos = markers.mark_text(fill="white", stroke="white", strokeWidth=6, strokeJoin="round", **placed).encode(**where)
    labels = markers.mark_text(**placed).encode(color=_MARKER_COLOR, **where)
    layers = alt.layer(run_extent(), *lines, _marker_rules(), halos, labels, title="Loss")
    if with_test:  # the markers' colours are a scale of their own, with no legend
        layers = layers.resolve_scale(color="independent")
    return spec_of(layers.properties(height=320))


@built_once
def metric_spec(name: str, title: str | None = None, axis_title: str | None = None) -> Spec:
    """A metric drawn as the loss is, raw faint and smoothed over it, on a linear axis; the markers' rules without
    their labels, which the loss chart above already shows (a rule's tooltip says what it marks)."""
    title = " ".join((title or name).splitlines())  # a script names its metrics; Vega draws no title in two lines
    raw, smoothed = _raw_and_smoothed("value", " ".join((axis_title or title).splitlines()), log_scale=False)
    return spec_of(alt.layer(run_extent(), raw, smoothed, _marker_rules(), title=title).properties(height=200))


_MARKER_COLOR = alt.Color(
    "kind:N", scale=alt.Scale(domain=["command", "generation"], range=["#e07b00", "#7b3fb5"]), legend=None
)


def _marker_rules() -> alt.Chart:
    """A dashed rule where each command or generation took effect: orange a command, purple a generation."""
    return (
        alt.Chart()
        .transform_filter("isValid(datum.label)")
        .mark_rule(strokeDash=[4, 3], clip=True)
        .encode(x=batch_axis(), color=_MARKER_COLOR, tooltip=["label:N", alt.Tooltip("batch:Q", format=",")])
    )


def _smoothed_pair(log_scale: bool) -> alt.Chart:
    """The smoothed training and test loss as one layer of two lines, coloured by which, with a legend naming them."""
    plotted = "datum.value > 0" if log_scale else "isValid(datum.value)"
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False, nice=True)
    axis = log_axis() if log_scale else plain_axis()
    names = f"datum.label == 'smoothed' ? '{LOSS_LEGEND[0]}' : '{LOSS_LEGEND[1]}'"
    legend = alt.Legend(
        orient="top",  # above the plot: inside it, the markers' labels at its top would run under it
        title=None,
        labelExpr=names,
        symbolStrokeWidth=3,
        fillColor="white",
        padding=4,
        labelFontSize=12,
    )
    return (
        alt.Chart()
        .transform_fold(["smoothed", "test_smoothed"], as_=["series", "value"])
        .transform_filter(plotted)
        .mark_line(clip=True)
        .encode(
            x=batch_axis(),
            y=alt.Y("value:Q", title="loss" + (" (log)" if log_scale else ""), scale=scale, axis=axis),
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=["smoothed", "test_smoothed"], range=[TRAINING_COLOUR, TEST_COLOUR]),
                legend=legend,
            ),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g", title="smoothed")],
        )
    )


def _raw_and_smoothed(
    field: str,
    name: str,
    log_scale: bool,
    smoothed: str = "smoothed",
    colours: tuple[str, str] = ("#8c9bab", TRAINING_COLOUR),
    zoomable: bool = True,
) -> tuple[alt.Chart, alt.Chart]:
    """A windowed series' two lines: its raw outline (field) faint and zoomable, its smoothed line over it."""
    # A title cut short, with an ellipsis, where it would run past the axis: a script may name a metric at length.
    if log_scale:
        scale = alt.Scale(type="log")
        axis = log_axis(titleLimit=AXIS_TITLE_PX)
    else:
        scale, axis = alt.Scale(zero=False, nice=True), plain_axis(titleLimit=AXIS_TITLE_PX)
    title = ("loss" if field == TEST_LOSS else name) + (" (log)" if log_scale else "")  # one axis for both
    tip = [
        alt.Tooltip("batch:Q", format=","),
        alt.Tooltip(f"{field}:Q", format=".4g", title=name),
        alt.Tooltip(f"{smoothed}:Q", format=".4g", title="smoothed"),
    ]

    def line(column: str) -> alt.Chart:
        plotted = f"datum.{column} > 0" if log_scale else f"isValid(datum.{column})"  # a log axis has no zero
        return (
            alt.Chart()
            .transform_filter(plotted)
            .encode(x=batch_axis(), y=alt.Y(f"{column}:Q", title=title, scale=scale, axis=axis), tooltip=tip)
        )

    raw = line(field).mark_line(opacity=0.3, color=colours[0], clip=True)
    if zoomable:  # one zoom per chart: a second parameter of the same name is an error
        raw = raw.add_params(zoom())
    return raw, line(smoothed).mark_line(color=colours[1], clip=True)


SV_ALL = "every parameter"


@built_once
def sv_lines_spec(names: tuple[str, ...], shown: str = SV_ALL) -> Spec:
    """One line per parameter, coloured by the layer's weights or biases it belongs to, over the whole run."""
    lines = (
        alt.Chart()
        .transform_filter("isValid(datum.parameter)")
        .mark_line(strokeWidth=1.5, clip=True)
        .encode(
            x=batch_axis(),
            y=alt.Y("value:Q", title="value", axis=plain_axis(tickCount=10)),  # tall: not a label every 40 px
            # In state-vector order (the frame's), not alphabetical: a layer's weights before its biases.
            color=alt.Color("layer:N", title="layer", sort=None, legend=alt.Legend(orient="top", columns=4)),  # in
            # rows of four (a layer's weights and biases, two layers a row): the last is not cut off at the edge
            detail="parameter:N",
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(zoom())
    )
    # The state replayed, as a red line: a row of the data (see with_replay_mark), so that the spec never changes.
    replayed = (
        alt.Chart()
        .transform_filter("datum.extent === false && !isValid(datum.parameter)")
        .mark_rule(color="#d62728", strokeWidth=2)
        .encode(x=batch_axis())
    )
    return spec_of(
        alt.layer(run_extent(), lines, replayed, title=alt.Title("State vector", subtitle=shown)).properties(
            height=max(260, 12 * min(len(names), 80))
        )
    )


@built_once
def steps_spec(figure: str) -> Spec:
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
            x=batch_axis(),
            y=alt.Y(
                "value:Q",
                title="cosine" if cosine else "length",
                axis=plain_axis(),
                scale=alt.Scale(domain=[-1, 1]) if cosine else alt.Scale(type="symlog"),
            ),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(zoom())
    )
    title = "Cosine between successive steps" if cosine else "Step length between state reports"
    return spec_of(alt.layer(run_extent(), line, title=title).properties(height=170))


@built_once
def surface_spec(title: str = "Decision surface (latest state)") -> Spec:
    """The net's output over the input plane, with the training points on top, both on one diverging scale.

    The scale's domain comes from the data: the surface frame's two rows without x1 hold the
    output's range, centred on zero, so white is always zero and full colour the output's limit.
    The points' fill has a scale of its own (a point legend would replace the gradient), with the
    same domain: the targets and those two rows, which hold the targets' range too.
    """
    half = EXTENT / (GRID - 1)  # half a cell: the grid is GRID points across [-EXTENT, EXTENT], 2 * EXTENT wide
    overlap = 1.05 * half  # cells overlap a little: no seams between neighbours
    diverging = alt.Scale(scheme="redblue", domainMid=0, reverse=True, nice=False, zero=False, domain=AROUND_ZERO)
    colour = alt.Color("output:Q", scale=diverging, title="output", legend=alt.Legend(labelExpr=HUGE_SHORT))
    axis = alt.Scale(domain=[-EXTENT - half, EXTENT + half], nice=False)
    output_range = alt.Chart().transform_filter("!isValid(datum.x1)").mark_rect(opacity=0)  # under the cells
    ranges = [
        output_range.encode(color=colour),
        output_range.encode(fill=alt.Fill("output:Q", scale=diverging, legend=None)),
    ]
    cells = (
        alt.Chart()
        .transform_filter("isValid(datum.x1) && isValid(datum.output)")
        .transform_calculate(
            left=f"datum.x1 - {overlap}",
            right=f"datum.x1 + {overlap}",
            bottom=f"datum.x2 - {overlap}",
            top=f"datum.x2 + {overlap}",
        )
        .mark_rect(clip=True)
        .encode(
            x=alt.X("left:Q", title="input 1", scale=axis),
            x2="right:Q",
            y=alt.Y("bottom:Q", title="input 2", scale=axis),
            y2="top:Q",
            color=colour,
            tooltip=[
                alt.Tooltip("x1:Q", format=".2f"),
                alt.Tooltip("x2:Q", format=".2f"),
                alt.Tooltip("output:Q", format=".3~g"),
            ],
        )
    )
    facts = (
        alt.Chart()
        .transform_filter("isValid(datum.target)")
        .mark_point(filled=True, size=140, stroke="black", strokeWidth=1.5)
        .encode(
            x="x1:Q",
            y="x2:Q",
            fill=alt.Fill("target:Q", scale=diverging, legend=None),
            tooltip=["x1:Q", "x2:Q", "target:Q"],
        )
    )
    return spec_of(alt.layer(*ranges, cells, facts, title=title).properties(height=300))


@built_once
def sv_heatmap_spec(names: tuple[str, ...], shown: str = SV_ALL) -> Spec:
    """Each kept parameter's mean over batch bins, red positive, blue negative, white zero, over the whole run."""
    cells = (
        alt.Chart()
        .transform_filter("isValid(datum.parameter)")
        .mark_rect()
        .encode(
            x=batch_axis(),
            x2="batch_end:Q",
            y=alt.Y("parameter:N", sort=None, title=None),  # data order is state-vector order
            color=alt.Color(
                "value:Q",
                scale=alt.Scale(scheme="redblue", domainMid=0, reverse=True, domain=AROUND_ZERO),
                title="value",
                legend=alt.Legend(labelExpr=HUGE_SHORT),
            ),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
    )
    return spec_of(
        alt.layer(run_extent(), cells, title=alt.Title("State vector over batches", subtitle=shown)).properties(
            height=max(240, 14 * min(len(names), 80))
        )
    )


@built_once
def compare_spec(
    title: str,
    axis: str,
    log_scale: bool,
    runs: tuple[str, ...],
    colours: tuple[str, ...],
    dashes: tuple[tuple[int, ...], ...],
) -> Spec:
    """Several runs' smoothed lines, one colour each (the compare page's palette, fixed by the spec), over batches
    or the clock. The colours are in the spec, not the data: a run keeps its colour on every chart and refresh."""
    if log_scale:
        y = alt.Y(
            "value:Q",
            title=f"{title} (log)",
            scale=alt.Scale(type="log"),
            axis=log_axis(),
        )
    else:
        y = alt.Y("value:Q", title=title, scale=alt.Scale(zero=False, nice=True), axis=plain_axis())
    if axis == "time":
        x = alt.X("t:T", title="wall time", axis=alt.Axis(labelOverlap=True))
        shown = "isValid(datum.t)"
    else:
        x = alt.X(
            "batch:Q",
            title="batch",
            scale=alt.Scale(nice=False, zero=False),
            axis=alt.Axis(format=",d", tickMinStep=1, labelOverlap=True),
        )
        shown = "true"
    legend = alt.Legend(orient="top", title=None, labelLimit=260, symbolStrokeWidth=3, columns=min(len(runs), 4) or 1)
    lines = (
        alt.Chart()
        .transform_filter(shown)
        .mark_line(clip=True, strokeWidth=2)
        .encode(
            x=x,
            y=y,
            color=alt.Color("run:N", scale=alt.Scale(domain=list(runs), range=list(colours)), legend=legend),
            strokeDash=alt.StrokeDash(
                "run:N", scale=alt.Scale(domain=list(runs), range=[list(d) or [1, 0] for d in dashes]), legend=None
            ),
            tooltip=[
                "run:N",
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("t:T", title="time", format="%H:%M:%S"),
                alt.Tooltip("value:Q", format=".4g", title=title),
            ],
        )
        .add_params(zoom())
    )
    return spec_of(lines.properties(title=title, height=320))


def family_tree_spec(title: str, runs: tuple[str, ...], colours: tuple[str, ...], best: str | None) -> Spec:
    """A population's members (thin lines, the compare page's colours), each exploit as a dashed jump from the
    member's score to its donor's with a triangle where it went on, and the best member's lineage drawn over them
    as one thick dark line. One frame: rows of layer "member" (run, batch, value), "jump" (run, batch, before, after,
    what) and "lineage" (batch, value, member)."""
    legend = alt.Legend(orient="top", title=None, labelLimit=200, symbolStrokeWidth=3, columns=min(len(runs), 4))
    colour = alt.Color("run:N", scale=alt.Scale(domain=list(runs), range=list(colours)), legend=legend)
    y = alt.Y("value:Q", title=title + " (log)", scale=alt.Scale(type="log"), axis=log_axis())
    x = alt.X(
        "batch:Q",
        title="batch",
        scale=alt.Scale(nice=False, zero=False),
        axis=alt.Axis(format=",d", tickMinStep=1, labelOverlap=True),
    )
    base = alt.Chart()
    members = (
        base.transform_filter("datum.layer == 'member' && datum.value > 0")
        .mark_line(strokeWidth=1.5, opacity=0.6)
        .encode(
            x=x,
            y=y,
            color=colour,
            detail="run:N",
            tooltip=["run:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g", title=title)],
        )
        .add_params(zoom())
    )
    jump_tip = [alt.Tooltip("what:N", title="exploit")]
    jumps = (
        base.transform_filter("datum.layer == 'jump' && datum.before > 0 && datum.after > 0")
        .mark_rule(strokeDash=[4, 3], strokeWidth=1.5)
        .encode(x=x, y=alt.Y("before:Q", scale=alt.Scale(type="log")), y2="after:Q", color=colour, tooltip=jump_tip)
    )
    landed = (
        base.transform_filter("datum.layer == 'jump' && datum.after > 0")
        .mark_point(shape="triangle-right", filled=True, size=70)
        .encode(x=x, y=alt.Y("after:Q", scale=alt.Scale(type="log")), color=colour, tooltip=jump_tip)
    )
    lineage = (
        base.transform_filter("datum.layer == 'lineage' && datum.value > 0")
        .mark_line(strokeWidth=9, color="#888", opacity=0.35, strokeCap="round")  # a halo under the members' lines
        .encode(
            x=x,
            y=y,
            tooltip=[
                alt.Tooltip("member:N", title="best lineage"),
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("value:Q", format=".4g"),
            ],
        )
    )
    subtitle = f"wide grey: the lineage of the best, {best}, back to the start" if best else "no scores yet"
    chart = alt.layer(lineage, members, jumps, landed).properties(
        title=alt.TitleParams(f"{title}: every member, exploits as jumps", subtitle=subtitle), height=340
    )
    return spec_of(chart)


def schedule_spec() -> Spec:
    """The best lineage's eta over batches as steps (batch, eta, member): the schedule the population found."""
    chart = (
        alt.Chart()
        .mark_line(interpolate="step-after", strokeWidth=2.5, color="#222", point=alt.OverlayMarkDef(color="#222"))
        .encode(
            x=alt.X(
                "batch:Q",
                title="batch",
                scale=alt.Scale(nice=False, zero=False),
                axis=alt.Axis(format=",d", tickMinStep=1, labelOverlap=True),
            ),
            y=alt.Y("eta:Q", title="eta (log)", scale=alt.Scale(type="log"), axis=log_axis()),
            tooltip=[
                alt.Tooltip("batch:Q", format=",", title="from batch"),
                alt.Tooltip("eta:Q", format=".4g"),
                alt.Tooltip("member:N", title="trained by"),
            ],
        )
        .properties(title="The best lineage's eta", height=340)
    )
    return spec_of(chart)
