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
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nnobs.protocol.checkpoint import State, Streamed, in_memory
from nnobs.protocol.errors import MissingExtra

try:
    import torch
except ImportError as err:
    raise MissingExtra(
        f"nnobs.torch needs PyTorch, which is not installed ({err}): pip install 'nnobs[torch]'"
    ) from err

from nnobs.training.trainer import Trainer

# A parameter group's learning rates that a schedule reads or writes: the rate in use, the base LambdaLR and the
# chainable schedules start from (initial_lr), and OneCycleLR's peak and floor.
SCHEDULED_RATES = ("lr", "initial_lr", "max_lr", "min_lr")


class TorchTensors:
    """What a trainer whose parameters are PyTorch tensors (self._params, by name) measures of them, where they live:
    its state vector, and a large net's moments, values at marks and finiteness (see Trainer)."""

    _params: list[tuple[str, torch.Tensor]]

    def state_vector(self) -> np.ndarray:
        return flat_copy(self._params)

    def moments(self) -> np.ndarray:
        return tensor_moments(self._params)

    def values_at(self, picks: list[np.ndarray]) -> list[np.ndarray]:
        return tensor_values_at(self._params, picks)

    def all_finite(self) -> bool:
        return tensors_finite(self._params)


class TorchTrainer(TorchTensors, Trainer):
    """A torch.nn.Module and its optimizer, as a session sees them."""

    can_load = True

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self._params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.tensors = [(name, tuple(p.shape)) for name, p in self._params]

    @property
    def eta(self) -> float:
        """The base learning rate: a schedule's base (what it scales), else the first group's learning rate."""
        bases = getattr(self.scheduler, "base_lrs", None)
        return float(bases[0]) if bases else float(self.optimizer.param_groups[0]["lr"])

    @eta.setter
    def eta(self, value: float) -> None:
        """A new base: every learning rate of the optimizer and its schedule is scaled by new base / old base, so the
        schedule goes on from where it is, now of the new base (the groups keep their proportions)."""
        old = self.eta
        if old == 0 or not math.isfinite(old):  # nothing to scale: every group starts from the value itself
            for group in self.optimizer.param_groups:
                group.update({key: float(value) for key in SCHEDULED_RATES if key in group})
            self._scale_schedule(None, float(value))
            return
        ratio = float(value) / old
        for group in self.optimizer.param_groups:
            for key in SCHEDULED_RATES:
                if isinstance(group.get(key), (int, float)):
                    group[key] = group[key] * ratio
        self._scale_schedule(ratio, float(value))

    def _scale_schedule(self, ratio: float | None, value: float) -> None:
        """The schedule's own copies of the rates: its bases and bounds (scaled by ratio, or set to value)."""
        for name in ("base_lrs", "max_lrs", "_last_lr"):
            rates = getattr(self.scheduler, name, None)
            if isinstance(rates, list) and all(isinstance(r, (int, float)) for r in rates):
                setattr(self.scheduler, name, [value if ratio is None else r * ratio for r in rates])

    @property
    def lr_in_use(self) -> float:
        """The learning rate the optimizer steps with now (the base times the schedule's factor)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self) -> State:
        # Streamed into the checkpoint file tensor by tensor as it is written: a copy in memory first would cost as
        # much again as the model and its optimizer hold.
        return {"torch": Streamed(lambda stream: torch.save(self._training_state(), stream))}

    def saved_bytes(self) -> int:
        """The model's tensors and the optimizer's state (Adam's moments, once it has stepped), as save() writes them."""
        tensors = [*self.model.state_dict().values()]
        tensors += [value for state in self.optimizer.state.values() for value in state.values()]
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def _training_state(self) -> dict[str, Any]:
        """The model's and the optimizer's state_dicts (their tensors themselves, not copies), the schedule's, and
        the random state."""
        state: dict[str, Any] = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()  # where the schedule is: a restart goes on from there
        state.update(random_state())  # dropout, a loader's draws: a restart draws what the run would have drawn next
        return state

    def load(self, saved: State) -> None:
        content = in_memory(saved).get("torch")
        if content is None:
            raise ValueError("the checkpoint holds no PyTorch state")
        try:
            state = torch.load(io.BytesIO(content.tobytes()), weights_only=True)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and "scheduler" in state:
                self.scheduler.load_state_dict(state["scheduler"])
            set_random_state(state)
        except (RuntimeError, KeyError, TypeError) as err:  # another model's shapes, or not ours at all
            # torch's first line only says that loading failed; the lines after it name the tensors that differ.
            raise ValueError(" ".join(line.strip() for line in str(err).splitlines() if line.strip())) from err


def random_state() -> dict[str, Any]:
    """PyTorch's random state, the CPU's and, where used, the GPUs': what a checkpoint keeps for a resumed run."""
    state: dict[str, Any] = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    """Set back what random_state() returned (what of it there is)."""
    if state.get("rng") is not None:
        torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def flat_copy(params: Sequence[tuple[str, torch.Tensor]]) -> np.ndarray:
    """The named tensors' values, flat, as float64 on the host: a copy of the training's own."""
    if not params:
        return np.empty(0)
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1).to(torch.float64, copy=True).cpu() for _, p in params]).numpy()


def _measured(p: torch.Tensor) -> torch.Tensor:
    """p as its numbers are measured: float32 at least (half floats add up wrong), where it lives, not a copy for
    float32 and float64."""
    p = p.detach()
    return p if p.dtype in (torch.float32, torch.float64) else p.to(torch.float32)


def tensor_moments(params: Sequence[tuple[str, torch.Tensor]]) -> np.ndarray:
    """Per tensor its norm, mean, std, min and max (Trainer.moments), each a reduction on the tensor's own device:
    no copy of the model is made, and only these numbers cross to the host."""
    rows = []
    with torch.no_grad():
        for _, p in params:
            x = _measured(p).reshape(-1)
            if not x.numel():
                rows.append(torch.full((5,), math.nan, dtype=torch.float64, device=x.device))
                continue
            std, mean = torch.std_mean(x, correction=0)
            low, high = torch.aminmax(x)
            norm = torch.linalg.vector_norm(x)
            rows.append(torch.stack([norm, mean, std, low, high]).to(torch.float64))
        if not rows:
            return np.empty((0, 5))
        return torch.stack([row.cpu() for row in rows]).numpy()


def tensor_values_at(params: Sequence[tuple[str, torch.Tensor]], picks: list[np.ndarray]) -> list[np.ndarray]:
    """Per tensor its values at picks (Trainer.values_at): gathered on the tensor's device, only they copied over."""
    values = []
    with torch.no_grad():
        for (_, p), at in zip(params, picks, strict=True):
            index = torch.as_tensor(at, dtype=torch.long, device=p.device)
            values.append(p.detach().reshape(-1)[index].to(torch.float64).cpu().numpy())
    return values


def tensors_finite(params: Sequence[tuple[str, torch.Tensor]]) -> bool:
    """Whether every value is finite: a NaN or an infinity anywhere makes a tensor's sum so (a sum of finite
    parameters that overflows float32 would need entries near 10^31), summed where the tensor lives."""
    with torch.no_grad():
        sums = [_measured(p).sum() for _, p in params]
        return bool(torch.isfinite(torch.stack([s.cpu() for s in sums])).all()) if sums else True


def attach(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any = None) -> TorchTrainer:
    """The trainer for nnobs.Run(trainer=...): the model's parameters, the optimizer's learning rate, and the
    learning-rate scheduler if any (eta is then the base it scales, and its state is in every checkpoint)."""
    return TorchTrainer(model, optimizer, scheduler)
