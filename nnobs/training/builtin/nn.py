"""Small numpy neural nets: layers that learn by backprop, chained by a Network."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

Array = np.ndarray
Fact = tuple[Array, Array]  # (x of shape (rows, n_in), ideal of shape (rows, n_out))


class Layer:
    """One stage of a network; the base passes nothing on and learns nothing."""

    n_params = 0

    def __call__(self, x: Array) -> Array:
        raise NotImplementedError

    def backprop(self, grad: Array) -> Array:
        """Take the (eta-scaled) gradient at the output, learn from it, return the gradient at the input."""
        raise NotImplementedError

    def update(self, grad: Array) -> None:
        """Learn from grad like backprop, for a first layer, whose input gradient nobody needs."""
        self.backprop(grad)

    def state_vector(self) -> Array:
        return np.empty(0)

    def set_state_from_vector(self, sv: Array) -> None:
        if len(sv) != self.n_params:  # a check, not an assert: the vector may come from a file
            raise ValueError(f"{type(self).__name__} has {self.n_params} parameters, not {len(sv)}")


class IdentityLayer(Layer):
    """Passes values and gradients through unchanged."""

    def __call__(self, x: Array) -> Array:
        return x

    def backprop(self, grad: Array) -> Array:
        return grad


class AffineLayer(Layer):
    """x @ W + b, with W of shape (n, m) and b of shape (m,), drawn from a standard normal."""

    def __init__(self, n: int, m: int, rng: np.random.RandomState | np.random.Generator | None = None):
        rng = np.random.RandomState() if rng is None else rng
        w = rng.standard_normal((n, m))
        b = rng.standard_normal(m)
        # W and b live in one (n + 1, m) array: one matmul does x @ W + b on an input with a column of
        # ones, one outer product updates both, and its rows are already the state-vector order.
        self._wb = np.vstack((w, b))
        self.W = self._wb[:n]  # (n, m) view
        self.b = self._wb[n]  # (m,) view
        self.n_params = (n + 1) * m
        self._x1: Array = np.ones((0, n + 1))  # (rows, n + 1): the last input, then ones; reused while rows holds

    def __call__(self, x: Array) -> Array:
        if len(self._x1) != len(x):
            self._x1 = np.ones((len(x), len(self._wb)))
        self._x1[:, :-1] = x
        return self._x1.dot(self._wb)  # .dot, not @: a third of the call overhead on small arrays

    def backprop(self, grad: Array) -> Array:
        grad_in = grad.dot(self.W.T)  # taken before W moves: it is the gradient of this forward pass
        self._wb -= self._x1.T.dot(grad)
        return grad_in

    def update(self, grad: Array) -> None:
        self._wb -= self._x1.T.dot(grad)

    def state_vector(self) -> Array:
        return self._wb.ravel().copy()

    def set_state_from_vector(self, sv: Array) -> None:
        super().set_state_from_vector(sv)
        self._wb[...] = np.reshape(sv, self._wb.shape)


def elementwise(fun: Callable) -> Callable[[Array], Array]:
    """Return fun itself when it maps arrays element-wise (ufuncs, numpy expressions), else np.vectorize(fun)."""
    if isinstance(fun, np.ufunc):
        return fun
    probe = np.array([0.25, -0.5])
    try:
        out = fun(probe)
    except (TypeError, ValueError):  # math.tanh and friends refuse arrays; `if x > 0` is ambiguous on one
        return np.vectorize(fun, otypes=[float])
    if isinstance(out, np.ndarray) and out.shape == probe.shape:
        return fun
    return np.vectorize(fun, otypes=[float])


class MapLayer(Layer):
    """Applies fun element-wise; dfun is its derivative with respect to the layer input."""

    def __init__(self, fun: Callable, dfun: Callable):
        self.fun = elementwise(fun)
        self.dfun = elementwise(dfun)
        self._x: Array = np.empty(0)  # the last input; none before a forward pass

    def __call__(self, x: Array) -> Array:
        self._x = x
        return self.fun(x)

    def backprop(self, grad: Array) -> Array:
        return grad * self.dfun(self._x)


class TanhLayer(Layer):
    """tanh, whose derivative 1 - tanh(x)**2 reuses the forward output instead of recomputing it."""

    def __init__(self) -> None:
        self._y: Array = np.empty(0)  # the last output; none before a forward pass

    def __call__(self, x: Array) -> Array:
        self._y = np.tanh(x)
        return self._y

    def backprop(self, grad: Array) -> Array:
        y = self._y
        return grad * (1.0 - y * y)


class ReluLayer(Layer):
    """max(x, 0), whose derivative is read off the forward output: 1 where it is positive, else 0."""

    def __init__(self) -> None:
        self._y: Array = np.empty(0)  # the last output; none before a forward pass

    def __call__(self, x: Array) -> Array:
        self._y = np.maximum(x, 0.0)
        return self._y

    def backprop(self, grad: Array) -> Array:
        return grad * (self._y > 0.0)


class SigmoidLayer(Layer):
    """1 / (1 + exp(-x)), whose derivative y * (1 - y) reuses the forward output."""

    def __init__(self) -> None:
        self._y: Array = np.empty(0)  # the last output; none before a forward pass

    def __call__(self, x: Array) -> Array:
        self._y = 0.5 + 0.5 * np.tanh(0.5 * x)  # the same function, without exp's overflow for large -x
        return self._y

    def backprop(self, grad: Array) -> Array:
        y = self._y
        return grad * (y * (1.0 - y))


class SinLayer(Layer):
    """sin, whose derivative cos cannot be had from the output alone (its sign is lost): the input is kept."""

    def __init__(self) -> None:
        self._x: Array = np.empty(0)  # the last input; none before a forward pass

    def __call__(self, x: Array) -> Array:
        self._x = x
        return np.sin(x)

    def backprop(self, grad: Array) -> Array:
        return grad * np.cos(self._x)


class Network:
    """Layers applied in order, trained by gradient descent on the half mean squared error."""

    def __init__(self, eta: float = 0.1):
        self.layers: list[Layer] = []
        self.eta = eta

    def extend(self, layer: Layer) -> Network:
        self.layers.append(layer)
        return self

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x

    def learn_one(self, x: Array, ideal: Array) -> float:
        """Train on one batch; return its loss before the update."""
        err = self(x) - ideal  # (rows, n_out)
        rows = len(x)
        grad = err * (self.eta / rows)
        for layer in self.layers[:0:-1]:
            grad = layer.backprop(grad)
        if self.layers:
            self.layers[0].update(grad)  # the first layer's input gradient would go nowhere
        return float(np.vdot(err, err)) / (2 * rows)

    def learn(self, facts: Iterable[Fact]) -> float | None:
        """Train on each (x, ideal) batch in turn; return the loss of the last one."""
        loss = None
        for x, ideal in facts:
            loss = self.learn_one(x, ideal)
        return loss

    def losses(self, facts: Iterable[Fact]) -> list[float]:
        """The loss of each batch, without learning."""
        out = []
        for x, ideal in facts:
            err = self(x) - ideal
            out.append(float(np.vdot(err, err)) / (2 * len(x)))
        return out

    def state_vector(self) -> Array:
        """All learnable parameters, layer by layer, as one flat vector."""
        parts = [layer.state_vector() for layer in self.layers]
        return np.concatenate(parts) if parts else np.empty(0)

    def set_state_from_vector(self, sv: Array) -> None:
        sv = np.asarray(sv, dtype=float)
        n_total = sum(layer.n_params for layer in self.layers)
        if sv.shape != (n_total,):
            raise ValueError(f"the state vector has {sv.size} values, the network {n_total} parameters")
        start = 0
        for layer in self.layers:
            layer.set_state_from_vector(sv[start : start + layer.n_params])
            start += layer.n_params
