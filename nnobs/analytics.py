"""What a run's state vectors say: how far each step moved, whether it turned, and what the net now computes."""

from __future__ import annotations

import numpy as np

from nnobs.tasks import TASKS, RunConfig, build_network


PICTURE_MAX = 1e30  # pictures are sent as float32, whose range ends at 3.4e38


def as_picture(values):
    """Values (an array or a frame) as float32, clipped into its range: a diverged net's outputs and weights
    overflow it, and are drawn as full colour rather than infinities that break the colour scale. NaN stays NaN."""
    return values.clip(-PICTURE_MAX, PICTURE_MAX).astype(np.float32)


def steps(previous: np.ndarray | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Length of each step between successive state vectors, and the cosine between successive steps.

    previous holds the last two vectors seen before rows (0, 1 or 2 of them), so a run read in
    pieces gives the same figures as one read whole. rows is (k, n_params); both results are (k,),
    NaN where there is no step (or no earlier step) yet. A cosine near 1 is steady progress, near -1
    oscillation; lengths falling to 0 are a stall or convergence.
    """
    path = rows if previous is None else np.vstack((previous, rows))
    k = len(rows)
    moves = np.diff(path, axis=0)  # (len(path) - 1, n_params)
    lengths = np.linalg.norm(moves, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.einsum("ij,ij->i", moves[1:], moves[:-1]) / (lengths[1:] * lengths[:-1])
    length_out = np.full(k, np.nan)
    cosine_out = np.full(k, np.nan)
    for out, found in ((length_out, lengths), (cosine_out, cosines)):
        n = min(k, len(found))  # the newest n figures belong to the newest n rows
        if n:
            out[k - n :] = found[len(found) - n :]
    return length_out, cosine_out


GRID = 41  # points along each input axis of the decision surface
EXTENT = 1.0  # the square every built-in task's points lie in, [-EXTENT, EXTENT] on both inputs: the charts' axes


def decision_surface(config: RunConfig, sv: np.ndarray, extent: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
