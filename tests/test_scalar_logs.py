"""Runs you already have: a real PyTorch training writing TensorBoard logs (torch's SummaryWriter) and a CSV file,
followed live by a real detached follower and imported once, read through the CLI, the run file and the page."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, records_with, wait_for
from nnobs.protocol.control import send_command
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

pytest.importorskip("tensorboard", reason="TensorBoard's reader reads the logs: pip install -e '.[test]'")

APP = str(REPO / "app.py")

# A real training that logs the TensorBoard way: SummaryWriter.add_scalar each step, flushed every few steps. After
# each flush it says which step is on disk and when, so the test can time how long that step takes to show.
TRAINING = """
import sys, time, torch
from torch.utils.tensorboard import SummaryWriter
logdir, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
writer = SummaryWriter(logdir, flush_secs=3600)  # flushed by hand below: the test knows when each step landed
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x = torch.randn(256, 8)
y = (x[:, :1] * x[:, 1:2]).tanh()
for step in range(steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    writer.add_scalar("train/loss", loss.item(), step)
    writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
    if step % 10 == 0:
        writer.add_scalar("val/loss", loss.item() * 1.1, step)
    if step % 5 == 4:
        writer.flush()
        print("flushed", step, time.time(), flush=True)
        time.sleep(pause)
writer.close()
print("done", flush=True)
"""


def nnobs_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `nnobs` command, as a user types it."""
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def train(logdir: Path, steps: int, pause: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TRAINING, str(logdir), str(steps), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def scalars_of(run: RunDir) -> list[tuple]:
    """What a run file says of the log: each step's loss and metrics, in order (no times, no lifecycle records)."""
    found = []
    for record in records_with(run, "loss") + [r for r in records_with(run, "metrics") if "loss" not in r]:
        found.append((json.dumps(record.get("loss")), json.dumps(record.get("metrics"), sort_keys=True)))
    return sorted(found)


def test_a_tensorboard_log_followed_as_it_is_written_shows_each_flushed_step_within_2_s(runs_root, tmp_path):
    logdir = tmp_path / "tb"
    followed = nnobs_cli(runs_root, "follow", "tb", "--tensorboard", str(logdir))
    assert followed.returncode == 0, followed.stderr
    assert "does not exist yet" in followed.stdout, "followed before its training starts: said plainly"
    run = RunDir.named("tb", runs_root)

    training = train(logdir, 100, pause=0.3)
    waits = []
    for line in training.stdout:
        if not line.startswith("flushed"):
            continue
        _, step, at = line.split()
        wait_for(lambda: read_history(run).batch >= int(step), timeout=10, what=f"step {step} in the run")
        waits.append(time.time() - float(at))
    assert training.wait(timeout=60) == 0
    print(f"test_scalar_logs: a flushed step shown after {statistics.median(waits):.2f} s median, "
          f"{max(waits):.2f} s at most, of {len(waits)} flushes")
    assert len(waits) == 20 and statistics.median(waits) <= 2.0, waits

    history = read_history(run)
    assert history.batch == 99 and history.batch_loss is not None
    assert {"lr", "val.loss"} <= set(history.metrics), "every other scalar a metric, named as run.log names them"
    status = json.loads(nnobs_cli(runs_root, "status", "tb", "--json").stdout)
    assert status["state"] == "following" and status["pid"]

    # The same log imported once gives the same values, step by step.
    imported = nnobs_cli(runs_root, "import", "tb-once", "--tensorboard", str(logdir))
    assert imported.returncode == 0, imported.stderr
    assert "100 steps imported" in imported.stdout and "'train/loss' as its loss" in imported.stdout
    once = RunDir.named("tb-once", runs_root)
    wait_for(lambda: scalars_of(run) == scalars_of(once), timeout=10, what="the followed run to hold all the log")
    assert len(scalars_of(once)) == 100
    losses = [r["loss"] for r in records_with(once, "loss")]
    assert losses[0][0] == 0 and losses[-1][0] == 99 and losses[-1][1] < losses[0][1], "the loss as trained"
    assert json.loads(nnobs_cli(runs_root, "status", "tb-once", "--json").stdout)["state"] == "imported"


def test_a_followed_run_cannot_be_steered_and_says_so_and_stop_and_restart_follow_it_or_not(runs_root, tmp_path):
    logdir = tmp_path / "tb"
    assert train(logdir, 30).wait(timeout=60) == 0
    assert nnobs_cli(runs_root, "follow", "tb", "--tensorboard", str(logdir)).returncode == 0
    run = RunDir.named("tb", runs_root)
    wait_for(lambda: read_history(run).batch == 29, what="the log in the run")

    refused = nnobs_cli(runs_root, "set", "tb", "--eta", "0.1")
    assert refused.returncode != 0 and "cannot be steered" in refused.stderr
    command = send_command(run.control_file, "eta", 0.1, by="test")  # past the CLI, as a page of old would
    answer = wait_for(lambda: read_history(run).answers.get(command["id"]), what="the follower's answer")
    assert not answer.ok and "cannot be steered" in answer.reason

    stopped = nnobs_cli(runs_root, "stop", "tb")
    assert stopped.returncode == 0 and "stopped at batch 29" in stopped.stdout, stopped.stdout + stopped.stderr
    assert json.loads(nnobs_cli(runs_root, "status", "tb", "--json").stdout)["state"] == "stopped"
    restarted = nnobs_cli(runs_root, "restart", "tb")
    assert restarted.returncode == 0, restarted.stderr
    wait_for(lambda: read_history(run).batch == 29, what="the log read again")
    assert len(records_with(run, "loss")) == 30, "the restarted follower writes no step twice"
    assert read_history(run).gen == 2 and read_history(run).answers[command["id"]].reason == answer.reason

    taken = nnobs_cli(runs_root, "follow", "other", "--tensorboard", str(logdir), "--loss", "no/such/tag")
    assert taken.returncode != 0 and "no scalar tagged 'no/such/tag'" in taken.stderr
    assert "train/loss" in taken.stderr and not RunDir.named("other", runs_root).exists(), "a typo makes nothing"
    clash = nnobs_cli(runs_root, "import", "tb", "--tensorboard", str(logdir))
    assert clash.returncode != 0 and "exists already" in clash.stderr, "an import never writes over a run"


def test_a_csv_file_is_imported_and_followed_with_its_step_and_time_columns(runs_root, tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("step,wall_time,loss,accuracy\n" + "".join(
        f"{s},{1_700_000_000 + s},{1 / (s + 1):.6f},{s / 10:.2f}\n" for s in range(10)))
    imported = nnobs_cli(runs_root, "import", "once", "--csv", str(csv))
    assert imported.returncode == 0 and "'loss' as its loss" in imported.stdout, imported.stdout + imported.stderr
    once = RunDir.named("once", runs_root)
    first = records_with(once, "loss")[0]
    assert first["loss"] == [0, 1.0] and first["metrics"] == [0, {"accuracy": [0.0]}] and first["t"] == 1_700_000_000

    assert nnobs_cli(runs_root, "follow", "live", "--csv", str(csv)).returncode == 0
    live = RunDir.named("live", runs_root)
    wait_for(lambda: read_history(live).batch == 9, what="the file's rows in the run")
    with csv.open("a") as f:
        f.write("10,1700000010,0.05,0.99\n11,1700000011,0.04")  # the last row still being written
        f.flush()
        wait_for(lambda: read_history(live).batch == 10, what="the appended row")
        assert read_history(live).batch == 10, "a row without its newline waits"
        f.write(",0.99\n")
    wait_for(lambda: read_history(live).batch == 11, what="the row once whole")
    assert len(records_with(live, "loss")) == 12
    # A logger that rewrites its whole file when a column comes (Lightning's CSVLogger does): read again from its
    # header, the steps held already not written twice.
    rewritten = tmp_path / "log.csv.new"
    rewritten.write_text("step,wall_time,loss,accuracy,lr\n" + "".join(
        f"{s},{1_700_000_000 + s},{1 / (s + 1):.6f},{s / 10:.2f},0.1\n" for s in range(13)))
    os.replace(rewritten, csv)
    wait_for(lambda: read_history(live).batch == 12, what="the rewritten file's new row")
    assert len(records_with(live, "loss")) == 13, "no step twice"
    assert records_with(live, "loss")[-1]["metrics"] == [12, {"accuracy": [1.2], "lr": [0.1]}]
    bad = tmp_path / "bad.csv"
    bad.write_text('step,loss\n1,"unclosed\n')
    refused = nnobs_cli(runs_root, "import", "bad", "--csv", str(bad))
    assert refused.returncode != 0 and "holds no scalars" in refused.stderr and not RunDir.named("bad", runs_root).exists()


def test_the_page_says_a_followed_run_is_followed_and_offers_no_steering(runs_root, tmp_path, monkeypatch):
    logdir = tmp_path / "tb"
    assert train(logdir, 30).wait(timeout=60) == 0
    assert nnobs_cli(runs_root, "follow", "tb", "--tensorboard", str(logdir)).returncode == 0
    run = RunDir.named("tb", runs_root)
    wait_for(lambda: read_history(run).batch == 29, what="the log in the run")
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    page = AppTest.from_file(APP, default_timeout=60)
    page.query_params["run"] = "tb"
    page.run()
    assert not page.exception, page.exception
    text = " ".join(m.value for m in page.markdown) + " ".join(c.value for c in page.caption)
    assert "FOLLOWING" in text and "cannot be steered" in text and str(logdir) in text
    assert any(m.label == "Loss" and m.value not in ("-", "") for m in page.metric), "the loss, from train/loss"
    buttons = {b.label: b for b in page.button}
    assert not {"Set eta", "Set target", "Set pace"} & set(buttons), "no setting to send a followed run"
    assert buttons["Snapshot parameters now"].disabled and buttons["Rewind…"].disabled
    assert not buttons["Shut down…"].disabled and not buttons["Restart"].disabled, "following is ended and resumed"
