"""Minibatches of a training set, epoch after epoch in a fresh random order, from a generator whose state is saved."""

from __future__ import annotations

import numpy as np

from nnobs.protocol.numbers import is_count
from nnobs.training.builtin.nn import Array, Fact


class Sampler:
    """Batches of batch_size rows of (x, ideal), read in turn from each epoch's random order of the rows.

    The rows form one endless stream, each epoch a new permutation: a batch that reaches an epoch's
    end takes its last rows and the next epoch's first. state() is the generator as it was before it
    drew the current epoch's order, and the position in that order: enough to draw the same order
    again and go on from the same row, so a resumed run reads the very batches it would have.
    """

    def __init__(self, x: Array, ideal: Array, batch_size: int, seed: int | list[int]):
        if not 1 <= batch_size <= len(x):
            raise ValueError(f"a batch takes 1 to {len(x)} rows of this training set, not {batch_size}")
        self._x, self._ideal = x, ideal  # (n, n_in), (n, n_out)
        self.batch_size = batch_size
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self.epoch = 0  # epochs begun
        self._at = 0  # the next row of this epoch's order
        self._new_epoch()

    def __call__(self) -> Fact:
        start, end = self._at, self._at + self.batch_size
        if end <= len(self._x):  # views of this epoch's shuffled copy: no copying per batch
            self._at = end
            return self._epoch_x[start:end], self._epoch_ideal[start:end]
        tail_x, tail_ideal = self._epoch_x[start:], self._epoch_ideal[start:]
        self._new_epoch()
        self._at = self.batch_size - len(tail_x)
        return (
            np.concatenate((tail_x, self._epoch_x[: self._at])),
            np.concatenate((tail_ideal, self._epoch_ideal[: self._at])),
        )

    def _new_epoch(self) -> None:
        self._epoch_from = self._rng.bit_generator.state  # a fresh dict: the generator's own moves on
        order = self._rng.permutation(len(self._x))
        self._epoch_x, self._epoch_ideal = self._x[order], self._ideal[order]
        self._at = 0
        self.epoch += 1

    def state(self) -> dict:
        """JSON-able: the generator before this epoch's order was drawn, the row reached in it, the rows in all."""
        return {"generator": self._epoch_from, "at": self._at, "epoch": self.epoch, "rows": len(self._x)}

    def restore(self, state: dict) -> None:
        """Go back to a state() of a sampler over the same rows; ValueError, changing nothing, when it is not one."""
        try:
            generator, at, epoch, rows = state["generator"], state["at"], state["epoch"], state["rows"]
            kind = generator["bit_generator"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"the sampler's saved state lacks {err}") from err
        if rows != len(self._x):
            raise ValueError(f"the sampler's saved state is of {rows} training rows, this run has {len(self._x)}")
        if kind != "PCG64" or not is_count(at) or not at <= rows or not is_count(epoch):
            raise ValueError(f"the sampler's saved state is not one this sampler wrote ({kind}, row {at!r})")
        try:  # on a scratch generator first: a state numpy refuses changes nothing here
            np.random.PCG64().state = generator
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"the sampler's saved generator state is unreadable ({err})") from err
        self._rng.bit_generator.state = generator
        self._new_epoch()
        self._at, self.epoch = at, epoch
