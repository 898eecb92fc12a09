"""Transformers for nnobs: `Trainer(callbacks=[nnobs.transformers.Callback("my-run")])` (see
nnobs.training.integrations.transformers)."""

from nnobs.training.integrations.transformers import Callback

__all__ = ["Callback"]
