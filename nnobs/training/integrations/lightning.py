"""Lightning for nnobs: one callback in the Trainer's own place watches and steers its training.

    trainer = lightning.Trainer(max_steps=5000, callbacks=[nnobs.lightning.Callback("my-run")])
    trainer.fit(model, data)

Every training step's loss and every metric the model logs (self.log; read up to 20 times a second) are on the page; eta is the base learning rate
the schedule scales; pace, tell-state, stop (at the next step, with Lightning's own teardown) and the target (the step
limit: Lightning's max_steps follows it, raised or lowered live) work as for any run. A restart resumes through
Lightning's own checkpoint (written by trainer.save_checkpoint and kept in the run's checkpoint): global step, epoch,
optimizer, schedule, the random state, and, with a resumable loader as Lightning asks for one (torchdata's
StatefulDataLoader in DataLoader's place), the place in the data. Needs Lightning: pip install 'nnobs[lightning]'.
"""

from __future__ import annotations

import io
import time
from typing import Any

from nnobs.protocol.errors import MissingExtra

try:
    import lightning.pytorch as pl
    import torch
except ImportError as err:
    raise MissingExtra(
        f"nnobs.lightning needs Lightning, which is not installed ({err}): pip install 'nnobs[lightning]'"
    ) from err

from nnobs.training.integrations.framework import FrameworkRun, FrameworkTrainer, torch_params
from nnobs.training.integrations.metrics import as_number, numbers_of
from nnobs.training.integrations.torch import TorchTrainer, random_state, set_random_state
from nnobs.training.sdk import through_file

METRICS_EVERY_S = 0.05  # the values the model logs are read 20 times a second at most; the loss every step
# Lightning calls every hook of every callback that is callable, each inside a profiler's context: about 1 us each,
# five a step that this callback has no use for. Set to None on the instance, they are skipped.
UNUSED_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)


class Callback(pl.Callback):
    """nnobs.lightning.Callback(name, **settings): the run NAME (under `nnobs run NAME`, that run) of this Trainer's
    fit. settings: eta, target (default: the Trainer's max_steps), report_every, pace, min_free_mb, kept_mb, wait_at_target,
    root, as nnobs.Run takes them."""

    def __init__(self, name: str | None = None, **settings: Any):
        super().__init__()
        self.nnobs = FrameworkRun(name, settings, "lightning")
        self._metrics_at = 0.0  # when the logged values are next read
        self._rng: dict[str, Any] | None = None  # the random state a resumed fit goes on with
        self._accumulated: list = []  # the losses of an optimizer step's micro-batches, under gradient accumulation
        self._limit_set: int | None = None  # the target last given to Lightning as its step limit
        for hook in UNUSED_STEP_HOOKS:
            setattr(self, hook, None)

    # -- start: before Lightning restores, then once its optimizer is made ------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return

        def save() -> bytes:
            # What trainer.save_checkpoint(path) writes, kept in memory, and without its barrier: under DDP only the
            # rank holding the run saves.
            written = io.BytesIO()
            torch.save(trainer._checkpoint_connector.dump_checkpoint(weights_only=False), written)
            return written.getvalue()

        def load(path: str) -> None:
            # What fit(ckpt_path=...) does, from the run's checkpoint: Lightning restores the model, callbacks,
            # optimizers, schedules and loops from it as the fit starts (its restore comes after this hook).
            trainer._checkpoint_connector.resume_start(path)

        model_trainer = FrameworkTrainer(torch_params(pl_module), save, lambda saved: through_file(load, saved))
        self.nnobs.start(model_trainer, target=trainer.max_steps if trainer.max_steps > 0 else None)
        self._follow_target(trainer)  # a run resumed at the code's max_steps, its target raised since, goes on

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.nnobs.run is None:
            return
        if self._rng is not None:
            set_random_state(self._rng)
            self._rng = None
        # Lightning's first checkpoint imports what it needs (OmegaConf, some 50 ms): paid here, as the fit starts,
        # rather than by the first clock checkpoint in the middle of training.
        trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        schedulers = trainer.lr_scheduler_configs
        self._follow_target(trainer)
        rates = TorchTrainer(pl_module, trainer.optimizers[0], schedulers[0].scheduler if schedulers else None)
        if not self.nnobs.live(rates, trainer.global_step):
            trainer.should_stop = True

    # -- every step --------------------------------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if trainer.accumulate_grad_batches > 1:  # a run's batch is an optimizer step: the mean of its micro-batches
            self._accumulated.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            if (batch_idx + 1) % trainer.accumulate_grad_batches and batch_idx + 1 != trainer.num_training_batches:
                return
            losses, self._accumulated = self._accumulated, []
            numbers = [n for n in map(as_number, losses) if n is not None]
            loss = sum(numbers) / len(numbers) if numbers else None
        metrics = {}
        now = time.monotonic()
        if now >= self._metrics_at:  # Lightning gathers its logged values afresh each time they are asked for
            metrics = numbers_of(trainer.callback_metrics, leave_out=("loss",))
            self._metrics_at = now + METRICS_EVERY_S
        if not self.nnobs.step_ended(loss, metrics):
            trainer.should_stop = True
        elif self.nnobs.target != self._limit_set:  # a step's hook costs every step: Lightning's loops are reached
            self._follow_target(trainer)  # through properties, 1.6 µs a step for a limit that seldom moves

    def _follow_target(self, trainer: pl.Trainer) -> None:
        """Lightning's step limit is the run's target: it ends training there, raised or lowered live."""
        self._limit_set = trainer.fit_loop.epoch_loop.max_steps = self.nnobs.target

    # -- end ---------------------------------------------------------------------------------------------------------

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.nnobs.end(exception)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The values of a validation run after the last step (at the target) are the run's last word.
        self.nnobs.metrics_logged(numbers_of(trainer.callback_metrics, leave_out=("loss",)))
        self.nnobs.end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.nnobs.end()

    # -- the random state, in Lightning's checkpoint with the callback's --------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The random state (dropout, random augmentation) at the step boundary the checkpoint is taken at."""
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict  # set back as training begins: restoring draws nothing after that
