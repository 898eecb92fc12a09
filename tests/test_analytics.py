"""Trajectory analytics and the decision surface, checked against direct computation."""

from __future__ import annotations

import numpy as np

from nnobs.views.surface import GRID, decision_surface
from nnobs.reading.steps import steps
from nnobs.reading.history import RunHistory
from nnobs.training.builtin.tasks import RunConfig, build


def test_steps_read_in_pieces_equal_steps_read_whole():
    rows = np.random.default_rng(0).normal(size=(10, 4))
    whole = steps(None, rows)
    pieces = [steps(None, rows[:3]), steps(rows[1:3], rows[3:7]), steps(rows[5:7], rows[7:])]
    for i in range(2):
        np.testing.assert_allclose(np.concatenate([p[i] for p in pieces]), whole[i], equal_nan=True)


def test_step_length_and_cosine_are_what_their_definitions_say():
    rows = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [2.0, 2.0]])
    lengths, cosines = steps(None, rows)
    np.testing.assert_allclose(lengths, [np.nan, 1, 2, 1, 2], equal_nan=True)
    np.testing.assert_allclose(cosines, [np.nan, np.nan, 1, -1, 0], equal_nan=True)  # on, back, turned


def test_history_keeps_steps_of_every_state_report():
    rows = np.random.default_rng(1).normal(size=(50, 9))
    history = RunHistory()
    history.add([{"sv": [i * 10, row.tolist()]} for i, row in enumerate(rows)])
    batches, lengths = history.step_buckets.points(0)
    np.testing.assert_allclose(lengths, steps(None, rows)[0], equal_nan=True)
    assert batches.tolist() == list(range(0, 500, 10))


def test_decision_surface_of_a_trained_xor_net_separates_the_corners():
    config = RunConfig()
    net, next_batch = build(config)
    for _ in range(20_000):
        net.learn_one(*next_batch())
    x1, x2, output = decision_surface(config, net.state_vector(), extent=0.5)
    assert len(output) == GRID * GRID
    corner = {(a, b): output[(x1 == a) & (x2 == b)][0] for a in (-0.5, 0.5) for b in (-0.5, 0.5)}
    assert corner[(-0.5, -0.5)] < 0 and corner[(0.5, 0.5)] < 0 and corner[(-0.5, 0.5)] > 0 and corner[(0.5, -0.5)] > 0
