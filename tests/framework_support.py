"""What the Lightning, Transformers and Keras tests share: a training script started by `nnobs run` in its own folder,
its trace of each step's learning rate and loss, and the checks every framework's callback must pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, batch_passes, events, records_with, wait_for
from nnobs.launching.lifecycle import run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

APP = str(REPO / "app.py")


def nnobs(runs_root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def status(runs_root: Path, name: str, cwd: Path) -> dict:
    return json.loads(nnobs(runs_root, "status", name, "--json", cwd=cwd).stdout)


def traced(trace: Path) -> dict[int, tuple[float, float]]:
    """Per global step (0-based) its learning rate in use and its loss; a step trained again after a restart, or
    evaluated after its training, is its newest line."""
    steps = {}
    for line in trace.read_text().splitlines():
        step, lr, loss, *_ = line.split()
        steps[int(step)] = (float(lr), float(loss))
    return steps


@dataclass
class Scripts:
    """The framework's script (SCRIPT: argv trace, steps or epochs, pace, fail_at), started under `nnobs run`."""

    script: str
    runs_root: Path
    folder: Path
    started: list[RunDir]

    def start(self, name: str, length: int, pace: float, fail_at: int = 0) -> tuple[RunDir, Path]:
        folder = self.folder / name
        folder.mkdir()
        (folder / "train.py").write_text(self.script)
        trace = folder / "trace"
        launched = nnobs(self.runs_root, "run", name, "--", sys.executable, "train.py", str(trace), str(length),
                         str(pace), str(fail_at), cwd=folder)
        assert launched.returncode == 0, launched.stderr
        run = RunDir.named(name, self.runs_root)
        self.started.append(run)
        return run, trace

    def stop_all(self) -> None:
        for run in self.started:
            nnobs(self.runs_root, "stop", run.name, cwd=self.folder)


def scripts_fixture(script: str):
    """A test module's `scripts` fixture: its SCRIPT started under `nnobs run`, every run stopped at the end."""

    @pytest.fixture
    def scripts(tmp_path: Path, runs_root: Path):
        started = Scripts(script, runs_root, tmp_path, [])
        yield started
        started.stop_all()

    return scripts


def warmup_then_linear(warmup: int, steps: int) -> Callable[[int], float]:
    """Transformers' get_linear_schedule_with_warmup factor: up from 0 over warmup steps, then down to 0 at steps."""
    return lambda step: step / warmup if step < warmup else max(0.0, (steps - step) / (steps - warmup))


def shows_its_loss_and_metrics(run: RunDir, runs_root: Path, metrics: set[str], eta: float, target: int,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss and the framework's metrics in `status --json` and on the page; the base eta with the rate in use."""
    shown = status(runs_root, run.name, runs_root)
    assert shown["state"] == "training" and 0 < shown["loss"] < 5
    assert metrics | {"lr"} <= set(shown["evaluations"]), shown["evaluations"]
    assert shown["eta"] == eta and shown["lr"] < eta, "the base eta, and the schedule's rate in use beside it"
    assert shown["target"] == target, "the framework's step limit is the run's target"
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = run.name
    page.run()
    assert not page.exception, page.exception
    specs = [json.loads(chart.proto.spec) for chart in page.get("vega_lite_chart")]
    titles = {s["title"]["text"] if isinstance(s.get("title"), dict) else s.get("title") for s in specs}
    assert {"Loss", "lr"} | metrics <= titles, titles
    eta_tile = next(m for m in page.metric if m.label == "Eta")
    assert eta_tile.value == f"{eta:g}" and "in use" in (eta_tile.proto.delta or "")


def takes_eta_through_its_schedule(run: RunDir, trace: Path, runs_root: Path, factor: Callable[[int], float],
                                   new: float, rel: float = 1e-9) -> None:
    """A new eta from the CLI: for each of the next 50 steps the rate in use is the new base times the schedule's
    factor."""
    sent = nnobs(runs_root, "set", run.name, "--eta", str(new), cwd=runs_root)
    assert sent.returncode == 0 and "acknowledged" in sent.stdout, sent.stdout + sent.stderr
    at = next(r["ack"][0] for r in records_with(run, "ack") if r["ack"][1]["cmd"] == "eta")
    steps = wait_for(lambda: (s := traced(trace)) and max(s) >= at + 50 and s, timeout=120, what="50 steps after eta")
    for step in range(at, at + 50):  # the step after the ack's batch is global step `at` (0-based)
        lr, _ = steps[step]
        assert lr == pytest.approx(new * factor(step), rel=rel), f"step {step}: lr {lr}, not the new base's"


def stops_with_exit_0(run: RunDir, runs_root: Path) -> None:
    assert nnobs(runs_root, "stop", run.name, cwd=runs_root).returncode == 0
    wait_for(lambda: "returned; exit 0" in run.worker_log.read_text(), what="the script to return and exit")
    assert run_status(run, read_history(run)).state == "stopped" and events(run, "shutdown")
    assert "Traceback" not in run.worker_log.read_text()


def resumes_with_the_losses_of_one_never_stopped(scripts: Scripts, length: int, target: int, pace: float,
                                                 stop_after: int, ends_at: int | None = None) -> None:
    """A run stopped and restarted resumes at the step it stopped at, and its next 50 steps' rates and losses are
    those of a run never stopped, bit for bit. ends_at: the run is not stopped but ends at that target, set as it
    starts, and is restarted with its target raised again."""
    whole_run, whole = scripts.start("whole", length, pace=0)
    broken_run, broken = scripts.start("broken", length, pace=pace)
    if ends_at is not None:
        nnobs(scripts.runs_root, "set", "broken", "--target", str(ends_at), cwd=scripts.folder)
        wait_for(lambda: events(broken_run, "shutdown"), timeout=180, what=f"the run to end at its target {ends_at}")
    else:
        batch_passes(broken_run, stop_after, what=f"the run to be stopped to pass step {stop_after}", timeout=180)
        assert nnobs(scripts.runs_root, "stop", "broken", cwd=scripts.folder).returncode == 0
    stopped_at = events(broken_run, "shutdown")[-1]["event"][0]
    print(f"stopped at step {stopped_at}")
    settings = ("--pace", "0") + (("--target", str(target)) if ends_at is not None else ())
    assert "the next start applies it" in nnobs(scripts.runs_root, "set", "broken", *settings, cwd=scripts.folder).stdout
    assert nnobs(scripts.runs_root, "restart", "broken", cwd=scripts.folder).returncode == 0
    for run in (whole_run, broken_run):
        wait_for(lambda run=run: any(e["event"][0] == target for e in events(run, "target_reached")), timeout=240,
                 what=f"{run.name} at its target {target}")
    assert events(broken_run, "started")[-1]["resumed_from"] == stopped_at, "it resumes at the step it stopped at"
    reference, resumed = traced(whole), traced(broken)
    for step in range(stopped_at, stopped_at + 50):
        assert resumed[step] == reference[step], f"step {step}: (lr, loss) {resumed[step]} vs {reference[step]}"


def killed_or_failing_reads_crashed(scripts: Scripts, length: int, message: str) -> None:
    """kill -9 reads crashed within 2 s; an exception inside the framework (at step 30) reads crashed with it."""
    killed, _ = scripts.start("killed", length, pace=50)
    batch_passes(killed, 20, what="the run to train", timeout=180)
    os.kill(status(scripts.runs_root, "killed", scripts.folder)["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: run_status(killed, read_history(killed)).state == "crashed", timeout=2,
             what="the killed run to read crashed within 2 s")
    assert time.monotonic() - killed_at < 2

    failing, _ = scripts.start("failing", length, pace=0, fail_at=30)
    error = wait_for(lambda: events(failing, "error"), timeout=180, what="the error recorded")[0]
    assert f"RuntimeError: {message}" in error["error"]
    wait_for(lambda: run_status(failing, read_history(failing)).state == "crashed", what="the run to read crashed")
    assert status(scripts.runs_root, "failing", scripts.folder)["error"].endswith(message)
