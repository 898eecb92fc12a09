"""What a run trains: its configuration, and the built-in tasks that turn one into a net and its batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from nnobs.control import DEFAULT_MIN_FREE_MB, MAX_SEED, check_command
from nnobs.errors import CommandError, NnobsError
from nnobs.nn import (
    AffineLayer,
    Fact,
    IdentityLayer,
    Layer,
    MapLayer,
    Network,
    TanhLayer,
)
from nnobs.schema import Tensors, all_parameter_names

# Activations are named from this table; nothing read from disk is ever evaluated.
ACTIVATIONS: dict[str, Callable[[], Layer]] = {
    "tanh": TanhLayer,
    "relu": lambda: MapLayer(lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "identity": IdentityLayer,
}


MAX_WIDTH = 100_000  # units in one layer; beyond is a typo, not a net to train here


@dataclass
class RunConfig:
    """What a run trains and how it starts; kept as config.json in the run directory."""

    task: str = "xor"  # a name in TASKS
    sizes: list[int] = field(default_factory=lambda: [2, 2, 1])  # units per layer, input first
    activation: str = "tanh"  # a name in ACTIVATIONS, applied after every affine layer
    seed: int = 1  # seed 1 draws the very parameters the original notebook started from
    eta: float = 0.1  # learning rate at the start
    target: int = 2_000_000  # batches to train before idling; a minute or so of XOR here
    report_every: int = 2_000  # state-vector report every this many batches (0: only on request)
    pace: float = 0.0  # at most this many batches a second; 0: flat out
    min_free_mb: float = DEFAULT_MIN_FREE_MB  # training pauses while the runs root's filesystem has less free

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        known = {f.name for f in fields(cls)}
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise NnobsError(f"config.json is not valid JSON: {err}") from err
        if not isinstance(raw, dict):
            raise NnobsError("config.json must hold an object")
        unknown = set(raw) - known
        if unknown:
            raise NnobsError(f"config.json has unknown keys {sorted(unknown)}; known are {sorted(known)}")
        config = cls(**raw)
        config.check()
        return config

    def check(self) -> None:
        """Raise NnobsError naming the first field that cannot be trained from."""
        if not isinstance(self.task, str) or self.task not in TASKS:
            raise NnobsError(f"config: unknown task {self.task!r}; built in: {sorted(TASKS)}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise NnobsError(f"config: unknown activation {self.activation!r}; built in: {sorted(ACTIVATIONS)}")
        if (
            not isinstance(self.sizes, list)
            or len(self.sizes) < 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_WIDTH for n in self.sizes)
        ):
            raise NnobsError(f"config: sizes must list two or more layer widths from 1 to {MAX_WIDTH}, not {self.sizes!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed <= MAX_SEED:
            raise NnobsError(f"config: seed must be a whole number from 0 to {MAX_SEED:,}, not {self.seed!r}")
        for name, command in (("eta", "eta"), ("target", "target"), ("report_every", "report_every"), ("pace", "pace"),
                              ("min_free_mb", "min_free")):
            try:
                check_command(command, getattr(self, name))  # the same rules as for the commands that change them
            except CommandError as err:
                raise NnobsError(f"config: {err}") from err


def build_network(config: RunConfig) -> Network:
    """Affine layers of the configured sizes, each followed by the activation, drawn from the seed."""
    rng = np.random.RandomState(config.seed)  # RandomState, not default_rng: it reproduces the notebook's draws
    net = Network(eta=config.eta)
    for n_in, n_out in zip(config.sizes, config.sizes[1:]):
        net.extend(AffineLayer(n_in, n_out, rng)).extend(ACTIVATIONS[config.activation]())
    return net


def xor_batches(config: RunConfig) -> Callable[[], Fact]:
    """The notebook's XOR: the four corners of the ±0.5 square, target -0.5 where the signs agree."""
    if config.sizes[0] != 2 or config.sizes[-1] != 1:
        raise NnobsError(f"the xor task needs 2 inputs and 1 output, not sizes {config.sizes}")
    x = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]])  # (4, 2)
    ideal = np.array([[-0.5], [0.5], [-0.5], [0.5]])  # (4, 1)
    return lambda: (x, ideal)


TASKS: dict[str, Callable[[RunConfig], Callable[[], Fact]]] = {"xor": xor_batches}


def build(config: RunConfig) -> tuple[Network, Callable[[], Fact]]:
    """The network and a function that returns its next training batch."""
    config.check()
    return build_network(config), TASKS[config.task](config)


def load_config(path: Path) -> RunConfig:
    return RunConfig.from_json(Path(path).read_text())


def tensors(config: RunConfig) -> Tensors:
    """What the state vector holds, in order: per layer its weights L<n>.W (inputs by units), then its biases L<n>.b."""
    parts: Tensors = []
    for layer, (n_in, n_out) in enumerate(zip(config.sizes, config.sizes[1:]), start=1):
        parts += [(f"L{layer}.W", (n_in, n_out)), (f"L{layer}.b", (n_out,))]
    return parts


def parameter_names(config: RunConfig) -> list[str]:
    """State-vector entries by name, in state-vector order: L1.W[0,1] is layer 1's weight from input 0 to unit 1."""
    return all_parameter_names(tensors(config))
