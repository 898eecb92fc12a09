"""nnobs sweep on this machine: one run per combination, at most --parallel training at once, each to its target."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO, events
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import run_status
from nnobs.training.builtin.tasks import load_config

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_a_local_sweep_trains_every_combination_at_most_parallel_at_once(runs_root):
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "grid", "--eta", "0.1,0.5",
                           "--seed", "1,2", "--target", "2000", "--parallel", "2", "--url", "http://monitor:8501"],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = ["grid-eta0.1-seed1", "grid-eta0.1-seed2", "grid-eta0.5-seed1", "grid-eta0.5-seed2"]
    assert f"compare them: http://monitor:8501/compare?{'&'.join(f'runs={n}' for n in names)}" in done.stdout
    spans = []
    for name in names:
        run = RunDir(runs_root / name)
        config = load_config(run.config)
        assert (config.eta, config.seed) == (float(name.split("eta")[1].split("-")[0]), int(name[-1]))
        status = run_status(run, read_history(run))
        assert status.state == "stopped" and status.batch == 2000
        assert f"{name}: done at batch 2,000" in done.stdout
        spans.append((events(run, "started")[0]["t"], events(run, "shutdown")[-1]["t"]))
    for t, _ in spans:  # whenever one started, at most one other was training
        assert sum(start <= t < end for start, end in spans) <= 2


def test_a_sweep_refuses_a_bad_list_and_makes_nothing(runs_root):
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "bad", "--eta", "0.1,x"],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'x' in '0.1,x' is not a number" in done.stderr
    assert not list(runs_root.iterdir())
