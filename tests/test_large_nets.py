"""Large nets write bounded run files: summaries and a sample in place of the whole vector, state reports in a budget."""

from __future__ import annotations

import os
import random
import textwrap
import time
from pathlib import Path

import pytest
from conftest import acks_of, answered, events, python, records_with, wait_for, wait_started
from nnobs.protocol.control import send_command
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import start_worker, stop_worker

MB = 1024 * 1024

MILLION = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))  # 1,011,010
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 1000), torch.randint(0, 10, (16,))
    with nnobs.Run("million", root=sys.argv[1], trainer=nnobs.torch.attach(model, optimizer), target=30,
                   report_every=10) as run:
        for batch in run.batches():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss.item())
            if batch == 30:
                break
    """
)


def test_a_million_parameter_model_writes_state_reports_under_200_kb_and_checkpoints_it_whole(runs_root):
    script = python(MILLION, str(runs_root))
    out, err = script.communicate(timeout=300)
    assert script.returncode == 0, err
    run = RunDir.named("million", runs_root)
    longest = max(len(line) for line in run.run_file.read_bytes().splitlines())
    assert longest < 200_000, f"the longest line is {longest:,} bytes"
    reports = records_with(run, "summary")
    assert [r["summary"][0] for r in reports] == [0, 10, 20]  # the break at 30 leaves the loop before its report
    assert all(len(r["summary"][1]) == 4 and len(r["sample"][1]) > 200 for r in reports)
    names = [name for name, _ in records_with(run, "params")[0]["params"][1]["tensors"]]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert load_checkpoint(run.checkpoint).state["torch"].nbytes > 4 * 1_000_000, "the checkpoint holds every parameter"
    print(f"longest line of a 1,011,010-parameter model's run file: {longest:,} bytes")


def test_the_2_256_256_1_net_grows_its_run_file_by_at_most_2_mb_a_minute(new_run):
    # A whole minute from the start, the fullest one: it holds the start's burst of state reports beside the
    # budget's steady rate, so a shorter window scaled up to a minute would overstate it.
    run = new_run(sizes=[2, 256, 256, 1], target=10**9)  # 66,817 parameters, default reporting
    start_worker(run)  # returns once the started record is in the run file
    start_size, start_t = os.path.getsize(run.run_file), time.monotonic()
    wait_for(lambda: time.monotonic() - start_t >= 60, timeout=90, what="a minute of training")
    grown, seconds = os.path.getsize(run.run_file) - start_size, time.monotonic() - start_t
    batches = read_history(run).batch
    stop_worker(run)
    per_minute = grown / seconds * 60
    print(f"2-256-256-1: the run file grew {per_minute / MB:.2f} MB in its first minute ({batches:,} batches)")
    assert batches > 2_000, "the net trained"
    assert per_minute <= 2 * MB
    assert events(run, "shutdown")


KEPT = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 600), torch.nn.ReLU(), torch.nn.Linear(600, 10))  # 606,610
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # a checkpoint of about 7 MB: the model and 2 moments
    x, y = torch.randn(16, 1000), torch.randint(0, 10, (16,))
    # Past batch 1,000, where a net this large keeps its first checkpoint by the schedule
    with nnobs.Run(sys.argv[2], root=sys.argv[1], trainer=nnobs.torch.attach(model, optimizer), target=2_500,
                   kept_mb=float(sys.argv[3])) as run:
        for batch in run.batches():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss.item())
    """
)


def kept_files(run: RunDir) -> tuple[list[int], int]:
    """The kept checkpoints' sizes, and how many of them are checkpoint.npz itself (a hard link, no room of its own)."""
    current = run.checkpoint.stat()
    stats = [path.stat() for path in (run.checkpoint.parent / "checkpoints").glob("*.npz")]
    links = [s for s in stats if (s.st_ino, s.st_dev) == (current.st_ino, current.st_dev)]
    return [s.st_size for s in stats if s not in links], len(links)


def test_the_kept_checkpoints_of_a_large_model_stay_within_the_budget_set(runs_root):
    for name, kept_mb in (("roomy", 25), ("tight", 5)):
        script = python(KEPT, str(runs_root), name, str(kept_mb))
        _, err = script.communicate(timeout=300)
        assert script.returncode == 0, err
        run = RunDir.named(name, runs_root)
        sizes, links = kept_files(run)
        checkpoint = run.checkpoint.stat().st_size
        print(f"kept_mb={kept_mb}: {len(sizes)} kept of {checkpoint / MB:.1f} MB beside checkpoint.npz, "
              f"{sum(sizes) / MB:.1f} MB in all")
        assert 6.5 * MB < checkpoint < 7.5 * MB, "the checkpoint holds the model and Adam's two moments"
        assert sum(sizes) <= kept_mb * MB
        assert links == 1, "the last checkpoint is kept too, as a link that takes no room"
        if name == "roomy":
            assert len(sizes) >= 2, "a budget of three checkpoints keeps more than the last"
        else:
            # Only batch 0's fits: Adam's moments are made at its first step.
            assert all(size < 3 * MB for size in sizes), "a checkpoint larger than the budget is not kept"


BLOWS_UP = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # 8,703,902 parameters: a checkpoint of 35 MB, over what is held in memory to go back to (32 MB)
    model = torch.nn.Sequential(torch.nn.Linear(3000, 2900), torch.nn.Tanh(), torch.nn.Linear(2900, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 3000), torch.randint(0, 2, (16,))
    with nnobs.Run("blows-up", root=sys.argv[1], trainer=nnobs.torch.attach(model, optimizer),
                   target=10**6) as run:
        for batch in run.batches():
            if batch == 30:
                with torch.no_grad():
                    model[0].weight[3, 7] = float("nan")
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss.item())
    """
)


def test_a_large_model_that_diverges_goes_back_to_its_checkpoint_on_disk(runs_root):
    script = python(BLOWS_UP, str(runs_root))
    try:
        run = RunDir.named("blows-up", runs_root)
        diverged = wait_for(lambda: events(run, "diverged"), what="the NaN loss to be noticed")[0]
        assert "parameters back to those of batch 0" in diverged["error"]
        command = send_command(run.control_file, "tell_state", by="test")
        answered(run, command)
        first = records_with(run, "summary")[0]["summary"][1]
        now = acks_of(run, command)[0]["summary"][1]
        assert [row[:5] for row in now] == [row[:5] for row in first], "the norms, means and extremes of batch 0"
    finally:
        script.kill()
        script.communicate()


APART = textwrap.dedent(
    """
    import sys
    import torch
    import nnobs, nnobs.torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 2000), torch.nn.ReLU(), torch.nn.Linear(2000, 10))  # 2,022,010
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)  # checkpoints of 8 MB, then 24 MB: put in place apart
    x, y = torch.randn(16, 1000), torch.randint(0, 10, (16,))
    with nnobs.Run("apart", root=sys.argv[1], trainer=nnobs.torch.attach(model, optimizer), target=10**9) as run:
        print(sum(float(p.detach().double().sum()) for p in model.parameters()), flush=True)  # as resumed
        for batch in run.batches():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss.item())
    """
)


def checkpoint_temps(run: RunDir) -> list[Path]:
    return list(run.checkpoint.parent.glob(f".{run.checkpoint.name}.*.tmp"))


def checkpointed_sum(run: RunDir) -> tuple[int, float]:
    """The checkpoint's batch and the sum of the model's parameters it holds."""
    import io

    import torch

    ckpt = load_checkpoint(run.checkpoint)
    state = torch.load(io.BytesIO(ckpt.state["torch"].tobytes()), weights_only=True)
    return ckpt.batch, sum(float(t.double().sum()) for t in state["model"].values())


def test_a_large_checkpoint_goes_into_place_beside_training_and_a_stop_waits_for_it(runs_root):
    script = python(APART, str(runs_root))
    run = RunDir.named("apart", runs_root)
    try:
        wait_started(run)
        # The next checkpoint's file is made ready halfway to it (5 s in: the start's took about 50 ms), as large as the
    # model and Adam's two moments.
        prepared = wait_for(
            lambda: [p.stat().st_ino for p in checkpoint_temps(run) if p.stat().st_size > 20 * MB],
            what="a prepared checkpoint file",
        )[0]
        # The clock's next checkpoint is written into it, and renamed into place
        wait_for(lambda: run.checkpoint.stat().st_ino == prepared, what="the prepared file in place")
        batch, _ = checkpointed_sum(run)  # whole, while training goes on
        assert batch > 0
        command = send_command(run.control_file, "shutdown", by="test")
        out, err = script.communicate(timeout=60)
    finally:
        script.kill()
    assert script.returncode == 0, err
    stopped_at = events(run, "shutdown")[-1]["event"][0]
    batch, checksum = checkpointed_sum(run)
    assert batch == stopped_at, "the stop's checkpoint is in place before the run reads stopped"
    assert not checkpoint_temps(run), "the prepared file is gone with the worker"
    print(f"stopped at batch {stopped_at:,} after {command['cmd']}; a restart resumes there")

    again = python(APART, str(runs_root))
    try:
        resumed_sum = float(again.stdout.readline())
        assert wait_started(run, count=2)["resumed_from"] == batch
        assert resumed_sum == pytest.approx(checksum, rel=1e-12), "the restart holds the checkpoint's parameters"
    finally:
        again.kill()
        again.communicate()


def test_kill_9_while_a_large_checkpoint_goes_into_place_leaves_one_whole_to_resume_from(runs_root):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    print(f"seed {seed}")
    run = RunDir.named("apart", runs_root)
    for number in range(1, 3):
        script = python(APART, str(runs_root))
        try:
            script.stdout.readline()  # the Run is open, its start's checkpoint written
            started = wait_started(run, count=number)
            first = run.checkpoint.stat().st_ino
            wait_for(lambda: run.checkpoint.stat().st_ino != first, what=f"a checkpoint of the clock (seed {seed})")
            time.sleep(rng.uniform(0, 10.0))  # a moment at random in the next clock checkpoint's cycle (about 10 s)
        finally:
            script.kill()
            script.communicate()
        batch, _ = checkpointed_sum(run)  # whole: the one before, or the new one once renamed into place
        assert batch >= started["event"][0], f"kill {number} (seed {seed})"
    left = set(checkpoint_temps(run))
    survivor = python(APART, str(runs_root))
    try:
        survivor.stdout.readline()
        assert wait_started(run, count=3)["resumed_from"] == batch, f"seed {seed}"
        assert not left & set(checkpoint_temps(run)), f"the killed worker's files are gone (seed {seed})"
    finally:
        survivor.kill()
        survivor.communicate()
