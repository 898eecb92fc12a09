"""The Layers view: per tensor of any net, over the run, how large it is, how its values spread, how much one step
changes it; and a built-in net's dead relu units. All from the bounded per-report summaries (history.layers,
history.updates, history.dead), so it costs the same for ten parameters or a million.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from nnobs.protocol.schema import SUMMARY
from nnobs.reading.history import RunHistory
from nnobs.reading.series import MinMaxBuckets
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.frames import lines_frame
from nnobs.views.vegalite import Spec, batch_axis, built_once, log_axis, plain_axis, spec_of, zoom

UPDATE_RULE = 1e-3  # the rule of thumb: a step moves a tensor by about a thousandth of its norm
BAND_BINS = 120  # points per tensor in the distribution charts
MAX_BAND_TENSORS = 12  # distribution charts drawn, one per tensor: the first ones (a net's first layers)
BAND_COLUMNS = ("min", "p7", "p16", "p31", "p50", "p69", "p84", "p93", "max")  # from the outside in, the median
# in the middle: TensorBoard's distribution bands


def relu_layers(config: RunConfig | None) -> tuple[str, ...]:
    """A built-in net's layers with relu, by name and width ("L1 (8 units)"), in order: whose dead units are counted."""
    if config is None:
        return ()
    return tuple(
        f"L{k} ({width} units)"
        for k, (width, activation) in enumerate(zip(config.sizes[1:], config.activations), 1)
        if activation == "relu"
    )


def layer_frames(
    history: RunHistory, tensors: tuple[str, ...], relu_layers: tuple[str, ...]
) -> dict[str, pd.DataFrame]:
    """The Layers view's data, by chart: "norm" and "update" (batch, tensor, value), "bands" (batch, tensor and
    BAND_COLUMNS), "dead" (batch, layer, value). A chart without data is left out."""
    frames: dict[str, pd.DataFrame] = {}
    layers, width = history.layers, len(SUMMARY)
    if layers is not None and layers.n and layers.n_columns == width * len(tensors):
        frames["norm"] = lines_frame(layers, [k * width for k in range(len(tensors))], list(tensors), "tensor")
        frames["bands"] = _bands_frame(layers, tensors[:MAX_BAND_TENSORS])
    if history.updates is not None and history.updates.n and history.updates.n_columns == len(tensors):
        frames["update"] = lines_frame(history.updates, list(range(len(tensors))), list(tensors), "tensor")
    if history.dead is not None and history.dead.n and history.dead.n_columns == len(relu_layers):
        frames["dead"] = lines_frame(history.dead, list(range(len(relu_layers))), list(relu_layers), "layer")
    return frames


def _bands_frame(layers: MinMaxBuckets, tensors: tuple[str, ...]) -> pd.DataFrame:
    """Per tensor and bin of reports, the mean of each of its percentiles over the bin (BAND_COLUMNS)."""
    begin, _, means = layers.means(BAND_BINS)
    width, columns = len(SUMMARY), [SUMMARY.index(name) for name in BAND_COLUMNS]
    frame = {
        "batch": np.tile(begin, len(tensors)),
        "tensor": pd.Categorical.from_codes(
            np.repeat(np.arange(len(tensors)), len(begin)), categories=pd.Index(list(tensors), dtype=object)
        ),
    }
    for name, column in zip(BAND_COLUMNS, columns):
        frame[name] = np.concatenate([means[:, k * width + column] for k in range(len(tensors))]) if tensors else []
    return pd.DataFrame(frame)


def _tensor_legend(tensors: tuple[str, ...]) -> alt.Legend:
    return alt.Legend(orient="top", title=None, columns=min(len(tensors), 4), labelLimit=220)


@built_once
def norm_spec(tensors: tuple[str, ...]) -> Spec:
    """Each tensor's norm over the run, a line each."""
    lines = (
        alt.Chart()
        .mark_line(clip=True, strokeWidth=1.5)
        .encode(
            x=batch_axis(),
            y=alt.Y("value:Q", title="norm", scale=alt.Scale(zero=False), axis=plain_axis()),
            color=alt.Color("tensor:N", sort=list(tensors), legend=_tensor_legend(tensors)),
            tooltip=[
                "tensor:N",
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("value:Q", format=".4g", title="norm"),
            ],
        )
        .add_params(zoom())
    )
    return spec_of(lines.properties(title="Weight norm per tensor"))


@built_once
def update_spec(tensors: tuple[str, ...]) -> Spec:
    """Each tensor's update-to-weight ratio per step, on a log axis, with the rule of thumb's 1e-3 as a dashed line."""
    lines = (
        alt.Chart()
        .transform_filter("isValid(datum.value) && datum.value > 0")  # a ratio of 0 has no place on a log axis
        .mark_line(clip=True, strokeWidth=1.5, point=alt.OverlayMarkDef(size=12))
        .encode(
            x=batch_axis(),
            y=alt.Y(
                "value:Q",
                title="|Δw| / |w| in one step",
                scale=alt.Scale(type="log"),
                axis=log_axis(),
            ),
            color=alt.Color("tensor:N", sort=list(tensors), legend=_tensor_legend(tensors)),
            tooltip=[
                "tensor:N",
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("value:Q", format=".3g", title="ratio"),
            ],
        )
        .add_params(zoom())
    )
    rule = alt.Chart().mark_rule(strokeDash=[5, 4], color="#555").encode(y=alt.datum(UPDATE_RULE))
    placed = {
        "x": alt.value(alt.expr("width")),
        "y": alt.datum(UPDATE_RULE),
        "text": alt.datum("1e-3, the rule of thumb"),
    }
    text: dict[str, Any] = {"align": "right", "dx": -4, "dy": -7, "fontSize": 11}
    once = alt.Chart().transform_aggregate(rows="count()")  # one row: a text mark draws once per row of its data
    halo = once.mark_text(fill="white", stroke="white", strokeWidth=5, strokeJoin="round", **text).encode(**placed)
    label = once.mark_text(color="#555", **text).encode(**placed)  # on its halo: readable over the lines
    return spec_of(alt.layer(lines, rule, halo, label).properties(title="Update-to-weight ratio per tensor"))


@built_once
def bands_spec(tensors: tuple[str, ...]) -> Spec:
    """A small chart per tensor: its values' distribution over the run as nested percentile bands around the
    median, darker inward (TensorBoard's distributions): min-max, 7-93 %, 16-84 %, 31-69 %."""
    base = alt.Chart().encode(
        x=alt.X(
            "batch:Q", title="batch", scale=alt.Scale(nice=False, zero=False), axis=alt.Axis(format="~s", tickCount=4)
        )
    )
    bands = [
        base.mark_area(opacity=opacity, color="#1f77b4", clip=True).encode(
            y=alt.Y(f"{low}:Q", title=None, scale=alt.Scale(zero=False), axis=plain_axis()), y2=f"{high}:Q"
        )
        for low, high, opacity in (("min", "max", 0.15), ("p7", "p93", 0.25), ("p16", "p84", 0.35), ("p31", "p69", 0.5))
    ]
    median = base.mark_line(color="#0b3c61", strokeWidth=1.2, clip=True).encode(
        y="p50:Q",
        tooltip=[
            alt.Tooltip("batch:Q", format=","),
            *(alt.Tooltip(f"{name}:Q", format=".3g") for name in BAND_COLUMNS),
        ],
    )
    chart = (
        alt.layer(*bands, median, width=215, height=110, data=alt.InlineData(values=[]))  # a facet needs data: the
        # page's replaces it (spec_of drops this)
        .facet(
            facet=alt.Facet("tensor:N", sort=list(tensors), title=None, header=alt.Header(labelFontSize=12)), columns=3
        )
        .resolve_scale(y="independent")
        .properties(title="Distribution of each tensor's values: min-max, 7-93 %, 16-84 %, 31-69 % and the median")
    )
    return spec_of(chart)


@built_once
def dead_spec(layers: tuple[str, ...], most_units: int) -> Spec:
    """Per relu layer, its units whose output is 0 on every training point; the axis up to the widest layer's units."""
    lines = (
        alt.Chart()
        .mark_line(clip=True, strokeWidth=1.5, interpolate="step-after")
        .encode(
            x=batch_axis(),
            y=alt.Y(
                "value:Q",
                title="dead units",
                scale=alt.Scale(domain=[0, most_units * 1.1], nice=False),
                axis=alt.Axis(format="d", tickMinStep=1),
            ),
            color=alt.Color("layer:N", sort=list(layers), legend=alt.Legend(orient="top", title=None)),
            tooltip=[
                "layer:N",
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("value:Q", format="d", title="dead units"),
            ],
        )
        .add_params(zoom())
    )
    return spec_of(lines.properties(title="Dead relu units (output 0 on every training point)"))
