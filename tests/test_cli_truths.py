"""Figures a user can sort by, verdicts that hold, and refusals that help: through real `nnobs` processes and files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, wait_for
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.records import encode_record
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.views.overview import read_row

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def nnobs(runs_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def status(runs_root, run: str) -> dict:
    done = nnobs(runs_root, "status", run, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def noisy_run(runs_root, name: str = "sweep-eta0.1-seed1") -> RunDir:
    """A stopped run of 5,000 batches whose minibatch losses swing between 0.5 and 0.0067, tested once, at batch 1."""
    run = RunDir(runs_root / name)
    run.path.mkdir()
    lines = [encode_record({"event": [0, "started"], "pid": 1, "t": 1.0, "gen": 1})]
    lines.append(encode_record({"loss": [1, 0.5], "metrics": [1, {"test_loss": [0.553]}], "t": 1.0, "gen": 1}))
    for batch in range(2, 5001):
        loss = 0.0067 if batch == 5000 else (0.5 if batch % 2 else 0.1)
        lines.append(encode_record({"loss": [batch, loss], "t": 1.0 + batch / 1000, "gen": 1}))
    lines.append(encode_record({"event": [5000, "shutdown"], "t": 7.0, "gen": 1}))
    run.run_file.write_bytes(b"".join(lines))
    return run


def test_status_and_list_show_the_loss_over_the_newest_batches_not_one_minibatchs(runs_root):
    run = noisy_run(runs_root)
    found = status(runs_root, run.name)
    assert found["batch_loss"] == 0.0067
    assert 0.28 < found["loss"] < 0.31, "the mean of the newest 100 batches, not the last minibatch's 0.0067"
    assert found["best_loss"] is not None and found["best_loss"] > 0.25, "the best of that mean, not a lucky batch"
    text = nnobs(runs_root, "status", run.name).stdout
    assert "the mean of the newest 100+ batches" in text

    header, row = nnobs(runs_root, "list").stdout.splitlines()
    assert row[header.index("LOSS") :].split()[0] == f"{found['loss']:.4g}"
    assert row[header.index("BEST") :].split()[0] == f"{found['best_loss']:.4g}"


def test_a_test_loss_made_at_batch_1_is_shown_with_its_batch_never_as_current(runs_root):
    run = noisy_run(runs_root)
    assert status(runs_root, run.name)["evaluations"] == {"test_loss": [1, 0.553]}
    assert "test_loss     0.553 at batch 1 (4,999 batches ago)" in nnobs(runs_root, "status", run.name).stdout
    assert "0.553 at 1 " in nnobs(runs_root, "list").stdout
    row = read_row(run)  # the overview's row, read from the file's head and tail: the test loss lies between
    assert (row.test_loss, row.test_batch, row.batch) == (0.553, 1, 5000)


def test_a_run_ruined_by_eta_500_that_then_reaches_its_target_reads_loss_rose(runs_root):
    started = nnobs(runs_root, "new", "circle-a", "--task", "circle", "--eta", "0.03", "--target", "20000")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(runs_root, "circle-a")["state"] == "idle", timeout=120, what="circle-a at its target")
    assert status(runs_root, "circle-a")["label"] == "idle"

    told = nnobs(runs_root, "set", "circle-a", "--eta", "500", "--target", "21000")
    assert told.returncode == 0, told.stderr
    wait_for(lambda: status(runs_root, "circle-a")["batch"] == 21000, timeout=60, what="the new target reached")
    # Saturated by eta 500, the loss may also have stopped moving: "not learning" is then the label, and either way
    # the rise is said and put on the command.
    problems = ("loss rose", "not learning")
    last: dict = {}

    def verdict() -> dict | bool:
        now = status(runs_root, "circle-a")
        if (now["label"], now["rose"]) != (last.get("label"), last.get("rose")):
            print("status:", {key: now.get(key) for key in ("state", "label", "batch", "rose", "verdict")})
        last.update(now)
        return last["label"] in problems and bool(last["rose"]) and dict(last)

    found = wait_for(verdict, what="the verdict")
    assert found["state"] == "idle", "idle at its target, and still the verdict stands"
    # sent in one write, eta and target take effect at the same batch, and the rise is put on both
    said = r"rose by a factor of \d+ after target 21,000 and eta 500 \(batch 20,000\)"
    assert re.search(said, found["rose"]), found["rose"]
    text = nnobs(runs_root, "status", "circle-a").stdout
    assert f"state         {found['label']}" in text and "loss rose     the loss rose" in text
    assert found["label"] in nnobs(runs_root, "list").stdout
    nnobs(runs_root, "stop", "circle-a")


def test_float_noise_in_a_tiny_loss_is_no_change_but_a_real_fall_is(runs_root):
    run = RunDir(runs_root / "tiny")
    run.path.mkdir()
    lines = [
        encode_record({"loss": [b, 1.86e-31 if b < 50 else 9e-33], "t": 1.0 + b / 5, "gen": 1}) for b in range(1, 100)
    ]
    run.run_file.write_bytes(b"".join(lines))
    history = read_history(run)
    history.progress.clear()
    for t, batch in ((12.0, 1), (20.0, 99)):  # two progress samples, 8 s apart, as refreshes take them
        history.progress.append((t, batch, 1.86e-31 if batch == 1 else 9e-33))
    assert history.rate()[1] is None, "a loss of 1e-31 moving is rounding, not progress"
    history.progress.clear()
    for t, batch, loss in ((12.0, 1, 0.5), (20.0, 99, 0.1)):
        history.progress.append((t, batch, loss))
    assert history.rate()[1] is not None and abs(history.rate()[1] + 0.8) < 1e-9


def test_a_typo_in_a_run_name_is_asked_about_not_offered_for_creation(runs_root, new_run):
    new_run("default")
    done = nnobs(runs_root, "set", "defualt", "--eta", "0.2")
    assert done.returncode == 2
    assert "did you mean default?" in done.stderr and "creates it" not in done.stderr
    assert not (runs_root / "defualt").exists()


def test_an_unknown_flag_of_a_verb_prints_that_verbs_usage(runs_root):
    done = nnobs(runs_root, "set", "--etaa", "3")
    assert done.returncode == 2
    assert done.stderr.startswith("usage: nnobs set") and "[--eta X]" in done.stderr
    assert "nnobs set: error: unrecognized arguments: --etaa" in done.stderr


def test_a_script_that_fails_to_start_reads_failed_to_start_in_status_and_list(runs_root, tmp_path):
    done = nnobs(runs_root, "run", "needs-torch", "--", sys.executable, "-c", "import no_such_module_for_nnobs")
    assert done.returncode == 2 and "exited before it started" in done.stderr
    found = status(runs_root, "needs-torch")
    assert found["label"] == "failed to start" and "\nModuleNotFoundError" in found["error"]
    assert "failed to start" in nnobs(runs_root, "list").stdout
    log = (runs_root / "needs-torch" / "worker.log").read_text()
    assert status(runs_root, "needs-torch")["state"] == "failed to start"
    assert (runs_root / "needs-torch" / "worker.log").read_text() == log, "reading its status ran nothing"


def run_after(runs_root, name: str, command: dict, event: str | None) -> RunDir:
    """A run file: the loss falling to 0.01 by batch 3,000, then command (and event) there, then the loss at 0.5."""
    run = RunDir(runs_root / name)
    run.path.mkdir()
    lines = [encode_record({"loss": [b, max(0.01, 1.0 / b)], "t": 1.0 + b / 1000, "gen": 1}) for b in range(1, 3001)]
    lines.append(encode_record({"ack": [3000, {"id": "c1", **command}], "t": 4.1, "gen": 1}))
    if event:
        lines.append(encode_record({"event": [3000, event], "t": 4.1, "gen": 2}))
    lines += [encode_record({"loss": [b, 0.5], "t": 4.2 + b / 1000, "gen": 2}) for b in range(3001, 3300)]
    run.run_file.write_bytes(b"".join(lines))
    return run


def test_a_rise_is_put_on_the_command_before_it_but_never_on_a_reinitialized_nets_fresh_start(runs_root):
    rose = read_history(run_after(runs_root, "hot", {"cmd": "eta", "value": 500.0}, None)).rose
    assert rose is not None and rose.command == "eta 500" and rose.batch == 3000
    assert rose.before == pytest.approx(0.01) and rose.now == pytest.approx(0.5)
    assert read_history(run_after(runs_root, "fresh", {"cmd": "reinit", "value": None}, "reinit")).rose is None


def test_a_script_slow_to_start_is_said_to_be_starting_not_recorded_as_failed(runs_root, monkeypatch):
    from nnobs.launching import local
    from nnobs.launching.lifecycle import record_launch, start_worker

    monkeypatch.setattr(local, "START_TIMEOUT_S", 1.0)  # a long import, shortened: the script waits far longer
    run = RunDir(runs_root / "slow-import")
    run.path.mkdir(parents=True)
    record_launch(run, [sys.executable, "-c", "import time; time.sleep(120)"], str(runs_root))
    with pytest.raises(NnobsError, match=r"\(pid (\d+)\) has not said it started after 1 s and is still running") as said:
        start_worker(run, by="test")
    try:
        assert not (run.path / "start-failed.json").exists()
        assert status(runs_root, "slow-import")["state"] != "failed to start"
    finally:
        os.kill(int(re.search(r"pid (\d+)", str(said.value))[1]), 9)
