"""What a session needs of what it trains: the Trainer interface, with the defaults of one that can do little."""

from __future__ import annotations

import numpy as np

from nnobs.protocol.checkpoint import State
from nnobs.protocol.errors import CommandError
from nnobs.protocol.schema import MOMENTS, Tensors, tensor_bounds


class Trainer:
    """What a session needs of what it trains; the defaults are those of a trainer that can do little.

    tensors names the state vector's parts in order (name, shape); eta is the learning rate.
    """

    tensors: Tensors = []
    eta: float = 0.1

    @property
    def lr_in_use(self) -> float | None:
        """The learning rate stepped with now, where a schedule scales eta (charted as "lr"); None where it is eta."""
        return None

    def state_vector(self) -> np.ndarray:
        """Every parameter, flat, as float64: a copy of its own (it is encoded on another thread)."""
        return np.empty(0)

    # What a large net's reports say of its tensors, measured where they live: the defaults go through state_vector(),
    # a trainer whose tensors live elsewhere (on a GPU, in a framework) measures them there, with no copy of the model.

    def moments(self) -> np.ndarray:
        """(tensors, len(MOMENTS)): per tensor its norm, mean, std, min and max, as float64 on the host."""
        sv = self.state_vector()
        rows = np.full((len(self.tensors), len(MOMENTS)), np.nan)
        for t, (start, end) in enumerate(tensor_bounds(self.tensors)):
            if start < end <= len(sv):
                part = sv[start:end]
                rows[t] = np.linalg.norm(part), part.mean(), part.std(), part.min(), part.max()
        return rows

    def values_at(self, picks: list[np.ndarray]) -> list[np.ndarray]:
        """Per tensor, its values at picks (indices into it, flat), as float64 on the host."""
        sv = self.state_vector()
        return [sv[start:end][at] for (start, end), at in zip(tensor_bounds(self.tensors), picks, strict=True)]

    def all_finite(self) -> bool:
        """Whether every parameter is a finite number: a checkpoint of any other is nothing to go on from."""
        return bool(np.isfinite(self.state_vector()).all())

    def save(self) -> State:
        """What a checkpoint holds of the net (and its optimizer), as named arrays; {} when nothing can be."""
        return {}

    def saved_bytes(self) -> int | None:
        """About the bytes save() writes now, where the trainer can tell without saving; None where it cannot."""
        return None

    def load(self, saved: dict[str, np.ndarray]) -> None:
        """Take back what save() returned; ValueError when it does not fit this net."""
        raise ValueError("this trainer cannot load a checkpoint")

    can_load = False  # whether load() works: rewinding and going back from a diverged loss need it

    def reinit(self, seed: int | None) -> int:
        """Draw the net afresh from seed (None: the run's own); the seed used. CommandError when it cannot."""
        raise CommandError("this run's net is drawn by its own script: reinitialize it there")

    def loss_now(self) -> float | None:
        """The loss of the parameters as they are, when it can be had without a training step; else None."""
        return None

    def dead_units(self) -> list[int] | None:
        """Per layer with relu, its units whose output is 0 on every training point; None when the trainer cannot tell."""
        return None
