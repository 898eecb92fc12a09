"""A real Keras 3 fit (the torch backend; a warmup, then cosine decay) in a real process under `nnobs run`, watched
and steered through nnobs.keras.Callback."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras on PyTorch, as the scripts run it
pytest.importorskip("keras", reason="the Keras tests need the test extra's Keras")

from streamlit.testing.v1 import AppTest

from conftest import REPO, batch_passes, events, records_with, wait_for
from nnobs.launching.lifecycle import run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

APP = str(REPO / "app.py")
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


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def keras_fit(tmp_path: Path, runs_root: Path):
    """keras_fit(name, epochs, pace, fail_at=0): the script started by `nnobs run NAME`; its run, and its trace's path."""
    started: list[RunDir] = []

    def start(name: str, epochs: int, pace: float, fail_at: int = 0) -> tuple[RunDir, Path]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.py").write_text(SCRIPT)
        trace = folder / "trace"
        launched = nnobs(runs_root, "run", name, "--", sys.executable, "train.py", str(trace), str(epochs), str(pace),
                         str(fail_at), cwd=folder)
        assert launched.returncode == 0, launched.stderr
        run = RunDir.named(name, runs_root)
        started.append(run)
        return run, trace

    yield start
    for run in started:
        nnobs(runs_root, "stop", run.name, cwd=tmp_path)


def traced(trace: Path) -> dict[int, tuple[float, float]]:
    """Per global step its learning rate and loss; a step trained again after a restart is its newest."""
    steps = {}
    for line in trace.read_text().splitlines():
        step, lr, loss, *_ = line.split()
        steps[int(step)] = (float(lr), float(loss))
    return steps


def status(runs_root: Path, name: str, cwd: Path) -> dict:
    return json.loads(nnobs(runs_root, "status", name, "--json", cwd=cwd).stdout)


def test_a_keras_fit_shows_its_loss_and_metrics_takes_eta_through_its_schedule_and_stops(keras_fit, runs_root, tmp_path,
                                                                                           monkeypatch):
    run, trace = keras_fit("keras", epochs=EPOCHS, pace=40)
    batch_passes(run, 160, what="the fit to train 160 steps", timeout=180)

    shown = status(runs_root, "keras", tmp_path)
    assert shown["state"] == "training" and 0 < shown["loss"] < 4
    assert {"accuracy", "val_loss", "val_accuracy", "lr"} <= set(shown["evaluations"]), shown["evaluations"]
    assert shown["eta"] == 0.01 and shown["lr"] < 0.01, "the base eta, and the decayed rate in use beside it"
    assert shown["target"] == STEPS, "fit's epochs times its steps an epoch are the run's target"

    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = "keras"
    page.run()
    assert not page.exception, page.exception
    specs = [json.loads(chart.proto.spec) for chart in page.get("vega_lite_chart")]
    titles = {s["title"]["text"] if isinstance(s.get("title"), dict) else s.get("title") for s in specs}
    assert {"Loss", "accuracy", "val_loss", "lr"} <= titles, titles

    sent = nnobs(runs_root, "set", "keras", "--eta", "0.002", cwd=tmp_path)
    assert sent.returncode == 0 and "acknowledged" in sent.stdout, sent.stdout + sent.stderr
    at = next(r["ack"][0] for r in records_with(run, "ack") if r["ack"][1]["cmd"] == "eta")
    steps = wait_for(lambda: (s := traced(trace)) and max(s) >= at + 50 and s, timeout=90, what="50 steps after eta")
    for step in range(at, at + 50):  # the step after the ack's batch is global step `at` (0-based)
        lr, _ = steps[step]
        assert lr == pytest.approx(0.002 * factor(step), rel=1e-5)  # Keras's schedule computes in float32, f"step {step}: lr {lr}, not the new base's"

    assert nnobs(runs_root, "stop", "keras", cwd=tmp_path).returncode == 0
    wait_for(lambda: "fit returned; exit 0" in run.worker_log.read_text(), what="the script to return from train")
    assert run_status(run, read_history(run)).state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text()


def test_a_restarted_keras_fit_resumes_at_its_step_with_the_losses_of_one_never_stopped(keras_fit, runs_root, tmp_path):
    whole_run, whole = keras_fit("whole", epochs=15, pace=0)
    broken_run, broken = keras_fit("broken", epochs=15, pace=30)
    batch_passes(broken_run, 90, what="the fit to be stopped to pass step 90", timeout=180)
    assert nnobs(runs_root, "stop", "broken", cwd=tmp_path).returncode == 0
    stopped_at = events(broken_run, "shutdown")[-1]["event"][0]
    print(f"stopped at step {stopped_at}")
    assert "the next start applies it" in nnobs(runs_root, "set", "broken", "--pace", "0", cwd=tmp_path).stdout
    assert nnobs(runs_root, "restart", "broken", cwd=tmp_path).returncode == 0
    for run in (whole_run, broken_run):
        wait_for(lambda run=run: events(run, "target_reached"), timeout=240, what=f"{run.name} at its target 300")
    assert events(broken_run, "started")[-1]["resumed_from"] == stopped_at
    reference, resumed = traced(whole), traced(broken)
    for step in range(stopped_at, stopped_at + 50):
        assert resumed[step] == reference[step], f"step {step}: (lr, loss) {resumed[step]} vs {reference[step]}"


def test_a_keras_fit_killed_or_failing_reads_crashed(keras_fit, runs_root, tmp_path):
    killed, _ = keras_fit("killed", epochs=EPOCHS, pace=50)
    batch_passes(killed, 20, what="the fit to train", timeout=180)
    os.kill(status(runs_root, "killed", tmp_path)["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: run_status(killed, read_history(killed)).state == "crashed", timeout=2,
             what="the killed fit to read crashed within 2 s")
    assert time.monotonic() - killed_at < 2

    failing, _ = keras_fit("failing", epochs=EPOCHS, pace=0, fail_at=30)
    error = wait_for(lambda: events(failing, "error"), timeout=180, what="the error recorded")[0]
    assert "RuntimeError: the loss could not be computed at step 30" in error["error"]
    wait_for(lambda: run_status(failing, read_history(failing)).state == "crashed", what="the run to read crashed")
