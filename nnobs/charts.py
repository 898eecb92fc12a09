"""Chart data from a run's history, bounded in size, and Vega-Lite specs that stay the same between refreshes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import lru_cache, wraps

import altair as alt
import numpy as np
import pandas as pd

from nnobs.history import RunHistory

MAX_SV_LINES = 64  # parameters drawn as lines; the heatmap shows up to history.SV_KEPT
HEATMAP_COLUMNS = 100  # batch bins across the heatmap


def loss_frame(history: RunHistory) -> pd.DataFrame:
    """The loss chart's points: first, last, and each bucket's min and max (at most history's max_points)."""
    batches, losses = history.loss_buckets.points(0)
    return pd.DataFrame({"batch": batches, "loss": losses})


def sv_frames(history: RunHistory, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-form frames for the parameter lines and the heatmap, bounded however long the run.

    Lines: the first MAX_SV_LINES parameters, each bucket's min and max. Heatmap: the mean of
    each kept parameter over at most HEATMAP_COLUMNS batch bins.
    """
    buckets = history.sv_buckets
    if buckets is None or buckets.n == 0:
        return pd.DataFrame(columns=["batch", "parameter", "value"]), pd.DataFrame(
            columns=["batch", "batch_end", "parameter", "value"]
        )
    lines = []
    for j in range(min(buckets.n_columns, MAX_SV_LINES)):
        batches, values = buckets.points(j)
        lines.append(pd.DataFrame({"batch": batches, "parameter": names[j], "value": values}))
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
    return pd.concat(lines, ignore_index=True), heat


def _spec(chart: alt.Chart) -> dict:
    """The chart as a Vega-Lite spec without data: the page sends data beside it, so the spec never changes
    between refreshes and the browser swaps the data in place instead of drawing the chart anew."""
    spec = chart.to_dict()
    for key in ("data", "datasets", "config"):
        spec.pop(key, None)
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
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    return _spec(
        alt.Chart(title="Loss")
        .mark_line()
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("loss:Q", title="loss" + (" (log)" if log_scale else ""), scale=scale),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("loss:Q", format=".4g")],
        )
        .transform_filter("datum.loss > 0" if log_scale else "isValid(datum.loss)")  # a log axis has no zero
        .add_params(_zoom())
        .properties(height=300)
    )


@_built_once
def sv_lines_spec(names: tuple[str, ...]) -> dict:
    return _spec(
        alt.Chart(title="State vector: each parameter")
        .mark_line()
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("value:Q", title="value"),
            color=alt.Color(
                "parameter:N",
                sort=list(names),
                legend=alt.Legend(columns=1 if len(names) <= 16 else 2, symbolLimit=32),
            ),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .add_params(_zoom())
        .properties(height=max(240, 14 * min(len(names), 80)))
    )


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
