"""A small Vega-Lite kit: specs without data, built once, over a batch axis that spans the run and zooms."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any, ParamSpec

import altair as alt

Spec = dict[str, Any]  # a Vega-Lite spec as JSON: what st.vega_lite_chart takes beside the data
Params = ParamSpec("Params")

LOG_LABELS = "replace(datum.label, 'e+', 'e')"  # 1e-2, 1e0, 1e3: one style over any number of decades
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
