"""Keras 3 for nnobs: `model.fit(..., callbacks=[nnobs.keras.Callback("my-run")])` (see
nnobs.training.integrations.keras)."""

from nnobs.training.integrations.keras import Callback

__all__ = ["Callback"]
