"""What a run trains: its configuration, and the built-in tasks that turn one into a net, its points and its batches."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from nnobs.protocol.commands import DEFAULT_MIN_FREE_MB, MAX_SEED, check_command, check_eta_schedule, parse_eta_schedule
from nnobs.protocol.errors import CommandError, NnobsError
from nnobs.protocol.files import SETTINGS_MOST_BYTES, read_text
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_finite
from nnobs.protocol.schema import Tensors, all_parameter_names
from nnobs.training.builtin.netspec import MAX_WIDTH, NetSpecError, format_net, parse_net
from nnobs.training.builtin.nn import (
    AffineLayer,
    Array,
    Fact,
    IdentityLayer,
    Layer,
    Network,
    ReluLayer,
    SigmoidLayer,
    SinLayer,
    TanhLayer,
)
from nnobs.training.builtin.sampler import Sampler

__all__ = [
    "ACTIVATIONS",
    "MAX_WIDTH",
    "TASKS",
    "Dataset",
    "RunConfig",
    "Task",
    "build",
    "build_network",
    "dataset",
    "describe_task",
    "load_config",
    "parameter_names",
    "task_names",
    "tensors",
    "training_rows",
]

# Activations are named from this table; nothing read from disk is ever evaluated.
ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "tanh": TanhLayer,
    "relu": ReluLayer,
    "sigmoid": SigmoidLayer,
    "sin": SinLayer,
    "identity": IdentityLayer,
}

MAX_NOISE = 0.5  # Playground's 50 %
TRAIN_SHARE = (0.1, 0.9)  # Playground's 10 to 90 %: both sets keep points
SCALE = 1 / 6  # Playground draws its points in [-6, 6]; here they lie in [-1, 1], the notebook's scale
LABEL = 0.5  # class labels are ±0.5, as the notebook's XOR targets: a tanh output reaches them without saturating
DATA_STREAM, SAMPLER_STREAM = 0, 1  # the seed's two random streams besides the net's own: the points, the batches


# -- the tasks' points ------------------------------------------------------------------------
# Each draws (x (n, n_in), ideal (n, 1)) from rng, as TensorFlow Playground's dataset.ts does, scaled by SCALE.


def _circle(rng: np.random.Generator, n: int, noise: float) -> Fact:
    radius = 5 * SCALE
    half = n // 2
    r = np.concatenate((rng.uniform(0, 0.5 * radius, half), rng.uniform(0.7 * radius, radius, n - half)))
    angle = rng.uniform(0, 2 * np.pi, n)
    x = np.column_stack((r * np.sin(angle), r * np.cos(angle)))
    jitter = rng.uniform(-radius, radius, (n, 2)) * noise  # labels of the moved point: noise blurs the border
    inside = np.hypot(*(x + jitter).T) < 0.5 * radius
    return x, np.where(inside, LABEL, -LABEL)[:, None]


def _noisy_xor(rng: np.random.Generator, n: int, noise: float) -> Fact:
    x = rng.uniform(-5 * SCALE, 5 * SCALE, (n, 2))
    x += np.where(x > 0, 0.3 * SCALE, -0.3 * SCALE)  # a gap along the axes, as Playground's
    jitter = rng.uniform(-5 * SCALE, 5 * SCALE, (n, 2)) * noise
    agree = (x + jitter).prod(axis=1) >= 0
    return x, np.where(agree, -LABEL, LABEL)[:, None]  # the notebook's sign: -0.5 where the signs agree


def _gauss(rng: np.random.Generator, n: int, noise: float) -> Fact:
    spread = math.sqrt(0.5 + 7 * noise) * SCALE  # Playground's variance, 0.5 to 4 as noise goes from 0 to 0.5
    half = n // 2
    centres = np.repeat([[2 * SCALE, 2 * SCALE], [-2 * SCALE, -2 * SCALE]], [half, n - half], axis=0)
    x = rng.normal(centres, spread)
    return x, np.where(np.arange(n) < half, LABEL, -LABEL)[:, None]


def _spiral(rng: np.random.Generator, n: int, noise: float) -> Fact:
    half = n // 2
    along = np.concatenate((np.arange(half) / half, np.arange(n - half) / (n - half)))  # 0 to 1 on each arm
    turn = np.where(np.arange(n) < half, 0.0, np.pi)  # the second arm is the first turned half a turn
    r, t = along * 5 * SCALE, 1.75 * along * 2 * np.pi + turn
    x = np.column_stack((r * np.sin(t), r * np.cos(t))) + rng.uniform(-1, 1, (n, 2)) * noise * SCALE
    return x, np.where(turn == 0, LABEL, -LABEL)[:, None]


def _plane(rng: np.random.Generator, n: int, noise: float) -> Fact:
    x = rng.uniform(-1, 1, (n, 2))
    jitter = rng.uniform(-1, 1, (n, 2)) * noise
    return x, (x + jitter).sum(axis=1, keepdims=True) / 4  # -0.5 to 0.5 without noise


def _sine(rng: np.random.Generator, n: int, noise: float) -> Fact:
    x = rng.uniform(-1, 1, (n, 1))
    jitter = rng.uniform(-1, 1, (n, 1)) * noise
    return x, 0.5 * np.sin(np.pi * (x + jitter))  # one period over the inputs' range


@dataclass(frozen=True)
class Task:
    """A built-in task: how its points are drawn, and the net and batch size a run of it starts with."""

    description: str  # one line, for a select box
    draw: Callable[[np.random.Generator, int, float], Fact] | None  # (rng, points, noise) -> (x, ideal); None: xor's
    n_in: int = 2  # inputs; every task has one output
    net: str = "2x8tx8tx1t"  # the net a run of it gets unless told: one that learns it
    batch_size: int = 10  # Playground's default
    points: int = 500  # Playground's number for its classifications
    extent: float = (
        1.0  # the points lie in [-extent, extent] on each input (up to noise): the decision surface's square
    )


TASKS: dict[str, Task] = {
    "xor": Task(
        "the notebook's XOR: the four corners of the ±0.5 square, all four in every batch",
        None,
        net="2x2tx1t",
        batch_size=4,
        points=4,
    ),
    "circle": Task("a disc (+0.5) inside a ring (-0.5); noise blurs the border", _circle, net="2x4tx2tx1t"),
    "noisy-xor": Task(
        "XOR of points in the four quadrants: -0.5 where the signs agree, +0.5 elsewhere", _noisy_xor, net="2x4tx2tx1t"
    ),
    "gauss": Task("two gaussian blobs, +0.5 up right and -0.5 down left; noise widens them", _gauss, net="2x2tx1t"),
    "spiral": Task("two interleaved spirals, +0.5 and -0.5; noise scatters their points", _spiral, net="2x8tx8tx1t"),
    "plane": Task("regression: (x1 + x2) / 4 over the square; noise jitters the inputs", _plane, net="2x4tx1"),
    "sine": Task(
        "regression of one input: 0.5 sin(pi x) over [-1, 1]; noise jitters the input", _sine, n_in=1, net="1x8tx1"
    ),
}
_XOR_X = ((-0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (0.5, -0.5))
_XOR_IDEAL = ((-0.5,), (0.5,), (-0.5,), (0.5,))  # -0.5 where the signs agree


def task_names() -> list[str]:
    """The built-in tasks, the default first."""
    return list(TASKS)


def describe_task(name: str) -> str:
    """One line saying what the task is."""
    if name not in TASKS:
        raise NnobsError(f"unknown task {name!r}; built in: {task_names()}")
    return TASKS[name].description


# -- a run's configuration --------------------------------------------------------------------


@dataclass
class RunConfig:
    """What a run trains and how it starts; kept as config.json in the run directory."""

    task: str = "xor"  # a name in TASKS
    net: str | list | None = None  # widths and activations, 2x8tx8tx1t or a list (see netspec); None: the task's own
    seed: int = 1  # seed 1 draws the very parameters the original notebook started from
    eta: float = 0.1  # learning rate at the start
    target: int = 2_000_000  # batches to train before idling; a minute or so of XOR here
    report_every: int = 2_000  # state-vector report every this many batches (0: only on request)
    pace: float = 0.0  # at most this many batches a second; 0: flat out
    min_free_mb: float = DEFAULT_MIN_FREE_MB  # training pauses while the runs root's filesystem has less free
    noise: float = 0.0  # 0 to 0.5: how far the task's points stray (Playground's 0 to 50 %)
    batch_size: int | None = None  # rows of the training set per batch; None: the task's own (xor: its four corners)
    train_share: float = 0.5  # of the task's points, those trained on; the rest measure the test loss
    eta_schedule: list | None = None  # [[batch, eta], ...]: eta from each batch on (one at 0 is the eta to start)

    def __post_init__(self) -> None:
        if isinstance(self.eta_schedule, str):  # as `nnobs new --eta-schedule` spells it
            self.eta_schedule = parse_eta_schedule(self.eta_schedule)
        task = TASKS.get(self.task) if isinstance(self.task, str) else None
        if self.net is None:
            self.net = task.net if task else TASKS["xor"].net
        if self.batch_size is None and task:
            self.batch_size = task.batch_size
        self._canonical_net()

    def _canonical_net(self) -> None:
        try:
            self.net = format_net(*parse_net(self.net_spec()))  # one spelling in config.json: the shorthand
        except NetSpecError:
            pass  # check() says what is wrong with it

    def net_spec(self) -> str | list:
        """The net as given (a shorthand or a list); never None once made: None becomes the task's own."""
        if self.net is None:
            raise NetSpecError("no net given")
        return self.net

    @property
    def sizes(self) -> list[int]:
        """Units per layer, input first."""
        return parse_net(self.net_spec())[0]

    @property
    def n_params(self) -> int:
        """How many numbers the net's state vector holds: each layer's weights and biases."""
        return sum((n_in + 1) * n_out for n_in, n_out in zip(self.sizes, self.sizes[1:]))

    @property
    def activations(self) -> list[str]:
        """One activation name per affine layer."""
        return parse_net(self.net_spec())[1]

    def to_json(self) -> str:
        fields_ = asdict(self)
        if fields_["eta_schedule"] is None:
            del fields_["eta_schedule"]  # most runs have none: config.json says only what a run has
        return json.dumps(fields_, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        known = {f.name for f in fields(cls)}
        try:
            raw = parse_json(text)
        except ValueError as err:
            raise NnobsError(f"config.json is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise NnobsError("config.json must hold an object")
        unknown = set(raw) - known - set(_OLD_FIELDS)
        if unknown:
            raise NnobsError(f"config.json has unknown keys {sorted(unknown)}; known are {sorted(known)}")
        if "net" in raw and set(_OLD_FIELDS) & set(raw):
            raise NnobsError("config.json gives both net and the older sizes/activation: keep net alone")
        config = cls(**raw)
        config.check()
        return config

    def check(self) -> None:
        """Raise NnobsError naming the first field that cannot be trained from, and what it may be."""
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise NnobsError(f"config: unknown task {self.task!r}; built in: {task_names()}")
        task = TASKS[self.task]
        try:
            sizes, _ = parse_net(self.net_spec())
        except NetSpecError as err:
            raise NetSpecError(f"config: {err}") from err
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise NnobsError(f"config: seed must be a whole number from 0 to {MAX_SEED:,}, not {self.seed!r}")
        for name, command in (
            ("eta", "eta"),
            ("target", "target"),
            ("report_every", "report_every"),
            ("pace", "pace"),
            ("min_free_mb", "min_free"),
        ):
            try:
                check_command(command, getattr(self, name))  # the same rules as for the commands that change them
            except CommandError as err:
                raise NnobsError(f"config: {err}") from err
        if self.eta_schedule is not None:
            try:
                check_eta_schedule(self.eta_schedule)
            except CommandError as err:
                raise NnobsError(f"config: {err}") from err
        if not is_finite(self.noise) or not 0 <= self.noise <= MAX_NOISE:
            raise NnobsError(
                f"config: noise must be a number from 0 to {MAX_NOISE} (0.1 is Playground's 10 %), not {self.noise!r}"
            )
        low, high = TRAIN_SHARE
        if not is_finite(self.train_share) or not low <= self.train_share <= high:
            raise NnobsError(
                f"config: train_share must be a number from {low} to {high} (the share of the task's "
                f"points trained on; the rest are its test set), not {self.train_share!r}"
            )
        if task.draw is None:
            if (self.noise, self.batch_size, self.train_share) != (0, task.batch_size, 0.5):
                raise NnobsError(
                    f"config: the xor task is the notebook's four corners, every batch all four: noise 0, "
                    f"batch_size {task.batch_size} and train_share 0.5 only (noisy points: task noisy-xor)"
                )
        else:
            rows = training_rows(self)
            if (
                not isinstance(self.batch_size, int)
                or isinstance(self.batch_size, bool)
                or not 1 <= self.batch_size <= rows
            ):
                raise NnobsError(
                    f"config: batch_size must be a whole number from 1 to {rows} (the {self.task} task's "
                    f"training points at train_share {self.train_share:g}), not {self.batch_size!r}"
                )
        if sizes[0] != task.n_in or sizes[-1] != 1:
            raise NnobsError(
                f"config: the {self.task} task needs a net of {task.n_in} input{'s' * (task.n_in > 1)} "
                f"and 1 output (such as {task.net}), not {self.net} ({sizes[0]} in, {sizes[-1]} out)"
            )


def _taking_old_fields(init: Callable) -> Callable:
    """RunConfig(sizes=[2, 3, 1], activation="relu") as older config.json files and callers say a net: widths, and one
    activation for every layer. Not init-only dataclass fields: replace() would pass them back, read off the net."""

    @functools.wraps(init)
    def __init__(self, *args, sizes: list[int] | None = None, activation: str | None = None, **settings) -> None:
        init(self, *args, **settings)
        if sizes is not None or activation is not None:
            self.net = _net_of_old_fields(self.net, sizes, activation)
            self._canonical_net()

    return __init__


# mypy refuses assigning to a method; wrapping the dataclass's generated __init__ is the point here.
RunConfig.__init__ = _taking_old_fields(RunConfig.__init__)  # type: ignore[method-assign]
_OLD_FIELDS = ("sizes", "activation")


def _net_of_old_fields(net, sizes, activation) -> list | object:
    """The net of an older config: sizes (else the net's own widths) with activation (else tanh) after every layer."""
    if sizes is None:
        try:
            sizes = parse_net(net)[0]
        except NetSpecError:
            return net
    if not isinstance(sizes, list) or not sizes:
        return sizes  # not a list of widths: check() says so
    name = "tanh" if activation is None else activation
    return [sizes[0], *([width, name] for width in sizes[1:])]


def training_rows(config: RunConfig) -> int:
    """How many of the task's points the run trains on."""
    task = TASKS[config.task]
    return task.points if task.draw is None else round(config.train_share * task.points)


def load_config(path: Path) -> RunConfig:
    return RunConfig.from_json(read_text(path, SETTINGS_MOST_BYTES))


# -- what a configuration trains ----------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A task's points, split: the rows trained on and the rows the test loss is measured on."""

    train_x: Array  # (n_train, n_in)
    train_y: Array  # (n_train, 1)
    test_x: Array  # (n_test, n_in); no rows for xor, which has no test set
    test_y: Array  # (n_test, 1)
    extent: float  # the points lie in [-extent, extent] on each input: the square a decision surface covers


def dataset(config: RunConfig) -> Dataset:
    """The task's points, drawn from the run's seed with its noise, and split by its train_share."""
    config.check()
    task = TASKS[config.task]
    if task.draw is None:
        return Dataset(np.array(_XOR_X), np.array(_XOR_IDEAL), np.empty((0, 2)), np.empty((0, 1)), task.extent)
    rng = np.random.default_rng([config.seed, DATA_STREAM])
    x, ideal = task.draw(rng, task.points, float(config.noise))
    order = rng.permutation(task.points)  # the points come class by class: the split takes from each
    train, test = order[: training_rows(config)], order[training_rows(config) :]
    return Dataset(x[train], ideal[train], x[test], ideal[test], task.extent)


def batch_source(config: RunConfig, data: Dataset) -> Callable[[], Fact]:
    """A function returning the next training batch: xor's four corners every time, else a seeded Sampler's."""
    if TASKS[config.task].draw is None:
        x, ideal = data.train_x, data.train_y
        return lambda: (x, ideal)
    assert config.batch_size is not None, "a sampled task's config has its batch size from __post_init__"
    return Sampler(data.train_x, data.train_y, config.batch_size, [config.seed, SAMPLER_STREAM])


def build_network(config: RunConfig) -> Network:
    """Affine layers of the configured widths, each followed by its activation, drawn from the seed."""
    rng = np.random.RandomState(config.seed)  # RandomState, not default_rng: it reproduces the notebook's draws
    sizes, activations = parse_net(config.net_spec())
    net = Network(eta=config.eta)
    for n_in, n_out, activation in zip(sizes, sizes[1:], activations):
        net.extend(AffineLayer(n_in, n_out, rng)).extend(ACTIVATIONS[activation]())
    return net


def build(config: RunConfig) -> tuple[Network, Callable[[], Fact]]:
    """The network and a function that returns its next training batch."""
    config.check()
    return build_network(config), batch_source(config, dataset(config))


def tensors(config: RunConfig) -> Tensors:
    """What the state vector holds, in order: per layer its weights L<n>.W (inputs by units), then its biases L<n>.b."""
    parts: Tensors = []
    for layer, (n_in, n_out) in enumerate(zip(config.sizes, config.sizes[1:]), start=1):
        parts += [(f"L{layer}.W", (n_in, n_out)), (f"L{layer}.b", (n_out,))]
    return parts


def parameter_names(config: RunConfig) -> list[str]:
    """State-vector entries by name, in state-vector order: L1.W[0,1] is layer 1's weight from input 0 to unit 1."""
    return all_parameter_names(tensors(config))
