"""A real Lightning fit in a real process under `nnobs run`, watched and steered through nnobs.lightning.Callback."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning", reason="the Lightning tests need the test extra's Lightning")

from conftest import batch_passes
from framework_support import (
    killed_or_failing_reads_crashed,
    resumes_with_the_losses_of_one_never_stopped,
    scripts_fixture,
    shows_its_loss_and_metrics,
    stops_with_exit_0,
    takes_eta_through_its_schedule,
    warmup_then_linear,
)

WARMUP, STEPS = 100, 10_000

# As a Lightning user writes it, with the callback in the Trainer's place; the model writes each step's learning
# rate in use and loss to a trace file, for the test to compare.
SCRIPT = f"""
import sys
import lightning.pytorch as pl
import torch
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader
import nnobs.lightning

trace_path, target, pace, fail_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
WARMUP, STEPS = {WARMUP}, {STEPS}


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 2))
        self.trace = open(trace_path, "a")

    def training_step(self, batch, batch_idx):
        if fail_at and self.global_step >= fail_at:
            raise RuntimeError(f"the batch could not be read at step {{self.global_step}}")
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.trace.write(f"{{self.global_step}} {{lr!r}} {{loss.item()!r}}\\n")
        self.trace.flush()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
        def factor(step):  # warmup, then linear decay: Transformers' get_linear_schedule_with_warmup
            return step / WARMUP if step < WARMUP else max(0.0, (STEPS - step) / (STEPS - WARMUP))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {{"optimizer": optimizer, "lr_scheduler": {{"scheduler": scheduler, "interval": "step"}}}}


pl.seed_everything(0, verbose=False)
torch.set_num_threads(1)
data = torch.Generator().manual_seed(0)
x = torch.randn(800, 4, generator=data)
y = (x[:, 0] * x[:, 1] > 0).long()
train = torch.utils.data.TensorDataset(x[:640], y[:640])
test = torch.utils.data.TensorDataset(x[640:], y[640:])
trainer = pl.Trainer(max_steps=target, val_check_interval=50, check_val_every_n_epoch=None, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     accelerator="cpu", callbacks=[nnobs.lightning.Callback(pace=pace)])
trainer.fit(Net(), StatefulDataLoader(train, batch_size=32, shuffle=True), StatefulDataLoader(test, batch_size=160))
print("fit returned; exit 0", flush=True)
"""


factor = warmup_then_linear(WARMUP, STEPS)


scripts = scripts_fixture(SCRIPT)


def test_a_lightning_fit_shows_its_loss_and_metrics_takes_eta_through_its_schedule_and_stops(scripts, runs_root, monkeypatch):
    run, trace = scripts.start("lightning", STEPS, pace=40)
    batch_passes(run, 200, what="200 steps", timeout=180)
    shows_its_loss_and_metrics(run, runs_root, {"train_acc", "val_loss"}, eta=0.01, target=STEPS, monkeypatch=monkeypatch)
    takes_eta_through_its_schedule(run, trace, runs_root, factor, new=0.002, rel=1e-9)
    stops_with_exit_0(run, runs_root)


def test_a_restarted_lightning_fit_resumes_at_its_step_with_the_losses_of_one_never_stopped(scripts):
    resumes_with_the_losses_of_one_never_stopped(scripts, length=400, target=400, pace=60, stop_after=120)


def test_a_lightning_fit_killed_or_failing_reads_crashed(scripts):
    killed_or_failing_reads_crashed(scripts, STEPS, "the batch could not be read at step 30")


def test_a_lightning_fit_ended_at_a_validation_step_resumes_with_the_losses_of_one_never_stopped(scripts):
    # A validation after that step (val_check_interval=50) runs before the next step, stopped there or not.
    resumes_with_the_losses_of_one_never_stopped(scripts, length=400, target=400, pace=60, stop_after=0, ends_at=150)
