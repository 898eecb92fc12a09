"""Keras 3 (on its PyTorch backend) for nnobs: one callback in fit's own place watches and steers the training.

    model.fit(loader, epochs=20, callbacks=[nnobs.keras.Callback("my-run", data=loader)])

Every step's training loss and the metrics fit reports (accuracy, val_loss, ...) are on the page; eta is the base
learning rate a Keras schedule scales (ExponentialDecay, CosineDecay with its warmup, PolynomialDecay, piecewise
constants; a plain rate is set as it is); pace, tell-state and stop (at the next step, with fit's own end) work as
for any run, and the target is the step limit (epochs x steps a epoch, or fewer). A restart resumes through Keras's
own weights file (the model's weights, the optimizer's variables and step count, the dropout seeds), at the epoch
the run stopped in, and, given the loader as data (a resumable one: torchdata's StatefulDataLoader), at its place in
the data. Needs Keras with the torch backend (KERAS_BACKEND=torch): pip install 'nnobs[keras]'.
"""

from __future__ import annotations

import math
import os
from typing import Any

from nnobs.protocol.errors import MissingExtra, NnobsError

os.environ.setdefault("KERAS_BACKEND", "torch")
try:
    import keras
    import torch
except ImportError as err:
    raise MissingExtra(
        f"nnobs.keras needs Keras 3, which is not installed ({err}): pip install 'nnobs[keras]'"
    ) from err

from nnobs.training.integrations.framework import FrameworkRun, FrameworkTrainer
from nnobs.training.integrations.metrics import numbers_of
from nnobs.training.integrations.torch import random_state, set_random_state
from nnobs.training.sdk import shuffle_for, through_file

# A Keras schedule's rates that are learning rates (scaled with eta), the first of them present being its base.
SCHEDULE_RATES = ("warmup_target", "initial_learning_rate", "end_learning_rate", "values")


class KerasRates:
    """A Keras optimizer's learning rate: a schedule's base, or the rate itself."""

    def __init__(self, optimizer: Any):
        self.optimizer = optimizer
        rate = optimizer._learning_rate
        self.schedule = rate if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else None

    @property
    def eta(self) -> float:
        if self.schedule is None:
            return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        for name in SCHEDULE_RATES:
            value = getattr(self.schedule, name, None)
            if value is not None:
                return float(value[0] if name == "values" else value)
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    @eta.setter
    def eta(self, value: float) -> None:
        """A new base: the schedule's rates scaled by new base / old base, so it goes on from where it is."""
        if self.schedule is None:
            self.optimizer.learning_rate.assign(float(value))
            return
        old = self.eta
        ratio = float(value) / old if old and math.isfinite(old) else None
        for name in SCHEDULE_RATES:
            rate = getattr(self.schedule, name, None)
            if rate is None:
                continue
            if name == "values":
                setattr(self.schedule, name, [float(value) if ratio is None else v * ratio for v in rate])
            else:
                setattr(self.schedule, name, float(value) if ratio is None else rate * ratio)

    @property
    def lr_in_use(self) -> float | None:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))


class Callback(keras.callbacks.Callback):
    """nnobs.keras.Callback(name, data=None, **settings): the run NAME (under `nnobs run NAME`, that run) of this
    fit. data: the loader fit reads: each epoch's shuffle is then drawn from seed and the epoch, so that a restart
    reads what the run would have read, and a loader that keeps its place (state_dict and load_state_dict, as
    torchdata's StatefulDataLoader does) reads on from the middle of an epoch. settings: eta, target (default: the fit's
    steps), report_every, pace, min_free_mb, kept_mb, wait_at_target, root, as nnobs.Run takes them."""

    def __init__(self, name: str | None = None, data: Any = None, seed: int = 0, **settings: Any):
        super().__init__()
        self.nnobs = FrameworkRun(name, settings, "keras")
        self.data, self.seed = data, seed
        self._resumed: dict | None = None  # what the run's checkpoint held, until fit is under way
        self._epoch = 0
        self._loss: Any = None  # the step's loss, as the model computed it
        self._rng: Any = None  # PyTorch's random state at the checkpoint resumed from, until the first step
        self._steps_done = 0  # in this epoch
        self._resumed_epoch: int | None = None  # the epoch resumed in the middle of: its order is the loader's kept one

    # -- the run's checkpoint: Keras's weights file, the epoch and the place in the data ------------------------------

    def _save(self, path: str) -> None:
        weights = path + ".weights.h5"
        try:
            self.model.save_weights(weights)
            with open(weights, "rb") as written:
                content = written.read()
        finally:
            if os.path.exists(weights):
                os.remove(weights)
        # After an epoch's last step, fit goes on with the next epoch from the start of the data.
        epoch_done = self._steps_done >= (self.params.get("steps") or 0) > 0
        data_state = self.data.state_dict() if hasattr(self.data, "state_dict") and not epoch_done else None
        # Keras's weights file leaves out the layers' seed states (dropout's draws): they are kept beside it, with
        # PyTorch's random state.
        seeds = {v.path: torch.as_tensor(keras.ops.convert_to_numpy(v)) for v in self._seed_states()}
        saved = {
            "weights": content,
            "epoch": self._epoch + epoch_done,
            "data": data_state,
            "seeds": seeds,
            "rng": random_state(),
        }
        torch.save(saved, path)

    def _seed_states(self) -> list:
        return [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def _load(self, path: str) -> None:
        with open(path, "rb") as saved:
            self._resumed = torch.load(saved, weights_only=True)

    # -- fit's events ------------------------------------------------------------------------------------------------

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise NnobsError(
                "nnobs.keras.Callback: build the model before fit (give it an Input), as Keras's own "
                "BackupAndRestore asks"
            )
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)  # its variables exist before its state is loaded
        params = [(v.path, v.value) for v in self.model.trainable_weights]
        steps = (self.params.get("epochs") or 0) * (self.params.get("steps") or 0)
        self.nnobs.start(
            FrameworkTrainer(params, lambda: through_file(self._save), lambda saved: through_file(self._load, saved)),
            target=steps or None,
        )
        self._restore()
        self._keep_losses()
        if not self.nnobs.live(KerasRates(optimizer), int(keras.ops.convert_to_numpy(optimizer.iterations))):
            # At its target already: no epoch at all (stop_training is looked at only after a step).
            self.model._initial_epoch = self.params.get("epochs") or 0

    def _restore(self) -> None:
        """Keras's own state from the run's checkpoint: weights, optimizer, seeds; the epoch; the place in the data."""
        resumed, self._resumed = self._resumed, None
        if resumed is None:
            return
        weights = os.path.join(self.nnobs.run.run_dir.path, ".keras-resume.weights.h5")  # type: ignore[union-attr]
        try:
            with open(weights, "wb") as out:
                out.write(resumed["weights"])
            self.model.load_weights(weights)
        finally:
            os.remove(weights)
        seeds = resumed.get("seeds") or {}
        for variable in self._seed_states():
            if variable.path in seeds:
                variable.assign(seeds[variable.path].numpy())
        self._rng = resumed.get("rng")  # set as the first step begins: making the loader's iterator draws from it
        self._epoch = self.model._initial_epoch = int(resumed["epoch"])  # fit's loop starts its epochs from here
        if resumed.get("data") is not None and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(resumed["data"])  # its shuffle of this epoch, and its place in it
            self._resumed_epoch = self._epoch

    def _keep_losses(self) -> None:
        """Keep each step's own loss as the model computes it: the loss fit reports is the epoch's running mean."""
        compute_loss = self.model.compute_loss

        def kept(*args: Any, **kwargs: Any) -> Any:
            loss = compute_loss(*args, **kwargs)
            if kwargs.get("training", True):
                self._loss = loss
            return loss

        self.model.compute_loss = kept

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._steps_done = epoch, 0
        if self.data is not None and epoch != self._resumed_epoch:
            shuffle_for(self.data, self.seed, epoch)  # each epoch's order from the seed and the epoch alone
        self._resumed_epoch = None

    def on_train_batch_begin(self, batch, logs=None):
        if self._rng is not None:
            set_random_state(self._rng)
            self._rng = None

    def on_train_batch_end(self, batch, logs=None):
        self._steps_done = batch + 1
        logs = logs or {}
        loss, self._loss = self._loss, None
        if loss is None:
            loss = logs.get("loss")  # a model whose train_step computes its loss another way: the running mean
        # The other values fit reports are running means over the epoch too, as Keras's progress bar shows them.
        if not self.nnobs.step_ended(loss, numbers_of(logs, leave_out=("loss",))):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self._steps_done >= (self.params.get("steps") or 0) > 0:
            self.nnobs.after_stop()  # stopped at the epoch's last step: its validation (a loader's seed) came since
        self._epoch, self._steps_done = epoch + 1, 0
        self.nnobs.metrics_logged(numbers_of({k: v for k, v in (logs or {}).items() if k.startswith("val_")}))

    def on_train_end(self, logs=None):
        self.model._initial_epoch = None  # Keras keeps it: a later fit of this model starts from its own epoch 0
        self.nnobs.end()
