"""The steps between successive state vectors: how far each one moved, and whether it turned."""

from __future__ import annotations

import numpy as np


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
