"""PyTorch for nnobs.Run: one call attaches a model and its optimizer.

    import nnobs, nnobs.torch
    with nnobs.Run("mlp", trainer=nnobs.torch.attach(model, optimizer)) as run:
        for batch in run.batches():
            ...
            run.log(loss.item())

eta sets every parameter group's learning rate; the state vector is the model's named parameters
(fc1.weight[3,7]); checkpoints hold the model's and the optimizer's state_dicts, loaded with
weights_only=True. Needs PyTorch: pip install 'nnobs[torch]'.
"""

from __future__ import annotations

import io

import numpy as np

from nnobs.protocol.errors import MissingExtra

try:
    import torch
except ImportError as err:
    raise MissingExtra(
        f"nnobs.torch needs PyTorch, which is not installed ({err}): pip install 'nnobs[torch]'"
    ) from err

from nnobs.training.trainer import Trainer


class TorchTrainer(Trainer):
    """A torch.nn.Module and its optimizer, as a session sees them."""

    can_load = True

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self._params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.tensors = [(name, tuple(p.shape)) for name, p in self._params]

    @property
    def eta(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @eta.setter
    def eta(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = float(value)

    def state_vector(self) -> np.ndarray:
        with torch.no_grad():
            if not self._params:
                return np.empty(0)
            flat = torch.cat([p.detach().reshape(-1).to(torch.float64, copy=True).cpu() for _, p in self._params])
        return flat.numpy()

    def save(self) -> dict[str, np.ndarray]:
        buffer = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}, buffer)
        return {"torch": np.frombuffer(buffer.getvalue(), dtype=np.uint8)}

    def load(self, saved: dict[str, np.ndarray]) -> None:
        if "torch" not in saved:
            raise ValueError("the checkpoint holds no PyTorch state")
        try:
            state = torch.load(io.BytesIO(saved["torch"].tobytes()), weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, TypeError) as err:  # another model's shapes, or not ours at all
            # torch's first line only says that loading failed; the lines after it name the tensors that differ.
            raise ValueError(" ".join(line.strip() for line in str(err).splitlines() if line.strip())) from err


def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TorchTrainer:
    """The trainer for nnobs.Run(trainer=...): the model's parameters, the optimizer's learning rate."""
    return TorchTrainer(model, optimizer)
