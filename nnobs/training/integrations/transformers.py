"""Transformers for nnobs: one callback in the Trainer's own place watches and steers its training.

    watch = nnobs.transformers.Callback("my-run")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[watch])
    trainer.train(resume_from_checkpoint=watch.resume_from_checkpoint)

Every step's training loss (the model's own, as it computes it) and every value the Trainer logs (eval_loss,
grad_norm, ...) are on the page; eta is the base learning rate the Trainer's schedule scales (warmup, linear,
cosine, constant alike); pace, tell-state and stop (at the next step, with the Trainer's own teardown) work as for any
run, and the target is the step limit, lowered live or raised up to the Trainer's max_steps (its schedule is made
for that many). A restart resumes through the Trainer's own resume_from_checkpoint from a checkpoint in its own
format (weights, optimizer, scheduler, trainer state, random state) kept in the run's checkpoint: the global step,
epoch, place in the data, schedule and random state come back. Needs: pip install 'nnobs[transformers]'.
"""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import tempfile
from typing import Any

import numpy as np

from nnobs.protocol.errors import MissingExtra, NnobsError

try:
    import torch
    import transformers
except ImportError as err:
    raise MissingExtra(
        f"nnobs.transformers needs Transformers, which is not installed ({err}): pip install 'nnobs[transformers]'"
    ) from err

from nnobs.training.integrations.framework import FrameworkRun, FrameworkTrainer, torch_params
from nnobs.training.integrations.metrics import numbers_of
from nnobs.training.integrations.torch import TorchTrainer
from nnobs.training.sdk import through_file

# What the Trainer logs that is no measurement of the model, or that nnobs shows by itself (the loss every step; the
# learning rate in use as lr; its own speed): names, and name endings.
NOT_CHARTED = ("loss", "learning_rate", "epoch", "total_flos")
NOT_CHARTED_ENDINGS = ("_runtime", "_per_second", "_flos")


class Callback(transformers.TrainerCallback):
    """nnobs.transformers.Callback(name, **settings): the run NAME (under `nnobs run NAME`, that run) of this
    Trainer's training. settings: eta, target (default: the Trainer's max_steps), report_every, pace, min_free_mb, kept_mb,
    wait_at_target, root, as nnobs.Run takes them. Give trainer.train(resume_from_checkpoint=...) its
    resume_from_checkpoint, so that a restart goes on where the run stopped."""

    def __init__(self, name: str | None = None, **settings: Any):
        self.nnobs = FrameworkRun(name, settings, "transformers")
        self._folder: str | None = None  # where the run's checkpoint is unpacked for the Trainer to resume from
        self._resume: str | None = None
        self._handed_over = False  # whether resume_from_checkpoint was asked for before train()
        self._losses: list[torch.Tensor] = []  # the model's losses in the step being trained
        self._hook: Any = None
        self._state: Any = None  # the Trainer's TrainerState, once training
        self._optimizer: Any = None
        self._scheduler: Any = None
        self._model: Any = None

    @property
    def resume_from_checkpoint(self) -> str | None:
        """The folder the Trainer resumes from (its own checkpoint format, unpacked from the run's checkpoint), or None
        for a fresh run. Asking for it takes the run."""
        self._handed_over = True
        return self._resume

    # -- the run's checkpoint: the Trainer's own format, packed into one file ------------------------------------------

    def _save(self, path: str) -> None:
        with tempfile.TemporaryDirectory(prefix="nnobs-transformers-") as folder:
            model = self._model
            model.save_pretrained(folder)  # the weights (and the config) as the Trainer reads them
            torch.save(self._optimizer.state_dict(), os.path.join(folder, "optimizer.pt"))
            torch.save(self._scheduler.state_dict(), os.path.join(folder, "scheduler.pt"))
            self._state.save_to_json(os.path.join(folder, "trainer_state.json"))
            rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()}
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                rng["cuda"] = torch.cuda.random.get_rng_state()
            torch.save(rng, os.path.join(folder, "rng_state.pth"))
            with tarfile.open(path, "w") as packed:
                packed.add(folder, arcname=".")

    def _load(self, path: str) -> None:
        folder = tempfile.mkdtemp(prefix="nnobs-transformers-")
        with tarfile.open(path) as packed:
            packed.extractall(folder, filter="data")
        self._folder = self._resume = folder

    def _start(self, model: Any, max_steps: int | None) -> None:
        if self.nnobs.run is not None:
            return
        self._model = model
        trainer = FrameworkTrainer(
            torch_params(model), lambda: through_file(self._save), lambda saved: through_file(self._load, saved)
        )
        self.nnobs.start(trainer, target=max_steps)

    # -- the Trainer's events ----------------------------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """The run is taken as the Trainer is made: resume_from_checkpoint can then be given to train()."""
        self._start(model, args.max_steps if args.max_steps > 0 else None)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._start(model, args.max_steps if args.max_steps > 0 else None)
        run = self.nnobs.run
        assert run is not None
        if run.session.resumed_from and self._resume is not None and not self._handed_over:
            self.nnobs.end(NnobsError("the run resumes, but train() was not given its checkpoint"))
            raise NnobsError(
                f"run {run.run_dir.name} resumes from batch {run.session.resumed_from:,}, but trainer.train() was not "
                "given its checkpoint: call trainer.train(resume_from_checkpoint=callback.resume_from_checkpoint)"
            )
        self._model, self._state = model, state
        self._optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrappers hold the real ones
        self._scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        self._hook = model.register_forward_hook(self._keep_loss)
        if not self.nnobs.live(TorchTrainer(model, self._optimizer, self._scheduler), state.global_step):
            control.should_training_stop = True
        return control

    def _keep_loss(self, module, inputs, outputs) -> None:
        """The model's loss in training (a model given labels computes it): every step's, not only logged ones."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else getattr(outputs, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            self._losses.append(loss.detach())

    def on_step_end(self, args, state, control, **kwargs):
        losses, self._losses = self._losses, []
        loss = torch.stack(losses).float().mean() if losses else None
        if not self.nnobs.step_ended(loss, {}):
            control.should_training_stop = True  # the run ended at its target, or was stopped
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self.nnobs.after_stop()  # an evaluation after the step training stopped at (its loader drew a seed)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        measured = {key: value for key, value in logs.items() if not key.endswith(NOT_CHARTED_ENDINGS)}
        self.nnobs.metrics_logged(numbers_of(measured, leave_out=NOT_CHARTED), at=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self._end()

    def _end(self, error: BaseException | None = None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.nnobs.end(error)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
