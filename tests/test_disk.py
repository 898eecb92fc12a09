"""Days on a real disk: on a small real filesystem (a tmpfs the test mounts), a full disk is named, a run can always
be stopped and restarted, the low-disk pause keeps the floor, and nothing written before the fault is lost.

Mounting needs root, as CI has; elsewhere these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import FOREVER, REPO, kill_worker, wait_for
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.files import leftover_temps
from nnobs.protocol.records import RecordReader
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig

MB = 1024 * 1024


def mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path):
    """mount(size_mb) -> a runs root on a tmpfs of that size; every worker on it is killed and it is unmounted after."""
    mounts: list[Path] = []

    def mount(size_mb: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        mount_tmpfs(where, size_mb)
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["mount", "-o", "remount,rw", str(where)], capture_output=True)
        for lock in where.glob("*/worker.lock"):
            kill_worker(RunDir(lock.parent))
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(root: Path, name: str = "filler", leave: int = 0) -> Path:
    """Fill the filesystem of root with one file until at most leave bytes are free; the file."""
    path = root / name
    block = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:  # unbuffered: closing it has nothing left to write on a full disk
        while True:
            free = shutil.disk_usage(root).free
            if free <= leave:
                break
            try:
                f.write(block[: max(1, min(len(block), free - leave))])
                f.flush()
            except OSError:
                break
    return path


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def status_json(root: Path, name: str) -> dict:
    answer = cli(root, "status", name, "--json")
    return json.loads(answer.stdout)


def complete_records(path: Path) -> list[dict]:
    return [r for r in RecordReader(path).read_new()]


def test_a_full_disk_is_named_stop_and_restart_work_and_recovery_loses_nothing(small_disk):
    root = small_disk(16)
    run = RunDir.named("full", root)
    create_run(run, RunConfig(target=FOREVER, min_free_mb=0))  # no floor: this run meets the full disk itself
    start_worker(run)
    wait_for(lambda: read_history(run).batch > 1000, what="training")
    filler = fill(root)

    seen = wait_for(lambda: (s := status_json(root, "full"))["state"] == "cannot write" and s, what="the full disk to be named")
    assert seen["write_error"] == "cannot write run.jsonl: no space left on device"
    page = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    page.query_params["run"] = "full"
    os.environ["NNOBS_RUNS"] = str(root)
    try:
        page.run()
    finally:
        del os.environ["NNOBS_RUNS"]
    shown = " ".join(str(e.value) for e in page.markdown) + " ".join(str(e.value) for e in page.error)
    assert "cannot write run.jsonl: no space left on device" in shown, "every viewer of the page is told why"
    before = complete_records(run.run_file)

    stopped = cli(root, "stop", "full")
    assert stopped.returncode == 0, stopped.stderr
    assert "told by SIGTERM" in stopped.stdout and "no space left on device" in stopped.stdout
    assert status_json(root, "full")["state"] == "stopped", "it shut down cleanly, though no record could say so"
    restarted = cli(root, "restart", "full")
    assert restarted.returncode == 0, restarted.stderr
    assert "cannot write" in restarted.stdout, restarted.stdout
    assert status_json(root, "full")["state"] == "cannot write"

    filler.unlink()  # space is back: the worker goes on by itself
    wait_for(lambda: status_json(root, "full")["state"] == "training", what="training to go on once space is back")
    batch = read_history(run).batch
    wait_for(lambda: read_history(run).batch > batch + 1000, what="the batch to move on")
    after = complete_records(run.run_file)
    assert after[: len(before)] == before, "every complete record written before the fault is still read"
    history = read_history(run)
    assert history.skipped_lines <= 1, f"{history.skipped_lines} lines skipped"
    assert load_checkpoint(run.checkpoint) is not None and not leftover_temps(run.checkpoint), "no checkpoint half-written"
    assert any(r.get("event", [0, ""])[1] == "disk_ok" for r in after)


def test_the_low_disk_pause_keeps_the_floor_and_training_goes_on_when_space_is_freed(small_disk):
    root = small_disk(40)
    floor_mb = 12
    filler = fill(root, leave=28 * MB)  # 12 MB of someone else's, freed later
    run = RunDir.named("low", root)
    # 264,705 parameters: each checkpoint is 2 MB, and the kept ones hold the space of those they replaced.
    create_run(run, RunConfig(sizes=[2, 512, 512, 1], target=FOREVER, report_every=0, min_free_mb=floor_mb))
    start_worker(run)

    def paused_after_a_command() -> dict | None:
        cli(root, "set", "low", "--target", str(FOREVER), "--no-wait")  # each command is checkpointed
        status = status_json(root, "low")
        return status if status["state"] == "low disk" else None

    paused = wait_for(paused_after_a_command, timeout=120, what="the run's own checkpoints to bring it to its floor")
    assert paused["free_bytes"] >= floor_mb * MB - 64 * 1024
    for _ in range(5):  # more commands, more checkpoints asked for: none is written below the floor
        cli(root, "set", "low", "--target", str(FOREVER), "--no-wait")
    batch = read_history(run).batch
    wait_for(lambda: status_json(root, "low")["state"] == "low disk", what="the pause to hold")
    assert shutil.disk_usage(root).free >= floor_mb * MB - 64 * 1024, "the floor holds"
    assert "below its floor" in cli(root, "status", "low").stdout
    assert read_history(run).batch <= batch + 20, "no training while paused"

    filler.unlink()
    wait_for(lambda: status_json(root, "low")["state"] == "training", what="training to go on by itself")
    stopped = cli(root, "stop", "low")
    assert stopped.returncode == 0 and "SIGTERM" not in stopped.stdout, stopped.stdout


def test_a_read_only_remount_waits_for_the_worker_and_a_read_only_root_refuses_a_start_plainly(small_disk):
    root = small_disk(16)
    run = RunDir.named("ro", root)
    create_run(run, RunConfig(target=FOREVER, min_free_mb=0))
    start_worker(run)
    wait_for(lambda: read_history(run).batch > 1000, what="training")
    # The kernel refuses to make a filesystem read-only while a process has files on it open for writing.
    refused = subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True, text=True)
    assert refused.returncode != 0 and "busy" in refused.stderr, refused.stderr
    batch = read_history(run).batch
    wait_for(lambda: read_history(run).batch > batch, what="the worker to train on, unharmed")
    assert cli(root, "stop", "ro").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
    started = cli(root, "start", "ro")
    assert started.returncode == 2 and "read-only file system" in started.stderr.lower(), started.stderr
    assert "Traceback" not in started.stderr
    status = cli(root, "status", "ro")
    assert status.returncode == 0 and "stopped" in status.stdout
    assert read_history(run).skipped_lines == 0


def test_worker_log_is_cut_back_when_it_grows_past_its_bound(tmp_path):
    from nnobs.protocol.files import cap_file

    log = tmp_path / "worker.log"
    log.write_bytes(b"".join(b"line %08d\n" % i for i in range(1_000_000)))  # 14 MB
    assert cap_file(log, 4 * MB, 1 * MB)
    kept = log.read_bytes()
    assert len(kept) <= 1 * MB + 100 and kept.endswith(b"line 00999999\n")
    assert kept.splitlines()[1].startswith(b"line "), "cut at a line start"
    assert not cap_file(log, 4 * MB, 1 * MB), "a small log is left alone"
