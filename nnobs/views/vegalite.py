"""A small Vega-Lite kit: specs without data, built once, over a batch axis that spans the run and zooms."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, ParamSpec

import altair as alt
import numpy as np

Spec = dict[str, Any]  # a Vega-Lite spec as JSON: what st.vega_lite_chart takes beside the data
Params = ParamSpec("Params")

_DECADE = "log(datum.value) / LN10"
# A log axis's labels: 1e-2, 1e0, 1e3 at the decades alone, one style over any number of decades; between them
# nothing (Vega ticks 2, 3, ... 9 of each decade, whose labels would crowd), except on an axis spanning under one
# and a half decades, which may hold no decade at all: there 0.2 and 0.5, 2 and 5 too, written plain.
LOG_LABELS = (
    f"abs({_DECADE} - round({_DECADE})) < 1e-6 ? replace(format(datum.value, '.0e'), 'e+', 'e') : "
    "log(peek(domain('y')) / domain('y')[0]) / LN10 < 1.5 && "
    f"indexof([2, 5], round(datum.value / pow(10, floor({_DECADE} + 1e-9)))) >= 0 ? format(datum.value, '~r') : ''"
)
# A linear axis's labels: plain numbers (60, 40, 0.5, never 6e+1, which Vega's "~g" makes of 60 on an axis in steps
# of 20), but a diverged net's 1e129 or a vanishing 2e-9 in short.
PLAIN_LABELS = (
    "abs(datum.value) >= 1e6 || (datum.value != 0 && abs(datum.value) < 1e-4) ? "
    "replace(format(datum.value, '.2~e'), 'e+', 'e') : datum.label"
)


def plain_axis(**options: Any) -> alt.Axis:
    """A linear axis of numbers written plain (PLAIN_LABELS)."""
    return alt.Axis(format="~r", labelExpr=PLAIN_LABELS, **options)


def log_axis(**options: Any) -> alt.Axis:
    """A log y axis labelled at its decades (LOG_LABELS)."""
    return alt.Axis(format="~e", labelExpr=LOG_LABELS, **options)


# A colour legend's labels: as Vega makes them (0.5, 10), but a diverged net's 1e129 as that, not 130 digits.
HUGE_SHORT = "abs(datum.value) >= 1e6 ? replace(format(datum.value, '.2~e'), 'e+', 'e') : datum.label"


def spec_of(chart: alt.TopLevelMixin) -> Spec:
    """The chart as a Vega-Lite spec without data: the page sends data beside it, so the spec never changes
    between refreshes and the browser swaps the data in place instead of drawing the chart anew."""
    spec = chart.to_dict()
    for key in ("data", "datasets", "config"):
        spec.pop(key, None)
    for layer in spec.get("layer", []):
        layer.pop("data", None)  # every layer reads the one dataset sent beside the spec
    return spec


def built_once(build: Callable[Params, Spec]) -> Callable[Params, Spec]:
    """Build each spec once (Altair's validation costs milliseconds), and hand out copies the page may change."""
    cached = lru_cache(maxsize=8)(build)  # so its arguments must be hashable, as every spec builder's are

    @wraps(build)
    def fresh_copy(*args: Params.args, **kwargs: Params.kwargs) -> Spec:
        # The stub wants Hashable keyword values, which a ParamSpec cannot promise.
        return copy.deepcopy(cached(*args, **kwargs))  # type: ignore[arg-type]

    return fresh_copy


def zoom() -> alt.Parameter:
    """The x zoom of a chart over batches, bound to its scales."""
    # A fixed name: a generated one would differ on every refresh and force a redraw.
    return alt.selection_interval(bind="scales", encodings=["x"], name="zoom")


def batch_axis() -> alt.X:
    """The x of every chart over batches: the data's extent exactly (the run's, from its extent rows), whole batches."""
    return alt.X(
        "batch:Q", title="batch", scale=alt.Scale(nice=False, zero=False), axis=alt.Axis(format=",d", tickMinStep=1)
    )


def run_extent() -> alt.Chart:
    """An invisible layer over the extent rows: it stretches the batch axis over the whole run and draws nothing.

    Charts put it first, under their marks, so it never takes their tooltips.
    """
    return alt.Chart().transform_filter("datum.extent === true").mark_rule(opacity=0).encode(x=batch_axis())


# -- a log batch axis ------------------------------------------------------------------------------

LOG_BATCHES_SPAN = 1000  # a run whose latest batch is over this many times its first plotted one (> 0) spans
# decades: on a linear axis its first thousandth, where a fast run learns, would be a vertical line at the left edge
LOG_BATCH_TITLE = "batch (log scale, from batch 1)"  # a log axis has no 0: batch 0 is left out, or drawn at 1
DECADES = [0] + [10**k for k in range(13)]
# 1, 10, 100, 1k, 10k, 1M: each decade by itself (a "~s" format gives every label the largest one's prefix: 0M)
DECADE_LABELS = (
    "datum.value >= 1e6 ? format(datum.value / 1e6, '~g') + 'M' : "
    "datum.value >= 1e3 ? format(datum.value / 1e3, '~g') + 'k' : format(datum.value, '~g')"
)
_FROM_BATCH_1 = "max(datum.{}, 1)"  # where a span or the run's extent starts at batch 0, it starts at 1


def log_batches_by_default(batches: np.ndarray, latest: int) -> bool:
    """Whether a run's charts over batches start on a log batch axis: when its latest batch is over
    LOG_BATCHES_SPAN times the first batch after 0 that it plotted (batches: those plotted)."""
    after_zero = batches[batches > 0]
    return bool(len(after_zero)) and latest > LOG_BATCHES_SPAN * after_zero.min()


def with_batch_scale(spec: Spec, log_batches: bool) -> Spec:
    """A chart over batches on the batch axis chosen: logarithmic (on_log_batches) or as built, linear."""
    return on_log_batches(spec) if log_batches else spec


def on_log_batches(spec: Spec) -> Spec:
    """A chart over batches (a spec from this kit's batch_axis) with its batch axis logarithmic, in place.

    A log axis has no batch 0: marks at a batch before 1 are left out, and what spans batches (the run's
    extent, a heatmap's bins) starts at batch 1 instead of 0. The labels are the decades alone (1, 10, 100,
    1k, ...), one grid line each. Every mark keeps its batch: the tooltips still say it exactly.
    """
    for view in _unit_views(spec):
        encoding = view.get("encoding", {})
        x = encoding.get("x")
        if not isinstance(x, dict) or x.get("field") != "batch":
            continue
        transforms = view.setdefault("transform", [])
        if "x2" in encoding or transforms[:1] == [{"filter": "datum.extent === true"}]:
            for channel in ("x", "x2"):  # spans keep their length, from 1 where they began at 0
                if channel in encoding:
                    field = encoding[channel]["field"]
                    transforms.append({"calculate": _FROM_BATCH_1.format(field), "as": f"{field}_from_1"})
                    encoding[channel]["field"] = f"{field}_from_1"
        else:
            transforms.insert(0, {"filter": "datum.batch >= 1"})
        x["scale"] = {"type": "log", "nice": False}
        x["title"] = LOG_BATCH_TITLE
        x["axis"] = {"values": DECADES, "labelExpr": DECADE_LABELS, "grid": True}
    return spec


def _unit_views(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The single views (those with a mark) in a spec, however it is layered, faceted or concatenated."""
    if "mark" in spec:
        return [spec]
    parts = [*spec.get("layer", []), *spec.get("hconcat", []), *spec.get("vconcat", []), *spec.get("concat", [])]
    if "spec" in spec:
        parts.append(spec["spec"])
    return [view for part in parts for view in _unit_views(part)]
