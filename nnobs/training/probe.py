"""What a large net's state reports say of its tensors, measured by its trainer where they live (on a GPU, in a
framework's model), with no copy of the model: per tensor its moments, and the values of a few fixed entries (its
marks, and the sample the page shows), gathered tensor by tensor."""

from __future__ import annotations

import numpy as np

from nnobs.protocol.schema import mark_picks, marked_summary, marked_update_ratios, sample_indices, tensor_bounds
from nnobs.training.trainer import Trainer

Marks = list[np.ndarray]  # per tensor, the values at its marks


class Probe:
    """A large net's summaries, sample and update ratios, from its trainer's moments() and values_at()."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        bounds = tensor_bounds(trainer.tensors)
        self.mark_picks = [mark_picks(end - start) for start, end in bounds]
        # The sample is named by places in the state vector (the readers' names): here, by tensor and place in it.
        sample = np.asarray(sample_indices(trainer.tensors), dtype=np.int64)
        self.sample_picks = [sample[(sample >= start) & (sample < end)] - start for start, end in bounds]
        self.summarized: Marks | None = None  # the marks of the last summary: its change is measured from them

    def marks(self) -> Marks:
        """The values at every tensor's marks, as they are now."""
        return self.trainer.values_at(self.mark_picks)

    def summary(self) -> list[list[float | None]]:
        """Per tensor its SUMMARY numbers (its change since the last summary's marks); the new marks are kept."""
        marks = self.marks()
        summary = marked_summary(self.trainer.moments(), marks, self.summarized)
        self.summarized = marks
        return summary

    def sample(self) -> np.ndarray:
        """The sampled parameters' values, in the sample's order."""
        values = self.trainer.values_at(self.sample_picks)
        return np.concatenate(values) if values else np.empty(0)

    def update_ratios(self, before: Marks) -> list[float | None]:
        """Per tensor, what the step since before (marks one batch back) did to it, relative to it then."""
        return marked_update_ratios(self.marks(), before)
