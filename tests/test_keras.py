"""A real Keras 3 fit (the torch backend; a warmup, then cosine decay) in a real process under `nnobs run`, watched
and steered through nnobs.keras.Callback."""

from __future__ import annotations

import math
import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras on PyTorch, as the scripts run it
pytest.importorskip("keras", reason="the Keras tests need the test extra's Keras")

from conftest import batch_passes
from framework_support import (
    killed_or_failing_reads_crashed,
    resumes_with_the_losses_of_one_never_stopped,
    scripts_fixture,
    shows_its_loss_and_metrics,
    stops_with_exit_0,
    takes_eta_through_its_schedule,
)

WARMUP, PER_EPOCH, EPOCHS = 100, 20, 500
STEPS = PER_EPOCH * EPOCHS

# As a Keras user writes it (Keras 3, the torch backend): the callback in fit's place, given the loader it reads. The
# model writes each step's learning rate in use and loss to a trace file.
SCRIPT = f"""
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import keras
import torch
from torchdata.stateful_dataloader import StatefulDataLoader
import nnobs.keras

trace_path, epochs, pace, fail_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
keras.utils.set_random_seed(0)
trace = open(trace_path, "a")


class Net(keras.Sequential):
    def compute_loss(self, *args, **kwargs):
        loss = super().compute_loss(*args, **kwargs)
        step = int(keras.ops.convert_to_numpy(self.optimizer.iterations))
        if fail_at and step >= fail_at:
            raise RuntimeError(f"the loss could not be computed at step {{step}}")
        if kwargs.get("training", True):
            lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
            trace.write(f"{{step}} {{lr!r}} {{float(keras.ops.convert_to_numpy(loss))!r}} {{float(args[0].sum())!r}}\\n")
            trace.flush()
        return loss


model = Net([keras.Input((4,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dropout(0.1),
             keras.layers.Dense(2)])
schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps={STEPS}, warmup_target=0.01, warmup_steps={WARMUP})
model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
data = torch.Generator().manual_seed(0)
x = torch.randn(800, 4, generator=data)
y = (x[:, 0] * x[:, 1] > 0).long()
loader = StatefulDataLoader(torch.utils.data.TensorDataset(x[:640], y[:640]), batch_size=32, shuffle=True)
model.fit(loader, epochs=epochs, validation_data=(x[640:].numpy(), y[640:].numpy()), verbose=0,
          callbacks=[nnobs.keras.Callback(data=loader, pace=pace)])
print("fit returned; exit 0", flush=True)
"""


def factor(step: int) -> float:
    """CosineDecay's factor of its warmup target: a linear warmup, then half a cosine."""
    if step < WARMUP:
        return step / WARMUP
    return 0.5 * (1 + math.cos(math.pi * min(step - WARMUP, STEPS) / STEPS))


scripts = scripts_fixture(SCRIPT)


def test_a_keras_fit_shows_its_loss_and_metrics_takes_eta_through_its_schedule_and_stops(scripts, runs_root, monkeypatch):
    run, trace = scripts.start("keras", EPOCHS, pace=40)
    batch_passes(run, 160, what="160 steps", timeout=180)
    shows_its_loss_and_metrics(run, runs_root, {"accuracy", "val_loss", "val_accuracy"}, eta=0.01, target=STEPS, monkeypatch=monkeypatch)
    takes_eta_through_its_schedule(run, trace, runs_root, factor, new=0.002, rel=1e-5)
    stops_with_exit_0(run, runs_root)


def test_a_restarted_keras_fit_resumes_at_its_step_with_the_losses_of_one_never_stopped(scripts):
    resumes_with_the_losses_of_one_never_stopped(scripts, length=15, target=300, pace=30, stop_after=90)


def test_a_keras_fit_killed_or_failing_reads_crashed(scripts):
    killed_or_failing_reads_crashed(scripts, EPOCHS, "the loss could not be computed at step 30")


def test_a_keras_fit_ended_at_an_epochs_last_step_resumes_with_the_losses_of_one_never_stopped(scripts):
    # The validation after that step draws from PyTorch's random state (its loader's seed) before the next epoch's
    # first step, in the run never stopped as in the one that ended there.
    resumes_with_the_losses_of_one_never_stopped(scripts, length=15, target=300, pace=30, stop_after=0,
                                                 ends_at=5 * PER_EPOCH)
