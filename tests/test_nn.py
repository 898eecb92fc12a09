"""nnobs.training.builtin.nn against finite differences, and the default XOR net against the seed notebook's own run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import seed_sv_at
from nnobs.training.builtin.nn import (
    AffineLayer,
    IdentityLayer,
    MapLayer,
    Network,
    ReluLayer,
    SigmoidLayer,
    SinLayer,
    TanhLayer,
    elementwise,
)
from nnobs.training.builtin.tasks import RunConfig, build, build_network

H = 1e-6  # central-difference step


def numerical_gradient(f, v: np.ndarray) -> np.ndarray:
    """d f / d v by central differences, one coordinate at a time."""
    grad = np.zeros_like(v)
    for i in range(v.size):
        up, down = v.copy(), v.copy()
        up.flat[i] += H
        down.flat[i] -= H
        grad.flat[i] = (f(up) - f(down)) / (2 * H)
    return grad


def loss_of_state(net: Network, x: np.ndarray, ideal: np.ndarray):
    def loss(sv: np.ndarray) -> float:
        net.set_state_from_vector(sv)
        return net.losses([(x, ideal)])[0]

    return loss


def input_gradient(net: Network, x: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """Backprop as learn_one does it (error scaled by eta / rows), returning the gradient at the input."""
    grad = (net(x) - ideal) * (net.eta / len(x))
    for layer in reversed(net.layers):
        grad = layer.backprop(grad)
    return grad


def d_tanh(x):
    return 1.0 - np.tanh(x) ** 2


def d_math_tanh(x: float) -> float:
    return 1.0 - math.tanh(x) ** 2


# Each case is a network whose last layers are the one under test; an affine layer in front
# makes the layer's backprop decide the parameter update too.
CASES = {
    "affine": lambda rng: [AffineLayer(2, 3, rng)],
    "map-numpy-tanh": lambda rng: [AffineLayer(2, 3, rng), MapLayer(np.tanh, d_tanh)],
    "map-math-tanh": lambda rng: [AffineLayer(2, 3, rng), MapLayer(math.tanh, d_math_tanh)],
    "tanh": lambda rng: [AffineLayer(2, 3, rng), TanhLayer()],
    "identity": lambda rng: [AffineLayer(2, 3, rng), IdentityLayer()],
    "relu": lambda rng: [AffineLayer(2, 3, rng), ReluLayer()],
    "sigmoid": lambda rng: [AffineLayer(2, 3, rng), SigmoidLayer()],
    "sin": lambda rng: [AffineLayer(2, 3, rng), SinLayer()],
    "network-relu-sin-sigmoid": lambda rng: [AffineLayer(2, 4, rng), ReluLayer(), AffineLayer(4, 3, rng), SinLayer(),
                                             AffineLayer(3, 1, rng), SigmoidLayer()],
    "network-2-3-2": lambda rng: [AffineLayer(2, 3, rng), TanhLayer(), AffineLayer(3, 2, rng), TanhLayer()],
}


def network_of(layers) -> Network:
    net = Network(eta=0.3)
    for layer in layers:
        net.extend(layer)
    return net


@pytest.mark.parametrize("case", CASES)
def test_learn_one_steps_parameters_by_eta_times_the_loss_gradient(case):
    rng = np.random.RandomState(5)
    net = network_of(CASES[case](rng))
    x = rng.uniform(-1, 1, (4, 2))  # (rows, n_in)
    ideal = rng.uniform(-0.5, 0.5, net(x).shape)  # (rows, n_out)
    sv = net.state_vector()
    expected_step = net.eta * numerical_gradient(loss_of_state(net, x, ideal), sv)
    net.set_state_from_vector(sv)

    net.learn_one(x, ideal)

    np.testing.assert_allclose(sv - net.state_vector(), expected_step, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("case", [*CASES, "map-alone", "tanh-alone", "identity-alone", "relu-alone", "sigmoid-alone",
                                  "sin-alone"])
def test_backprop_returns_eta_times_the_loss_gradient_at_the_input(case):
    rng = np.random.RandomState(6)
    alone = {
        "map-alone": lambda rng: [MapLayer(math.tanh, d_math_tanh)],
        "tanh-alone": lambda rng: [TanhLayer()],
        "identity-alone": lambda rng: [IdentityLayer()],
        "relu-alone": lambda rng: [ReluLayer()],
        "sigmoid-alone": lambda rng: [SigmoidLayer()],
        "sin-alone": lambda rng: [SinLayer()],
    }
    net = network_of({**CASES, **alone}[case](rng))
    x = rng.uniform(-1, 1, (4, 2))
    ideal = rng.uniform(-0.5, 0.5, net(x).shape)
    expected = net.eta * numerical_gradient(lambda v: net.losses([(v, ideal)])[0], x)

    np.testing.assert_allclose(input_gradient(net, x, ideal), expected, rtol=1e-6, atol=1e-10)


def test_learn_one_returns_the_loss_before_the_update():
    net = build_network(RunConfig(sizes=[2, 3, 1]))
    x, ideal = np.array([[0.5, -0.5], [0.1, 0.2]]), np.array([[0.3], [-0.2]])
    err = net(x) - ideal
    assert net.learn_one(x, ideal) == pytest.approx(float((err**2).sum()) / (2 * len(x)), rel=1e-15)


def test_state_vector_round_trips_through_set_state_from_vector():
    net = build_network(RunConfig(sizes=[2, 3, 2, 1], seed=3))
    sv = np.arange(net.state_vector().size, dtype=float)
    net.set_state_from_vector(sv)
    np.testing.assert_array_equal(net.state_vector(), sv)
    affine = net.layers[0]
    np.testing.assert_array_equal(affine.W, sv[:6].reshape(2, 3))  # W row-major, then b
    np.testing.assert_array_equal(affine.b, sv[6:9])


def test_same_seed_gives_identical_state_and_identical_training():
    config = RunConfig(sizes=[2, 3, 1], seed=7)
    (net_a, batches), (net_b, _) = build(config), build(config)
    np.testing.assert_array_equal(net_a.state_vector(), net_b.state_vector())
    losses_a = [net_a.learn_one(*batches()) for _ in range(50)]
    losses_b = [net_b.learn_one(*batches()) for _ in range(50)]
    assert losses_a == losses_b
    np.testing.assert_array_equal(net_a.state_vector(), net_b.state_vector())


def test_different_seeds_give_different_states():
    a = build_network(RunConfig(seed=1)).state_vector()
    b = build_network(RunConfig(seed=2)).state_vector()
    assert not np.array_equal(a, b)


def test_elementwise_returns_ufuncs_and_array_functions_unchanged():
    relu = lambda x: np.maximum(x, 0.0)  # noqa: E731
    assert elementwise(np.tanh) is np.tanh
    assert elementwise(relu) is relu


@pytest.mark.parametrize(
    "scalar_fun, expected",
    [
        (math.tanh, np.tanh),
        (lambda x: x if x > 0 else 0.0, lambda x: np.maximum(x, 0.0)),  # `if` on an array is ambiguous
        (lambda x: 1.0, np.ones_like),  # a constant ignores its argument's shape
    ],
    ids=["math.tanh", "scalar-if", "constant"],
)
def test_elementwise_wraps_scalar_functions_to_map_arrays(scalar_fun, expected):
    x = np.array([[-1.5, 0.0], [0.25, 2.0]])
    wrapped = elementwise(scalar_fun)
    assert isinstance(wrapped, np.vectorize)
    np.testing.assert_allclose(wrapped(x), expected(x), rtol=1e-15)


def test_default_xor_net_starts_from_the_seed_notebooks_state(seed_records):
    net, _ = build(RunConfig())
    np.testing.assert_array_equal(net.state_vector(), seed_sv_at(seed_records, 0))


def test_default_xor_net_first_loss_is_the_seed_notebooks(seed_records):
    net, batches = build(RunConfig())
    first_loss = next(r["loss"] for r in seed_records if "loss" in r)
    assert first_loss[0] == 1
    assert net.learn_one(*batches()) == pytest.approx(first_loss[1], rel=1e-12)


def test_default_xor_net_trains_like_the_seed_notebook_for_100_batches(seed_records):
    net, batches = build(RunConfig())
    assert net.eta == 0.1
    for _ in range(100):
        net.learn_one(*batches())
    np.testing.assert_allclose(net.state_vector(), seed_sv_at(seed_records, 100), rtol=0, atol=1e-12)


def test_sigmoid_is_the_logistic_function_and_stays_finite_far_out():
    x = np.array([-800.0, -3.0, 0.0, 2.5, 800.0])
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(SigmoidLayer()(x), 1 / (1 + np.exp(-x)), rtol=1e-15, atol=1e-300)
    assert np.isfinite(SigmoidLayer()(x)).all()
