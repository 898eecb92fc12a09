"""Lightning for nnobs: `Trainer(callbacks=[nnobs.lightning.Callback("my-run")])` (see
nnobs.training.integrations.lightning)."""

from nnobs.training.integrations.lightning import Callback

__all__ = ["Callback"]
