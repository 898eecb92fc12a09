"""A real Transformers Trainer (warmup, then linear decay) in a real process under `nnobs run`, watched and steered
through nnobs.transformers.Callback: a tiny GPT-2 built from a config, learning synthetic token sequences."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the Transformers tests need the test extra's Transformers")

from streamlit.testing.v1 import AppTest

from conftest import REPO, batch_passes, events, records_with, wait_for
from nnobs.launching.lifecycle import run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

APP = str(REPO / "app.py")
WARMUP, STEPS = 100, 10_000

# As a Transformers user writes it: the callback in the Trainer's place, its checkpoint given to train(). The test's
# own callback and hook write each step's learning rate in use and loss to a trace file.
SCRIPT = f"""
import sys
import torch
import transformers
import nnobs.transformers

trace_path, target, pace, fail_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
transformers.set_seed(0)
config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
model = transformers.GPT2LMHeadModel(config)
data = torch.Generator().manual_seed(0)
starts = torch.randint(0, 32, (512, 1), generator=data)
tokens = (starts + torch.arange(16)) % 32  # counting sequences: each token the one before plus one
examples = [{{"input_ids": row, "labels": row}} for row in tokens]


class Trace(transformers.TrainerCallback):
    def __init__(self):
        self.file, self.step = open(trace_path, "a"), 0

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.step, self.optimizer = state.global_step, optimizer
        if fail_at and state.global_step >= fail_at:
            raise RuntimeError(f"the tokenizer failed at step {{state.global_step}}")

    def forward_done(self, module, inputs, outputs):
        if module.training:
            lr = self.optimizer.param_groups[0]["lr"]
            self.file.write(f"{{self.step}} {{lr!r}} {{outputs.loss.item()!r}}\\n")
            self.file.flush()


trace = Trace()
model.register_forward_hook(trace.forward_done)
args = transformers.TrainingArguments(
    output_dir="out", max_steps=target if target < {STEPS} else {STEPS}, per_device_train_batch_size=16,
    learning_rate=0.01, lr_scheduler_type="linear", warmup_steps={WARMUP}, logging_steps=50, eval_strategy="steps",
    eval_steps=50, save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
)
watch = nnobs.transformers.Callback(pace=pace)
trainer = transformers.Trainer(model=model, args=args, train_dataset=examples, eval_dataset=examples[:64],
                               callbacks=[watch, trace])
trainer.train(resume_from_checkpoint=watch.resume_from_checkpoint)
print("train returned; exit 0", flush=True)
"""


def factor(step: int) -> float:
    return step / WARMUP if step < WARMUP else max(0.0, (STEPS - step) / (STEPS - WARMUP))


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def train(tmp_path: Path, runs_root: Path):
    """train(name, target, pace, fail_at=0): the script started by `nnobs run NAME`; its run, and its trace's path."""
    started: list[RunDir] = []

    def start(name: str, target: int, pace: float, fail_at: int = 0) -> tuple[RunDir, Path]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.py").write_text(SCRIPT)
        trace = folder / "trace"
        launched = nnobs(runs_root, "run", name, "--", sys.executable, "train.py", str(trace), str(target), str(pace),
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
        step, lr, loss = line.split()
        steps[int(step)] = (float(lr), float(loss))
    return steps


def status(runs_root: Path, name: str, cwd: Path) -> dict:
    return json.loads(nnobs(runs_root, "status", name, "--json", cwd=cwd).stdout)


def test_a_trainer_shows_its_loss_and_metrics_takes_eta_through_warmup_and_decay_and_stops(train, runs_root, tmp_path,
                                                                                           monkeypatch):
    run, trace = train("hf", target=STEPS, pace=40)
    batch_passes(run, 160, what="the Trainer to train 160 steps", timeout=180)

    shown = status(runs_root, "hf", tmp_path)
    assert shown["state"] == "training" and 0 < shown["loss"] < 4
    assert {"eval_loss", "grad_norm", "lr"} <= set(shown["evaluations"]), shown["evaluations"]
    assert shown["eta"] == 0.01 and shown["lr"] < 0.01, "the base eta, and the decayed rate in use beside it"
    assert shown["target"] == STEPS, "the Trainer's max_steps is the run's target"

    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = "hf"
    page.run()
    assert not page.exception, page.exception
    specs = [json.loads(chart.proto.spec) for chart in page.get("vega_lite_chart")]
    titles = {s["title"]["text"] if isinstance(s.get("title"), dict) else s.get("title") for s in specs}
    assert {"Loss", "eval_loss", "grad_norm", "lr"} <= titles, titles

    sent = nnobs(runs_root, "set", "hf", "--eta", "0.002", cwd=tmp_path)
    assert sent.returncode == 0 and "acknowledged" in sent.stdout, sent.stdout + sent.stderr
    at = next(r["ack"][0] for r in records_with(run, "ack") if r["ack"][1]["cmd"] == "eta")
    steps = wait_for(lambda: (s := traced(trace)) and max(s) >= at + 50 and s, timeout=90, what="50 steps after eta")
    for step in range(at, at + 50):  # the step after the ack's batch is global step `at` (0-based)
        lr, _ = steps[step]
        assert lr == pytest.approx(0.002 * factor(step), rel=1e-9), f"step {step}: lr {lr}, not the new base's"

    assert nnobs(runs_root, "stop", "hf", cwd=tmp_path).returncode == 0
    wait_for(lambda: "train returned; exit 0" in run.worker_log.read_text(), what="the script to return from train")
    assert run_status(run, read_history(run)).state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text()


def test_a_restarted_trainer_resumes_at_its_step_with_the_losses_of_one_never_stopped(train, runs_root, tmp_path):
    whole_run, whole = train("whole", target=300, pace=0)
    broken_run, broken = train("broken", target=300, pace=30)
    batch_passes(broken_run, 90, what="the Trainer to be stopped to pass step 90", timeout=180)
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


def test_a_trainer_killed_or_failing_reads_crashed(train, runs_root, tmp_path):
    killed, _ = train("killed", target=STEPS, pace=50)
    batch_passes(killed, 20, what="the Trainer to train", timeout=180)
    os.kill(status(runs_root, "killed", tmp_path)["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: run_status(killed, read_history(killed)).state == "crashed", timeout=2,
             what="the killed Trainer to read crashed within 2 s")
    assert time.monotonic() - killed_at < 2

    failing, _ = train("failing", target=STEPS, pace=0, fail_at=30)
    error = wait_for(lambda: events(failing, "error"), timeout=180, what="the error recorded")[0]
    assert "RuntimeError: the tokenizer failed at step 30" in error["error"]
    wait_for(lambda: run_status(failing, read_history(failing)).state == "crashed", what="the run to read crashed")
