"""What the framework callbacks share: a trainer over a model that a framework trains, and the run it drives.

A framework (Lightning, Transformers, Keras) owns the loop; its callback drives nnobs.Run's batches() one step at a
time (FrameworkRun.step_ended after every training step) and asks the framework to stop when the run ends. Its
checkpoint is the framework's own, written by the framework's own save and kept inside the run's checkpoint, so
that a restart resumes through the framework's own restore: global step, epoch, place in the data, optimizer,
schedule and random state.
"""

from __future__ import annotations

import atexit
import math
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np

from nnobs.protocol.checkpoint import State, in_memory
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.slot import tell_log
from nnobs.training.integrations.metrics import as_number
from nnobs.training.integrations.torch import TorchTensors, torch
from nnobs.training.sdk import Run
from nnobs.training.trainer import Trainer

SETTINGS = ("eta", "target", "report_every", "pace", "min_free_mb", "kept_mb", "wait_at_target", "root")


class Rates(Protocol):
    """A framework's learning rates: eta, the base a schedule scales (set: the schedule goes on from the new base),
    and the rate in use now."""

    eta: float

    @property
    def lr_in_use(self) -> float | None: ...


def torch_params(model: Any) -> list[tuple[str, Any]]:
    """A torch.nn.Module's trainable parameters by name."""
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


class FrameworkTrainer(TorchTensors, Trainer):
    """A model that a framework trains, its parameters given by name (PyTorch tensors). Until the framework's
    training state is live (its optimizer made, its checkpoint restored) the trainer holds the checkpoint it was
    given and the eta asked for; from then on eta and the learning rate in use are the framework's (the optimizer's
    and its schedule's), and a checkpoint is the framework's own: the bytes save_native() returns, which
    load_native(content) restores."""

    def __init__(
        self, params: list[tuple[str, Any]], save_native: Callable[[], bytes], load_native: Callable[[bytes], object]
    ):
        self._save_native, self._load_native = save_native, load_native
        self.rates: Rates | None = None  # once live
        self._eta: float | None = None  # asked for before the optimizer was made
        self._loaded: dict[str, np.ndarray] = {}  # the checkpoint resumed from, until the framework's state is live
        self._frozen: dict[str, np.ndarray] | None = None  # the last checkpoint, once training has stopped
        self.tensors = [(name, tuple(p.shape)) for name, p in params]
        self._params = params

    def went_live(self, rates: Rates) -> None:
        """The framework made its optimizer and restored its state: eta asked for meanwhile is set now."""
        self.rates = rates
        self._loaded = {}
        # 0 is no eta (a checkpoint taken before the optimizer was made says 0): the framework's own rate stands.
        if self._eta and not math.isclose(self._eta, rates.eta, rel_tol=1e-12):
            rates.eta = self._eta

    @property
    def eta(self) -> float:
        if self.rates is not None:
            return self.rates.eta
        return 0.0 if self._eta is None else self._eta

    @eta.setter
    def eta(self, value: float) -> None:
        if self.rates is not None:
            self.rates.eta = value
        else:
            self._eta = float(value)

    @property
    def lr_in_use(self) -> float | None:
        return None if self.rates is None else self.rates.lr_in_use

    @property
    def can_load(self) -> bool:  # type: ignore[override]
        """A checkpoint loads as the run starts, through the framework's own restore; rewinding a live framework's
        loop is not something the frameworks offer: stop the run and fork it from a kept checkpoint instead."""
        return self.rates is None

    def save(self) -> State:
        if self.rates is None or self._frozen is not None:
            # Not made yet: the checkpoint resumed from is still the run's. Frozen: training stopped at a step
            # boundary, and what the framework does on its way out (a finished epoch, say) is not the run's state.
            return self._loaded if self._frozen is None else self._frozen
        return {"native": np.frombuffer(self._save_native(), dtype=np.uint8)}

    def freeze(self) -> None:
        """Training stops here: the checkpoint of this step boundary is the run's last (taken anew when called again)."""
        self._frozen = None
        self._frozen = in_memory(self.save())

    def load(self, saved: dict[str, np.ndarray]) -> None:
        if self.rates is not None:
            raise ValueError("a live framework's training cannot go back: stop the run, then fork it from a checkpoint")
        if "native" not in saved:
            raise ValueError("the checkpoint holds no framework checkpoint")
        self._load_native(saved["native"].tobytes())
        self._loaded = saved


class FrameworkRun:
    """An nnobs.Run stepped by a framework's callback: start() before the framework restores its state, live() once
    its optimizer is made, step_ended() after every training step (False: stop training), end() at the end."""

    def __init__(self, name: str | None, settings: Mapping[str, Any], framework: str):
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise NnobsError(
                f"nnobs.{framework}.Callback: no setting {', '.join(unknown)} (settings: {', '.join(SETTINGS)})"
            )
        self.name, self.settings, self.framework = name, dict(settings), framework
        self.run: Run | None = None
        self.trainer: FrameworkTrainer | None = None
        self._batches: Iterator[int] | None = None
        self.stopping = False  # the run's batches ended: the framework is told to stop, and ends the run as it ends
        self._begun = False
        self.ended = False

    def start(self, trainer: FrameworkTrainer, target: int | None = None) -> Run:
        """Take the run and resume from its checkpoint (through trainer.load, so before the framework restores)."""
        self._once()
        settings = dict(self.settings)
        if target is not None and "target" not in settings:
            settings["target"] = target
        self.trainer = trainer
        self.run = Run(self.name, trainer=trainer, **settings).start()
        _live.append(self)
        return self.run

    def live(self, rates: Rates, framework_step: int) -> bool:
        """The framework's state is made and restored: begin the first batch. False: the run ends before it."""
        assert self.run is not None and self.trainer is not None
        self._once()
        said = self.trainer.eta
        self.trainer.went_live(rates)
        if self.trainer.eta != said and self.run.leads:  # started before the optimizer was made: eta known now
            self.run.session.out.write({"eta": [self.run.batch, self.trainer.eta]})
        if framework_step != self.run.batch:
            tell_log(
                f"nnobs: {self.framework} resumed at step {framework_step:,} and the run at batch {self.run.batch:,}: "
                "the run counts on from its own"
            )
        self._batches = self.run.batches()
        return self._next()

    def _once(self) -> None:
        if self.ended:
            raise NnobsError(
                f"nnobs.{self.framework}.Callback serves one training: give each fit or train its own callback"
            )

    def step_ended(self, loss: Any, metrics: dict[str, float]) -> bool:
        """Log the step's loss and metrics, then answer the run's commands and begin the next batch (waiting at a
        pace or, asked to, at the target). False when training is to stop: the run's last checkpoint is taken then,
        at this step boundary, and the run ends as the framework does (end())."""
        run = self.run
        if run is None or self._batches is None or self.ended:
            return False
        if self.stopping:
            return False
        self._begun = False
        # A loss tensor of one element, as the frameworks return it, straight to its value: as_number's checks for
        # every other kind of value cost a step 2 µs more.
        number = loss.item() if type(loss) is torch.Tensor and loss.numel() == 1 else as_number(loss)
        if number is not None:
            run.log(number, **metrics)
        elif metrics:
            run.session.log_metrics(metrics, run.batch)
        return self._next()

    def metrics_logged(self, metrics: dict[str, float], at: int | None = None) -> None:
        """Values the framework logs between steps (a validation's), at the batch they were measured at."""
        run = self.run
        if run is not None and not self.ended and metrics:
            run.session.log_metrics(metrics, run.batch if at is None else at)

    def after_stop(self) -> None:
        """The framework did, after the step training stopped at, what it does before the next step (a validation,
        which draws from the random state): the run's last checkpoint is taken after it, as a run never stopped would
        go on from there."""
        if self.stopping and not self.ended and self.trainer is not None:
            self.trainer.freeze()

    def _next(self) -> bool:
        assert self._batches is not None and self.run is not None and self.trainer is not None
        if next(self._batches, None) is None:
            self.stopping = True
            self.trainer.freeze()  # at a step boundary the framework can resume from
            return False
        self._begun = True  # a batch is counted that the framework has not trained yet
        return True

    @property
    def target(self) -> int:
        return self.run.target if self.run is not None else 0

    def end(self, error: BaseException | None = None) -> None:
        """End the run once: a final checkpoint and the shutdown record, or the error that ended it."""
        if self.ended or self.run is None:
            return
        self.ended = True
        if self in _live:
            _live.remove(self)
        if self._begun:  # the framework ended by itself (its epochs, early stopping) before training that batch
            self.run.session.batch -= 1
        self.run.close(error)


# Runs a framework steps, until they end: an exception the framework lets out (Transformers and Keras have no hook
# for it) ends them with its message, and a script that exits without the framework's end hook ends them cleanly.
_live: list[FrameworkRun] = []


def _crash_hook(kind, error, tb) -> None:
    for run in list(_live):
        run.end(None if isinstance(error, SystemExit) else error)
    _previous_hook(kind, error, tb)


def _end_at_exit() -> None:
    for run in list(_live):
        run.end()


_previous_hook = sys.excepthook
sys.excepthook = _crash_hook
atexit.register(_end_at_exit)
