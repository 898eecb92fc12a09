"""The `nnobs` command, run as a real process against real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, events, kill_worker, wait_for
from nnobs.checkpoint import load_checkpoint
from nnobs.runs import worker_pid

STATUS_KEYS = {"run", "state", "batch", "target", "eta", "loss", "generation", "pid", "heartbeat_age_s"}


def nnobs(runs_root, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args],
        env=env, capture_output=True, text=True, timeout=120,
    )


def status(runs_root, run: str = "default") -> dict:
    done = nnobs(runs_root, "status", run, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_start_set_tell_state_stop_and_status(runs_root, new_run):
    run = new_run("default", target=0)
    assert nnobs(runs_root, "start").returncode == 0
    first = status(runs_root)
    assert STATUS_KEYS <= set(first) and first["state"] == "idle" and first["generation"] == 1

    done = nnobs(runs_root, "set", "--target", "2000", "--eta", "0.05")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("acknowledged at batch") == 2
    wait_for(lambda: status(runs_root)["batch"] == 2000, what="batch 2000")
    assert status(runs_root)["eta"] == 0.05 and status(runs_root)["state"] == "idle"

    assert "acknowledged" in nnobs(runs_root, "tell-state").stdout
    done = nnobs(runs_root, "stop")
    assert done.returncode == 0 and "stopped at batch 2,000" in done.stdout
    assert status(runs_root)["state"] == "stopped" and worker_pid(run) is None


def test_cli_refuses_bad_values_and_names_with_a_message(runs_root, new_run):
    new_run("default", target=0)
    done = nnobs(runs_root, "set", "--eta", "-1")
    assert done.returncode == 2 and "eta must be a number above 0" in done.stderr
    done = nnobs(runs_root, "status", "../x")
    assert done.returncode == 2 and "refused" in done.stderr
    done = nnobs(runs_root, "set", "nosuchrun", "--target", "5")
    assert done.returncode == 2 and "no run named 'nosuchrun'" in done.stderr
    assert status(runs_root, "nosuchrun")["state"] == "absent"


def test_cli_restart_after_kill_resumes_from_checkpoint(runs_root, new_run):
    run = new_run("default", target=10**9)
    nnobs(runs_root, "start")
    wait_for(lambda: (saved := load_checkpoint(run.checkpoint)) and saved.batch > 0, what="a checkpoint past batch 0")
    kill_worker(run)
    assert status(runs_root)["state"] == "crashed"
    saved = load_checkpoint(run.checkpoint)
    done = nnobs(runs_root, "restart")
    assert done.returncode == 0, done.stderr
    started = events(run, "started")[-1]
    assert started["gen"] == saved.gen + 1 and started["resumed_from"] == saved.batch
    assert status(runs_root)["generation"] == saved.gen + 1


def test_cli_tail_prints_records_as_json_lines(runs_root, new_run):
    new_run("default", target=0)
    nnobs(runs_root, "start")
    lines = nnobs(runs_root, "tail").stdout.splitlines()
    assert json.loads(lines[0])["event"] == [0, "started"]
