"""Snapshots, evaluations and kept checkpoints follow batch schedules dense where a run learns; rewinds and forks land
close to the batch asked, and say where before they are done."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, events, records_with, wait_for
from nnobs.lab.create import landing_of
from nnobs.protocol.checkpoint import (
    KEPT_MOST,
    Checkpoint,
    _kept_sizes,
    _listings,
    forget_kept_after,
    keep_checkpoint,
    kept_batches,
    landing,
    save_kept,
)
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import start_worker
from nnobs.reading.origin import fork_origin
from nnobs.reading.watcher import read_history
from nnobs.views import trajectory
from nnobs.training.schedule import next_evaluation, next_kept_checkpoint, next_state_report

LANDING_FACTOR = 1.25  # a rewind or fork to a batch past 100 lands on a kept checkpoint at least batch / 1.25


def nnobs_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The real `nnobs` command, as a user types it."""
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def scheduled(next_after, end: int) -> list[int]:
    """Every batch up to end that a schedule picks, from batch 0."""
    batches, batch = [], 0
    while (batch := next_after(batch)) <= end:
        batches.append(batch)
    return batches


def snapshot_batches(run: RunDir) -> list[int]:
    return [record["sv"][0] for record in records_with(run, "sv")]


def test_the_schedules_are_dense_early_and_spaced_evenly_in_log_batches():
    states = scheduled(lambda b: next_state_report(b, 2_000), 5_000)
    assert sum(500 <= b <= 3_000 for b in states) >= 20, states
    assert states[:10] == list(range(1, 11)), "each batch of the first decade has its snapshot, as in the notebook"
    evaluations = scheduled(next_evaluation, 2_000_000)
    assert max(b / a for a, b in zip(evaluations, evaluations[1:]) if a >= 100) <= 1.1
    kept = scheduled(next_kept_checkpoint, 2_000_000)
    assert max(b / a for a, b in zip(kept, kept[1:]) if a >= 100) < LANDING_FACTOR
    assert len(kept) < KEPT_MOST, "a run of two million batches keeps every one the schedule picks"


def test_a_thinned_kept_set_stays_spread_evenly_in_log_batches(tmp_path: Path):
    checkpoint = tmp_path / "checkpoint.npz"
    ckpt = Checkpoint(batch=0, eta=0.1, target=10**9, report_every=2_000, gen=1, last_seq=0, run_offset=0,
                      state={"sv": np.zeros(9)})
    for batch in scheduled(lambda b: max(b + 1, math.ceil(b * 1.05)), 10**12):  # denser than the schedule
        save_kept(checkpoint, Checkpoint(**{**ckpt.__dict__, "batch": batch}))
    kept = kept_batches(checkpoint)
    assert len(kept) == KEPT_MOST
    gaps = [b / a for a, b in zip(kept, kept[1:]) if a >= 100]
    assert max(gaps) < 1.5 and max(gaps) / min(gaps) < 1.3, "thinned evenly, not cut at one end"


def test_a_kept_sets_remembered_listing_follows_every_change_to_it(tmp_path: Path):
    """The sizes a keep thins by are its own listing while nothing else changed the folder, and a fresh one after."""
    checkpoint = tmp_path / "checkpoint.npz"
    folder = checkpoint.parent / "checkpoints"

    def keep(batch: int, size: int = 9) -> None:
        save_kept(checkpoint, Checkpoint(batch=batch, eta=0.1, target=10**9, report_every=0, gen=1, last_seq=0,
                                         run_offset=0, state={"sv": np.zeros(size)}), most_bytes=40_000)

    def listed_truly() -> bool:
        return _listings[folder][2] == _kept_sizes(folder, checkpoint)

    for batch in range(1, 300):
        keep(batch)
    assert listed_truly() and sum(_kept_sizes(folder).values()) <= 40_000
    assert len(kept_batches(checkpoint)) < 299, "thinned to the byte budget"
    gone = kept_batches(checkpoint)[3]
    (folder / f"{gone:015d}.npz").unlink()  # someone else's change, a tick of the clock later
    later = os.stat(folder).st_mtime_ns + 1_000_000
    os.utime(folder, ns=(later, later))
    keep(300, size=2_000)  # a larger one, so that the budget drops others
    assert gone not in _listings[folder][2] and listed_truly()
    checkpoint.write_bytes(b"x" * 5_000)
    keep_checkpoint(checkpoint, 301, most_bytes=40_000)  # a link to checkpoint.npz: no room of its own
    assert _listings[folder][2][301] == 0 and listed_truly()
    checkpoint.unlink()
    checkpoint.write_bytes(b"y" * 5_000)  # replaced: the link now holds the old file's 5,000 bytes alone
    keep_checkpoint(checkpoint, 302, most_bytes=40_000)
    assert _listings[folder][2].get(301) in (None, 5_000) and _listings[folder][2][302] == 0 and listed_truly()
    forget_kept_after(checkpoint, 100)
    keep(303)
    assert max(kept_batches(checkpoint)[:-1]) <= 100 and listed_truly()


def test_the_pytorch_example_under_nnobs_run_snapshots_where_it_learns(runs_root: Path):
    started = nnobs_cli(runs_root, "run", "torch-mlp", "--", sys.executable, "examples/torch_mlp.py", "--target", "5000")
    assert started.returncode == 0, started.stderr
    run = RunDir.named("torch-mlp", runs_root)
    wait_for(lambda: events(run, "target_reached"), timeout=120, what="the example to reach batch 5,000")
    learning = [b for b in snapshot_batches(run) if 500 <= b <= 3_000]
    assert len(learning) >= 20, f"state snapshots between batches 500 and 3,000: {learning}"
    # What Replay steps through and Trajectory draws: the whole state vectors the page's history keeps.
    kept, vectors = read_history(run).archive.kept()
    assert sum(500 <= b <= 3_000 for b in kept) >= 20, f"replayable states in the learning: {kept.tolist()}"
    path = trajectory.principal_path(kept, vectors)
    assert path is not None and sum(500 <= b <= 3_000 for b in path.batches) >= 20
    assert path.explained[0] < 0.99, "a path that bends where the net learns, not one straight line"
    tested = [r["metrics"][0] for r in records_with(run, "metrics") if "test_loss" in r["metrics"][1]]
    assert tested[-1] == 5_000, "the script's held-out metrics are measured at the target (run.evaluation_due())"
    assert sum(500 <= b <= 3_000 for b in tested) >= 20, tested


def test_a_fast_builtin_runs_test_loss_at_its_end_is_from_its_last_tenth(new_run):
    run = new_run("fast", task="spiral", target=20_000)
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), timeout=60, what="the run to reach its target")
    tested = [r["metrics"][0] for r in records_with(run, "metrics") if "test_loss" in r["metrics"][1]]
    assert tested[-1] >= 0.9 * 20_000, f"the last test loss was measured at batch {tested[-1]:,}"
    assert len(tested) >= 100, "evaluated throughout, densely where it learns"
    assert read_history(run).batch == 20_000


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory):
    """The default run (XOR) trained to two million batches, its worker idle at the target; killed at the end."""
    root = tmp_path_factory.mktemp("runs")
    assert nnobs_cli(root, "new", "long", "--target", "2000000").returncode == 0
    run = RunDir.named("long", root)
    wait_for(lambda: events(run, "target_reached"), timeout=300, what="two million batches of XOR")
    yield run
    for lock in root.glob("*/worker.lock"):
        nnobs_cli(root, "stop", lock.parent.name)


def test_a_rewind_or_fork_to_any_batch_past_100_of_a_long_run_lands_within_a_factor_of_1_25(long_run: RunDir):
    asked = sorted({int(10 ** e) for e in np.linspace(2.0005, math.log10(2_000_000), 600)}
                   | set(np.random.default_rng(0).integers(101, 2_000_000, 400).tolist()))
    far = [(b, landing(long_run.checkpoint, b)) for b in asked]
    assert all(landed is not None and b / landed <= LANDING_FACTOR for b, landed in far), [
        (b, landed) for b, landed in far if landed is None or b / landed > LANDING_FACTOR]


def test_a_fork_at_a_batch_says_where_it_lands_and_starts_there(long_run: RunDir):
    root = long_run.path.parent
    where = landing_of(long_run, 10_000, 2_000_000)
    forked = nnobs_cli(root, "fork", "long", "long-10k", "--at", "10000", "--target", "20000")
    assert forked.returncode == 0, forked.stderr
    said, done = forked.stdout.splitlines()[:2]
    assert said == f"long-10k: forking long from batch 10,000 lands on the checkpoint kept at batch {where.landed:,}, " \
                   f"{10_000 - where.landed:,} batches before it"
    assert "forked from long" in done
    assert fork_origin(RunDir.named("long-10k", root))["batch"] == where.landed >= 10_000 / LANDING_FACTOR


def test_a_rewind_that_throws_away_most_of_the_run_is_refused_without_yes_and_says_where_it_lands(long_run: RunDir):
    root = long_run.path.parent
    where = landing_of(long_run, 30_000, 2_000_000)
    refused = nnobs_cli(root, "rewind", "long", "--to", "30000")
    assert refused.returncode == 2
    assert refused.stdout.startswith(f"long: rewinding to batch 30,000 lands on the checkpoint kept at batch "
                                     f"{where.landed:,}")
    assert "throws away more than half of the run; add --yes to rewind anyway" in refused.stderr
    assert not events(long_run, "rewound") and read_history(long_run).batch == 2_000_000, "nothing was done"
    rewound = nnobs_cli(root, "rewind", "long", "--to", "30000", "--yes")
    assert rewound.returncode == 0, rewound.stderr
    assert rewound.stdout.index("lands on the checkpoint kept at batch") < rewound.stdout.index("sent")
    assert [r["event"][0] for r in events(long_run, "rewound")] == [where.landed]
    assert where.landed >= 30_000 / LANDING_FACTOR


def test_a_rewind_to_a_batch_that_is_no_batch_is_refused_and_nothing_is_sent(new_run):
    run = new_run("young", target=10**9)
    start_worker(run)
    wait_for(lambda: kept_batches(run.checkpoint), what="a kept checkpoint")
    refused = nnobs_cli(run.path.parent, "rewind", "young", "--to", "-1")
    assert refused.returncode == 2 and "rewind" in refused.stderr and not refused.stdout
    assert not run.control_file.exists(), "no command was queued"
