"""PyTorch for nnobs.Run: `nnobs.torch.attach(model, optimizer)` (see nnobs.training.integrations.torch)."""

from nnobs.training.integrations.torch import TorchTrainer, attach

__all__ = ["TorchTrainer", "attach"]
