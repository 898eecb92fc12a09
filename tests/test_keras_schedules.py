"""Schedules obey eta in Keras: eta is the base a Keras schedule scales, and a new eta moves every rate of the schedule,
which goes on from where it is; a plain learning rate is set as it is."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras", reason="the Keras tests need the test extra's Keras")

from nnobs.training.integrations.keras import KerasRates  # noqa: E402

BASE, NEW = 0.1, 0.03
schedules = keras.optimizers.schedules
KINDS = {
    "cosine with warmup": lambda base: schedules.CosineDecay(0.0, decay_steps=100, warmup_target=base, warmup_steps=10),
    "cosine": lambda base: schedules.CosineDecay(base, decay_steps=100, alpha=0.1),
    "exponential": lambda base: schedules.ExponentialDecay(base, decay_steps=10, decay_rate=0.5),
    "polynomial": lambda base: schedules.PolynomialDecay(base, decay_steps=100, end_learning_rate=base / 10),
    "inverse time": lambda base: schedules.InverseTimeDecay(base, decay_steps=10, decay_rate=0.5),
    "piecewise": lambda base: schedules.PiecewiseConstantDecay([20, 40], [base, base / 2, base / 4]),
    "constant": lambda base: base,
}


def rate_at(optimizer, step: int) -> float:
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_eta_moves_the_keras_schedules_base_and_it_goes_on_from_where_it_is(kind):
    steered = keras.optimizers.SGD(learning_rate=KINDS[kind](BASE))
    reference = keras.optimizers.SGD(learning_rate=KINDS[kind](NEW))  # the same schedule made with the new base
    for optimizer in (steered, reference):
        optimizer.build([keras.Variable([1.0])])
    rates = KerasRates(steered)
    assert rates.eta == pytest.approx(BASE)
    rate_at(steered, 25)
    rates.eta = NEW
    assert rates.eta == pytest.approx(NEW)
    for step in range(25, 75):
        assert rate_at(steered, step) == pytest.approx(rate_at(reference, step), rel=1e-5), f"{kind} at step {step}"
    assert rates.lr_in_use == pytest.approx(rate_at(reference, 74), rel=1e-5)
