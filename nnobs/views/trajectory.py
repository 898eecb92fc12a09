"""The Trajectory view: the path the state vector took, projected onto its two principal directions.

The reported states (the archive's spread of them) are centred on their mean and projected onto the
two directions along which they vary most (PCA by SVD). A run that moved along one direction draws a
line; one that turned draws the turn; the share of the variance each direction explains says how much of
the path the picture holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd

from nnobs.views.vegalite import DECADE_LABELS, DECADES, Spec, built_once, log_axis, plain_axis, spec_of


@dataclass
class Projection:
    batches: np.ndarray  # (n,) the states' batches
    coordinates: np.ndarray  # (n, 2) along the first and second principal directions
    explained: tuple[float, float]  # the share of the states' variance along each


def principal_path(batches: np.ndarray, vectors: np.ndarray) -> Projection | None:
    """The states (n, width) projected onto their first two principal directions; None for fewer than 2 states
    or states with anything but numbers."""
    finite = np.isfinite(vectors).all(axis=1)
    batches, vectors = batches[finite], vectors[finite]
    if len(vectors) < 2:
        return None
    centred = vectors - vectors.mean(axis=0)
    # The principal directions from the smaller of the two Gram matrices (states by states, or parameters by
    # parameters): an eigendecomposition of that costs far less than an SVD of the states themselves.
    if centred.shape[0] < centred.shape[1]:
        variance, mixes = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(variance)[::-1][:2]
        coordinates = mixes[:, order] * np.sqrt(np.clip(variance[order], 0, None))
    else:
        variance, directions = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(variance)[::-1][:2]
        coordinates = centred @ directions[:, order]
    # Each direction's sign is chosen so the path starts on the negative side: the same run draws the same way.
    coordinates = coordinates * np.where(coordinates[0] > 0, -1.0, 1.0)
    if coordinates.shape[1] < 2:
        coordinates = np.column_stack((coordinates, np.zeros(len(coordinates))))
    variance = np.clip(variance, 0, None)
    total = variance.sum()
    shares = np.sort(variance)[::-1][:2] / total if total > 0 else np.zeros(2)
    return Projection(batches, coordinates, (float(shares[0]), float(shares[1]) if len(shares) > 1 else 0.0))


def losses_at(batches: np.ndarray, loss_batches: np.ndarray, loss_values: np.ndarray) -> np.ndarray:
    """The loss reported at each of batches (the nearest report at or before it); NaN without any."""
    if not len(loss_batches):
        return np.full(len(batches), np.nan)
    at = np.clip(np.searchsorted(loss_batches, batches, side="right") - 1, 0, len(loss_batches) - 1)
    return loss_values[at].copy()


def path_frame(projection: Projection, losses: np.ndarray, marked: int | None) -> pd.DataFrame:
    """The path's points (batch, pc1, pc2, order, loss), marked true at the state shown: the one replayed at or
    before marked, else the newest."""
    batches = projection.batches
    at = len(batches) - 1 if marked is None else max(0, int(np.searchsorted(batches, marked, side="right")) - 1)
    return pd.DataFrame(
        {
            "batch": batches,
            "pc1": projection.coordinates[:, 0],
            "pc2": projection.coordinates[:, 1],
            "order": np.arange(len(batches)),
            "loss": losses,
            "marked": np.arange(len(batches)) == at,
        }
    )


def path_spec(explained: tuple[float, float], batches: tuple[int, int]) -> Spec:
    """The path as a line through the states in order, each point coloured by its batch (symlog: the early, fast
    part of learning gets its share of colour), its loss in the tooltip, the replayed state ringed; the axes say
    how much of the variance each direction holds, the colour legend the decades within the path's batches
    (first, last): Vega draws a legend's values beyond its scale's domain too."""
    spec = _path_spec()
    first, second = (f"{share:.0%}" for share in explained)
    for layer in spec["layer"]:
        layer["encoding"]["x"]["title"] = f"first principal direction ({first} of the variance)"
        layer["encoding"]["y"]["title"] = f"second ({second})"
        if "color" in layer["encoding"]:
            layer["encoding"]["color"]["legend"]["values"] = [d for d in DECADES if batches[0] <= d <= batches[1]]
    return spec


@built_once
def _path_spec() -> Spec:
    x = alt.X("pc1:Q", scale=alt.Scale(zero=False), axis=plain_axis())
    y = alt.Y("pc2:Q", scale=alt.Scale(zero=False), axis=plain_axis())
    path = alt.Chart().mark_line(color="#999", strokeWidth=1).encode(x=x, y=y, order="order:Q")
    points = (
        alt.Chart()
        .mark_circle(size=28, opacity=0.9)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "batch:Q",
                scale=alt.Scale(type="symlog", scheme="viridis"),
                title="batch",
                legend=alt.Legend(labelExpr=DECADE_LABELS),
            ),  # the decades as values (path_spec): on
            # a symlog scale Vega's own picks (500,000, 1,500,000) bunch up at its top
            tooltip=[
                alt.Tooltip("batch:Q", format=","),
                alt.Tooltip("loss:Q", format=".4g"),
                alt.Tooltip("pc1:Q", format=".3g"),
                alt.Tooltip("pc2:Q", format=".3g"),
            ],
        )
    )
    marked = (
        alt.Chart()
        .transform_filter("datum.marked")
        .mark_point(size=220, stroke="#d62728", strokeWidth=2.5)
        .encode(x=x, y=y)
    )
    return spec_of(alt.layer(path, points, marked).properties(title="Path through parameter space", height=380))


@built_once
def loss_along_spec() -> Spec:
    """The loss at each state of the path, over its batches: where along the path the loss fell."""
    chart = (
        alt.Chart()
        .transform_filter("datum.loss > 0")
        .mark_line(point=alt.OverlayMarkDef(size=14), strokeWidth=1.2)
        .encode(
            x=alt.X(
                "batch:Q",
                title="batch (symlog)",
                scale=alt.Scale(type="symlog", nice=False),
                axis=alt.Axis(values=[0, *DECADES[2:]], labelExpr=DECADE_LABELS),  # not 1: beside 0 on symlog
            ),  # the decades
            # Vega would not pick; tickCount: a grid line a decade, not the nine of each that band together
            y=alt.Y(
                "loss:Q",
                title="loss",
                scale=alt.Scale(type="log"),
                axis=log_axis(tickCount=3),
            ),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("loss:Q", format=".4g")],
        )
    )
    return spec_of(chart.properties(title="Loss at each state of the path", height=200))
