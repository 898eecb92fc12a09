"""A run killed with kill -9 and restarted reads, batch for batch, what it would have read had it never stopped.

The run is a real worker on the spiral task, with a batch size that does not divide the training
set (batches straddle epochs); it is killed at a seeded random moment after a checkpoint. What it
draws after the restart is compared, loss for loss, with an uninterrupted run of the same config
trained here in-process from batch 0: the loss of a batch depends on every row drawn for it and for
every batch before it, so equal losses mean equal batches. The comparison is shown to catch a
sampler that restarts afresh, and one that keeps its generator but forgets where it was in the epoch.
"""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest

from conftest import FOREVER, records_with, wait_for, wait_started
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, restart_worker, start_worker, stop_worker, worker_pid
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig
from nnobs.training.worker import builtin_trainer

CONFIG = RunConfig(task="spiral", net="2x8tx8tx1t", seed=3, noise=0.1, batch_size=7, target=FOREVER, report_every=0)
AFTER_RESTART = 20_000  # batches the resumed run trains before it is compared


def uninterrupted_losses(batches: int):
    """The loss of each of the first `batches` batches of CONFIG trained without a stop (index 0: batch 1), and the
    trainer as it is after them."""
    trainer = builtin_trainer(CONFIG)
    learn, next_batch = trainer.net.learn_one, trainer.next_batch
    return np.array([learn(*next_batch()) for _ in range(batches)]), trainer


def losses_from(trainer, batches: int) -> np.ndarray:
    learn, next_batch = trainer.net.learn_one, trainer.next_batch
    return np.array([learn(*next_batch()) for _ in range(batches)])


def reported(run: RunDir, gen: int, after: int) -> dict[int, float]:
    """batch -> the loss a generation reported for that batch, past batch `after`."""
    return {r["loss"][0]: r["loss"][1] for r in records_with(run, "loss") if r["gen"] == gen and r["loss"][0] > after}


def test_a_run_killed_and_restarted_draws_the_batches_an_uninterrupted_run_would_have(runs_root):
    seed = random.randrange(2**32)
    print(f"moment seed {seed}")
    moment = random.Random(seed)
    run = RunDir.named("spiral", root=runs_root)
    create_run(run, CONFIG)
    pid = start_worker(run)
    first = wait_for(lambda: (c := load_checkpoint(run.checkpoint)) is not None and c.batch > 0 and c,
                     what="a checkpoint past batch 0")
    kill_at = first.batch + moment.randrange(30_000)  # a random moment after it, between two checkpoints or past one
    wait_for(lambda: read_history(run).batch >= kill_at, timeout=60, what=f"training past batch {kill_at:,}")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_pid(run) is None, what="the killed worker's lock to drop")
    ckpt = load_checkpoint(run.checkpoint)  # what the next generation resumes from
    resumed_at = ckpt.batch
    print(f"killed past batch {kill_at:,}; resumes from the checkpoint at batch {resumed_at:,}")

    restart_worker(run)
    assert wait_started(run, 2)["resumed_from"] == resumed_at
    # Batches and reports both: late in a run the loss reports come by the clock, so a fast moment gives few.
    wait_for(lambda: read_history(run).batch > resumed_at + AFTER_RESTART and len(reported(run, 2, resumed_at)) >= 10,
             timeout=60, what=f"the resumed run to train {AFTER_RESTART:,} batches and report at least 10 losses")
    stop_worker(run)

    second = reported(run, 2, resumed_at)
    last = max(second)
    reference, _ = uninterrupted_losses(last)
    # The checkpoint holds what an uninterrupted run holds at its batch: the net, and where its batches stood.
    at_checkpoint = builtin_trainer(CONFIG)
    losses_from(at_checkpoint, resumed_at)
    np.testing.assert_array_equal(ckpt.sv, at_checkpoint.net.state_vector())
    assert load_sampler_state(ckpt) == at_checkpoint.sampler.state()

    for gen, losses in ((1, reported(run, 1, 0)), (2, second)):
        mismatched = [(b, loss, reference[b - 1]) for b, loss in sorted(losses.items()) if b <= last and loss != reference[b - 1]]
        assert not mismatched, f"generation {gen}: reported losses differ from the uninterrupted run's (batch, reported, uninterrupted): {mismatched[:5]}"
    assert len(second) >= 10
    # Between two reports the windows cover every batch: their extremes are those of the uninterrupted run too.
    windows = [r["window"][1] for r in records_with(run, "window") if r["gen"] == 2 and r["window"][0] <= last]
    assert sum(w[0] for w in windows) >= AFTER_RESTART / 2, "the windows cover the batches between the reports"
    for n, low, low_at, high, high_at, mean in windows:
        assert low == pytest.approx(reference[low_at - 1], rel=1e-6) and high == pytest.approx(reference[high_at - 1], rel=1e-6)

    # The comparison catches a sampler that starts afresh, and one that forgets its place in the epoch.
    compared = sorted(second)[:20]
    afresh = builtin_trainer(CONFIG)
    afresh.net.set_state_from_vector(ckpt.sv)
    forgetful = builtin_trainer(CONFIG)
    forgetful.load(ckpt.state)
    state = load_sampler_state(ckpt)
    wrong_ones = {"afresh": afresh}
    if state["at"] != 0:
        forgetful.sampler.restore({**state, "at": 0})
        wrong_ones["at the epoch's start"] = forgetful
    for what, wrong in wrong_ones.items():
        losses = losses_from(wrong, compared[-1] - resumed_at)
        assert all(losses[b - resumed_at - 1] != second[b] for b in compared), f"a sampler {what} would pass unseen"


def load_sampler_state(ckpt) -> dict:
    """The sampler's state as the checkpoint keeps it: JSON in a string array."""
    return json.loads(str(ckpt.state["sampler"]))
