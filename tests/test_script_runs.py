"""Scripts started by `nnobs run`: detached, recorded, restarted by nnobs; started directly; run files imported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, SEED_RUN, events, kill_worker, records_with, wait_for
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir, log_tail
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import restart_worker, run_status, start_worker, worker_pid

TORCH_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    x = torch.randn(512, 3)
    y = (x[:, :1] * x[:, 1:2]).tanh()
    fail_at = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with nnobs.Run("name-in-the-code", trainer=nnobs.torch.attach(model, optimizer), target=10**9) as run:
        for batch in run.batches():
            if batch == fail_at:
                raise RuntimeError(f"the data ran out at batch {batch}")
            rows = torch.randint(0, 512, (32,))
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
            loss.backward()
            optimizer.step()
            run.log(loss.item(), lr=optimizer.param_groups[0]["lr"])
    print("the code after the loop ran at batch", run.batch)
    """
)


def nnobs_cli(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real `nnobs` command, as a user types it."""
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "train.py"
    path.parent.mkdir()
    path.write_text(TORCH_SCRIPT)
    return path


def latest_lr(run: RunDir) -> float | None:
    """The learning rate the script last logged as its metric lr: what its optimizer really uses."""
    logged = [r["metrics"][1]["lr"][0] for r in records_with(run, "metrics") if "lr" in r["metrics"][1]]
    return logged[-1] if logged else None


def test_nnobs_run_starts_a_script_detached_and_restart_runs_its_recorded_command_again(runs_root, script):
    run = RunDir.named("mlp", runs_root)
    started = nnobs_cli(runs_root, "run", "mlp", "--", sys.executable, script.name, cwd=script.parent)
    assert started.returncode == 0, started.stderr
    assert "is alive" in started.stdout and str(script.parent) in started.stdout
    first = events(run, "started")[0]
    assert os.getsid(first["pid"]) != os.getsid(0), "the script runs in a session of its own"
    assert run.launch.exists() and not run.config.exists()
    wait_for(lambda: read_history(run).batch > 500, what="the script to train 500 batches")

    set_eta = nnobs_cli(runs_root, "set", "mlp", "--eta", "0.005")
    assert set_eta.returncode == 0 and "acknowledged" in set_eta.stdout, set_eta.stdout + set_eta.stderr
    wait_for(lambda: latest_lr(run) == 0.005, what="the optimizer to train with lr 0.005")
    wait_for(lambda: (c := load_checkpoint(run.checkpoint)) and c.eta == 0.005, what="a checkpoint with the new eta")

    kill_worker(run)  # kill -9: no shutdown record, no final checkpoint
    assert run_status(run, read_history(run)).state == "crashed"
    checkpoint = load_checkpoint(run.checkpoint)
    restarted = nnobs_cli(runs_root, "restart", "mlp")
    assert restarted.returncode == 0, restarted.stderr
    second = events(run, "started")[-1]
    assert second["gen"] == first["gen"] + 1 and second["resumed_from"] == checkpoint.batch
    wait_for(lambda: read_history(run).batch > checkpoint.batch + 100, what="the restarted script to train on")
    assert latest_lr(run) == 0.005, "the learning rate set before the kill is kept"
    later = [r["loss"][0] for r in records_with(run, "loss") if r["gen"] == second["gen"]]
    assert min(later) >= checkpoint.batch, "it resumed at the checkpoint's batch or after, never from 0"

    stopped = nnobs_cli(runs_root, "stop", "mlp")
    assert stopped.returncode == 0, stopped.stderr
    # The script prints it after its run let go of the worker lock, which is what stop waits for.
    wait_for(lambda: "the code after the loop ran" in run.worker_log.read_text(), what="the code after the loop")
    assert events(run, "shutdown")


def test_a_script_that_raises_shows_crashed_with_its_error_and_the_traceback_in_its_log(runs_root, script):
    run = RunDir.named("failing", runs_root)
    started = nnobs_cli(runs_root, "run", "failing", "--", sys.executable, script.name, "300", cwd=script.parent)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: worker_pid(run) is None, what="the failing script to exit")
    status = run_status(run, read_history(run))
    assert status.state == "crashed"
    assert status.error == "RuntimeError: the data ran out at batch 300"
    # Python prints the traceback after the run let go of the worker lock: it is awaited, not assumed.
    wait_for(lambda: "Traceback" in log_tail(run) and "the data ran out at batch 300" in log_tail(run),
             what="the traceback in the worker's log")


def test_a_script_started_outside_nnobs_is_steered_but_restart_says_where_to_start_it(runs_root, script):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NNOBS_RUNS": str(runs_root)}
    direct = subprocess.Popen([sys.executable, str(script)], cwd=script.parent, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    run = RunDir.named("name-in-the-code", runs_root)
    try:
        wait_for(lambda: read_history(run).batch > 100, what="the directly started script to train")
        assert nnobs_cli(runs_root, "set", run.name, "--eta", "0.01").returncode == 0
        wait_for(lambda: latest_lr(run) == 0.01, what="the optimizer to take the new eta")
        pid = worker_pid(run)
        with pytest.raises(NnobsError, match="started outside nnobs") as refused:
            restart_worker(run, by="page")
        assert str(script) in str(refused.value) and str(script.parent) in str(refused.value), "it says what to start where"
        assert worker_pid(run) == pid, "the script was not stopped: nnobs could not have started it again"
        direct.send_signal(signal.SIGINT)  # Ctrl-C in its terminal: the loop ends, the code after it runs
        out, _ = direct.communicate(timeout=30)
    finally:
        if direct.poll() is None:
            direct.kill()
            direct.communicate()
    assert direct.returncode == 0 and "the code after the loop ran" in out
    assert run_status(run, read_history(run)).state == "stopped"
    with pytest.raises(NnobsError, match="started outside nnobs"):
        start_worker(run, by="page")


def test_nnobs_run_refuses_a_missing_program_and_a_built_in_run(runs_root, new_run, tmp_path):
    missing = nnobs_cli(runs_root, "run", "nothing", "--", "no-such-program-here", "x.py")
    assert missing.returncode == 2 and "no such program: 'no-such-program-here'" in missing.stderr
    assert not RunDir.named("nothing", runs_root).launch.exists()
    new_run("builtin")
    taken = nnobs_cli(runs_root, "run", "builtin", "--", sys.executable, "x.py")
    assert taken.returncode == 2 and "built-in worker" in taken.stderr
    empty = nnobs_cli(runs_root, "run", "empty", "--")
    assert empty.returncode == 2 and "needs the command" in empty.stderr


def test_the_notebooks_run_file_is_imported_read_only(runs_root):
    imported = nnobs_cli(runs_root, "import", "seed", str(SEED_RUN))
    assert imported.returncode == 0, imported.stderr
    run = RunDir.named("seed", runs_root)
    history = read_history(run)
    assert history.batch == 20_000 and len(history.sv_batches) > 10
    status = nnobs_cli(runs_root, "status", "seed")
    assert status.returncode == 0 and "imported" in status.stdout
    for refused in (("set", "seed", "--eta", "0.1"), ("start", "seed"), ("restart", "seed")):
        answer = nnobs_cli(runs_root, *refused)
        assert answer.returncode == 2 and "imported from" in answer.stderr, (refused, answer.stderr)
    assert not run.control_file.exists(), "nothing was queued for a worker that will never come"
    again = nnobs_cli(runs_root, "import", "seed", str(SEED_RUN))
    assert again.returncode == 2 and "exists already" in again.stderr
    garbage = runs_root / "garbage.txt"
    garbage.write_text("not a run file\n")
    bad = nnobs_cli(runs_root, "import", "other", str(garbage))
    assert bad.returncode == 2 and "holds no records" in bad.stderr
    assert not RunDir.named("other", runs_root).path.exists()


def test_a_recorded_command_that_others_may_write_is_not_run(runs_root, script, tmp_path):
    run = RunDir.named("shared", runs_root)
    assert nnobs_cli(runs_root, "run", "shared", "--", sys.executable, script.name, cwd=script.parent).returncode == 0
    assert nnobs_cli(runs_root, "stop", "shared").returncode == 0
    planted = tmp_path / "planted"
    run.launch.write_text(f'{{"command": ["/bin/touch", "{planted}"], "cwd": "/"}}')
    run.launch.chmod(0o666)  # as a teammate sharing the runs root could have left it
    refused = nnobs_cli(runs_root, "start", "shared")
    assert refused.returncode == 2 and "is not yours alone" in refused.stderr, refused.stderr
    assert not planted.exists(), "the planted command did not run"
