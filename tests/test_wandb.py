"""A script written for W&B: unchanged under `nnobs run NAME --wandb`, or with `import nnobs.wandb as wandb`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, batch_passes, events, records_with, wait_for
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import run_status

# As people write it for W&B: nothing of nnobs in it.
WANDB_SCRIPT = """
import sys, time
import wandb

crash_at = int(sys.argv[1]) if len(sys.argv) > 1 else -1
wandb.init(project="demo", config={"lr": 0.1})
try:
    for step in range(10**9):
        loss = 1.0 / (1.0 + step * wandb.config.lr)
        wandb.log({"train/loss": loss, "val/acc": 1.0 - loss, "examples": wandb.Image(None)})
        if step == crash_at:
            raise ValueError(f"the data ran out at step {step}")
        time.sleep(0.001)
finally:
    with open("finally-ran", "w") as said:
        said.write(str(step))
    wandb.finish()
"""


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(WANDB_SCRIPT)
    return tmp_path


def test_a_wandb_script_runs_unchanged_with_its_metrics_charted_and_stop_runs_its_finally(runs_root, script):
    started = nnobs(runs_root, "run", "demo", "--wandb", "--", sys.executable, "train.py", cwd=script)
    assert started.returncode == 0, started.stderr
    run = RunDir.named("demo", runs_root)
    batch_passes(run, 300, what="the W&B script to log 300 steps")
    losses = [r["loss"][1] for r in records_with(run, "loss")]
    assert losses[0] == 1.0 and min(losses) < 0.1, "its train/loss is the run's loss, step 0 at batch 1"
    names = {name for r in records_with(run, "metrics") for name in r["metrics"][1] if not name.startswith("system.")}
    assert names == {"val.acc"}, "val/acc charted as val.acc; the image left out (the worker's machine beside it)"
    status = json.loads(nnobs(runs_root, "status", "demo", "--json", cwd=script).stdout)
    assert status["state"] == "training" and status["batch"] >= 300

    stopped = nnobs(runs_root, "stop", "demo", cwd=script)
    assert stopped.returncode == 0, stopped.stderr
    assert (script / "finally-ran").exists(), "the script's finally block ran"
    history = read_history(run)
    assert run_status(run, history).state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text(), "stopped, not crashed: SystemExit(0)"
    assert "only numbers are charted; NoneType" in run.worker_log.read_text(), "what is left out is said once"


def test_an_exception_in_a_wandb_script_reads_crashed_with_its_message(runs_root, script):
    started = nnobs(runs_root, "run", "crashing", "--wandb", "--", sys.executable, "train.py", "50", cwd=script)
    assert started.returncode == 0, started.stderr
    run = RunDir.named("crashing", runs_root)
    error = wait_for(lambda: events(run, "error"), what="the crash recorded")[0]
    assert "the data ran out at step 50" in error["error"]
    wait_for(lambda: run_status(run, read_history(run)).state == "crashed", what="the run to read crashed")
    assert (script / "finally-ran").read_text() == "50", "the finally block ran"


def test_restart_from_the_page_or_cli_starts_the_wandb_script_the_same_way(runs_root, script):
    assert nnobs(runs_root, "run", "again", "--wandb", "--", sys.executable, "train.py", cwd=script).returncode == 0
    run = RunDir.named("again", runs_root)
    assert json.loads(run.launch.read_text())["wandb"] is True
    batch_passes(run, 50)
    restarted = nnobs(runs_root, "restart", "again", cwd=script)
    assert restarted.returncode == 0, restarted.stderr
    resumed = wait_for(lambda: len(found := events(run, "started")) == 2 and found[1], what="the second start")
    resumed_from = resumed["resumed_from"]
    first_after = wait_for(lambda: next((r for r in records_with(run, "loss") if r["loss"][0] > resumed_from
                                         and r.get("gen") == 2 and "window" in r), None), what="a loss after the restart")
    highest, at = first_after["window"][1][3:5]  # the window's highest loss and its batch: step 0's, 1.0
    assert resumed_from >= 50 and (highest, at) == (1.0, resumed_from + 1), "its step 0 is the batch after the run's"


@pytest.mark.parametrize("flag", [True, False])
def test_only_a_script_run_with_the_flag_finds_nnobs_as_its_wandb(runs_root, tmp_path, flag):
    (tmp_path / "which.py").write_text(
        "try:\n    import wandb\n    print('wandb from', wandb.__file__)\nexcept ImportError as err:\n"
        "    print('no wandb:', err)\n"
    )
    name = "with-flag" if flag else "without"
    nnobs(runs_root, "run", name, *(["--wandb"] if flag else []), "--", sys.executable, "which.py", cwd=tmp_path)
    said = wait_for(lambda: next((line for line in RunDir.named(name, runs_root).worker_log.read_text().splitlines()
                                  if line.startswith(("wandb from", "no wandb"))), None), what="the script's word")
    assert ("nnobs/wandb.py" in said) == flag, said


def test_values_of_one_step_are_merged_and_each_key_becomes_a_metric_name(runs_root, monkeypatch):
    import nnobs.wandb as wandb
    from nnobs.training.integrations.wandb import metric_name

    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    with pytest.raises(NnobsError, match=r"wandb.log\(\) before wandb.init\(\)"):
        wandb.log({"loss": 1.0})
    run = wandb.init(project="merged", config={"lr": 0.1})
    assert wandb.config.lr == 0.1 and wandb.run is run
    wandb.log({"train/loss": 0.5}, step=0, commit=False)
    wandb.log({"val/acc": 0.25})  # the same step: merged into its row, then logged
    wandb.log({"train/loss": 0.4, "epoch": 1}, step=5)
    wandb.log({"train/loss": 0.9}, step=3)  # back in steps: left out, as W&B does
    wandb.finish()
    nnobs_run = RunDir.named("merged", runs_root)
    losses = [r["loss"] for r in records_with(nnobs_run, "loss") if "window" in r or r["loss"][0] > 0]
    assert [1, 0.5] in losses and [6, 0.4] in losses and all(loss[1] != 0.9 for loss in losses)
    metrics = {name: value for r in records_with(nnobs_run, "metrics") for name, value in r["metrics"][1].items()
               if not name.startswith("system.")}  # the worker's machine rides beside the script's metrics
    assert set(metrics) == {"val.acc", "epoch"}
    assert run_status(nnobs_run, read_history(nnobs_run)).state == "stopped"
    assert [metric_name(k) for k in ("val/acc", "eval loss", "1st")] == ["val.acc", "eval_loss", "_1st"]


def test_finish_while_an_exception_goes_up_records_the_crash(runs_root, monkeypatch):
    import nnobs.wandb as wandb

    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    wandb.init(name="falls")
    with pytest.raises(ZeroDivisionError):
        try:
            wandb.log({"loss": 1.0})
            1 / 0
        finally:
            wandb.finish()
    run = RunDir.named("falls", runs_root)
    assert "division by zero" in events(run, "error")[0]["error"]
