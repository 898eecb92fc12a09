"""A real Lightning fit in a real process under `nnobs run`, watched and steered through nnobs.lightning.Callback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="the Lightning tests need the test extra's Lightning")

from streamlit.testing.v1 import AppTest

from conftest import REPO, batch_passes, events, records_with, wait_for
from nnobs.launching.lifecycle import run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

APP = str(REPO / "app.py")
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


def factor(step: int) -> float:
    return step / WARMUP if step < WARMUP else max(0.0, (STEPS - step) / (STEPS - WARMUP))


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def fit(tmp_path: Path, runs_root: Path):
    """fit(name, target, pace, fail_at=0): the script started by `nnobs run NAME`; its run, and its trace's path."""
    (tmp_path / "train.py").write_text(SCRIPT)
    started: list[RunDir] = []

    def start(name: str, target: int, pace: float, fail_at: int = 0) -> tuple[RunDir, Path]:
        trace = tmp_path / f"{name}.trace"
        launched = nnobs(runs_root, "run", name, "--", sys.executable, "train.py", str(trace), str(target), str(pace),
                         str(fail_at), cwd=tmp_path)
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
        step, lr, loss = line.split()
        steps[int(step)] = (float(lr), float(loss))
    return steps


def status(runs_root: Path, name: str, cwd: Path) -> dict:
    return json.loads(nnobs(runs_root, "status", name, "--json", cwd=cwd).stdout)


def test_a_lightning_fit_shows_its_loss_and_metrics_takes_eta_through_its_schedule_and_stops(fit, runs_root, tmp_path,
                                                                                             monkeypatch):
    run, trace = fit("lit", target=STEPS, pace=150)
    batch_passes(run, 200, what="the Lightning fit to train 200 steps", timeout=120)

    shown = status(runs_root, "lit", tmp_path)
    assert shown["state"] == "training" and 0 < shown["loss"] < 1
    assert {"train_acc", "val_loss", "lr"} <= set(shown["evaluations"]), shown["evaluations"]
    assert shown["eta"] == 0.01 and shown["lr"] < 0.01, "the base eta, and the schedule's rate in use beside it"

    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = "lit"
    page.run()
    assert not page.exception, page.exception
    titles = {json.loads(chart.proto.spec).get("title", {}).get("text") if isinstance(
        json.loads(chart.proto.spec).get("title"), dict) else json.loads(chart.proto.spec).get("title")
        for chart in page.get("vega_lite_chart")}
    assert {"Loss", "train_acc", "val_loss", "lr"} <= titles, titles
    eta_tile = next(m for m in page.metric if m.label == "Eta")
    assert eta_tile.value == "0.01" and "in use" in (eta_tile.proto.delta or "")

    sent = nnobs(runs_root, "set", "lit", "--eta", "0.002", cwd=tmp_path)
    assert sent.returncode == 0 and "acknowledged" in sent.stdout, sent.stdout + sent.stderr
    at = next(r["ack"][0] for r in records_with(run, "ack") if r["ack"][1]["cmd"] == "eta")
    steps = wait_for(lambda: (s := traced(trace)) and max(s) >= at + 50 and s, timeout=60, what="50 steps after eta")
    for step in range(at, at + 50):  # the step after the ack's batch is global step `at` (0-based)
        lr, _ = steps[step]
        assert lr == pytest.approx(0.002 * factor(step), rel=1e-9), f"step {step}: lr {lr}, not the new base's"

    stopped = nnobs(runs_root, "stop", "lit", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: "fit returned; exit 0" in run.worker_log.read_text(), what="the script to return from fit")
    assert run_status(run, read_history(run)).state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text()


def test_a_restarted_lightning_fit_resumes_at_its_step_with_the_losses_of_one_never_stopped(fit, runs_root, tmp_path):
    whole_run, whole = fit("whole", target=400, pace=0)
    broken_run, broken = fit("broken", target=400, pace=60)
    batch_passes(broken_run, 120, what="the fit to be stopped to pass step 120", timeout=120)
    assert nnobs(runs_root, "stop", "broken", cwd=tmp_path).returncode == 0
    stopped_at = events(broken_run, "shutdown")[-1]["event"][0]
    assert "the next start applies it" in nnobs(runs_root, "set", "broken", "--pace", "0", cwd=tmp_path).stdout
    assert nnobs(runs_root, "restart", "broken", cwd=tmp_path).returncode == 0
    for run in (whole_run, broken_run):
        wait_for(lambda run=run: events(run, "target_reached"), timeout=180, what=f"{run.name} at its target 400")
    started = events(broken_run, "started")[-1]
    assert started["resumed_from"] == stopped_at, "the run resumes at the step it stopped at"
    print(f"stopped at step {stopped_at}")
    reference, resumed = traced(whole), traced(broken)
    for step in range(stopped_at, stopped_at + 50):
        assert resumed[step][1] == reference[step][1], f"step {step}: loss {resumed[step][1]} vs {reference[step][1]}"
        assert resumed[step][0] == reference[step][0], "and the schedule's rate"


def test_a_lightning_fit_killed_or_failing_reads_crashed(fit, runs_root, tmp_path):
    killed, _ = fit("killed", target=STEPS, pace=100)
    batch_passes(killed, 20, what="the fit to train", timeout=120)
    pid = status(runs_root, "killed", tmp_path)["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: run_status(killed, read_history(killed)).state == "crashed", timeout=2,
             what="the killed fit to read crashed within 2 s")
    assert time.monotonic() - killed_at < 2

    failing, _ = fit("failing", target=STEPS, pace=0, fail_at=30)
    error = wait_for(lambda: events(failing, "error"), timeout=120, what="the error recorded")[0]
    assert "RuntimeError: the batch could not be read at step 30" in error["error"]
    wait_for(lambda: run_status(failing, read_history(failing)).state == "crashed", what="the run to read crashed")
    assert status(runs_root, "failing", tmp_path)["error"].endswith("the batch could not be read at step 30")
