"""The decision surface: what a 2-input built-in net computes over its task's input square, drawn as a picture."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import pandas as pd

from nnobs.training.builtin.tasks import TASKS, RunConfig, build_network

PICTURE_MAX = 1e30  # pictures are sent as float32, whose range ends at 3.4e38


Picture = TypeVar("Picture", np.ndarray, pd.DataFrame)


def as_picture(values: Picture) -> Picture:
    """Values (an array or a frame) as float32, clipped into its range: a diverged net's outputs and weights
    overflow it, and are drawn as full colour rather than infinities that break the colour scale. NaN stays NaN."""
    return values.clip(-PICTURE_MAX, PICTURE_MAX).astype(np.float32)


GRID = 41  # points along each input axis of the decision surface
EXTENT = 1.0  # the square every built-in task's points lie in, [-EXTENT, EXTENT] on both inputs: the charts' axes


def decision_surface(
    config: RunConfig, sv: np.ndarray, extent: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The net's output over the input square [-extent, extent]^2 (by default the task's: where its points lie), for
    nets with 2 inputs (and the first output).

    Returns x1 (GRID*GRID,), x2 (GRID*GRID,) and output (GRID*GRID,).
    """
    if config.sizes[0] != 2:
        raise ValueError(f"a decision surface needs 2 inputs, this net has {config.sizes[0]}")
    extent = TASKS[config.task].extent if extent is None else extent
    net = build_network(config)
    net.set_state_from_vector(sv)
    axis = np.linspace(-extent, extent, GRID)
    x1, x2 = (a.ravel() for a in np.meshgrid(axis, axis))
    output = net(np.column_stack((x1, x2)))[:, 0]  # (GRID*GRID,)
    return x1, x2, output
