"""A torchrun job of two ranks (gloo, CPU), bare and as one nnobs run: what steering the ranks as one costs them.

The job trains a 784-256-256-10 MLP with DistributedDataParallel and Adam, batches of 64 a rank, one thread a rank.
Every rank opens nnobs.Run (rank 0 holds the run, the others follow its decisions: a broadcast and an all-gather at
each of its stops), and the job alternates rounds of bare steps (inside one batch of the run: nothing of nnobs runs)
and rounds of steps through run.batches() and run.log(), in the same processes: jobs started apart land on the two
cores differently, which moved the bare rate by 20 % from one job to the next. Rank 0 times each round; the ratio is
the median of the rounds' pairs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# Rounds of 200 steps (about a second a side): one round's ratio strays by 15 % either way on two shared cores, as
# much in rounds of 600, so many short rounds pin the median better than a few long ones in the same time.
STEPS, WARM_UP, ROUNDS, JOBS = 200, 200, 24, 3

JOB = """
import sys, time, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
import nnobs, nnobs.torch

root, steps, warm_up, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
ddp = DistributedDataParallel(model)
optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(dist.get_rank())
x, y = torch.randn(64, 784, generator=data), torch.randint(0, 10, (64,), generator=data)


def step():
    loss = nn.functional.cross_entropy(ddp(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


target = warm_up + rounds * (steps + 1)  # each bare round trains inside one batch of the run
with nnobs.Run("ddp", trainer=nnobs.torch.attach(model, optimizer), target=target, root=root) as run:
    batches = iter(run.batches())
    for _ in range(warm_up):
        next(batches)
        run.log(step().item())
    for _ in range(rounds):
        next(batches)
        started = time.perf_counter()
        for _ in range(steps):
            loss = step().item()
        bare = steps / (time.perf_counter() - started)
        run.log(loss)
        started = time.perf_counter()
        for _ in range(steps):
            next(batches)
            run.log(step().item())
        observed = steps / (time.perf_counter() - started)
        if dist.get_rank() == 0:
            print("rates", bare, observed, flush=True)
    for _ in batches:  # at the target: the run ends on every rank
        pass
dist.destroy_process_group()
"""


def job_rates(script: Path, root: str) -> list[tuple[float, float]]:
    """Each round's (bare, observed) steps a second on rank 0."""
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), root, str(STEPS), str(WARM_UP), str(ROUNDS)],
        capture_output=True, text=True, timeout=600,
    )
    rates = [(float(line.split()[1]), float(line.split()[2])) for line in done.stdout.splitlines()
             if line.startswith("rates ")]
    if done.returncode != 0 or len(rates) != ROUNDS:
        raise RuntimeError(f"the DDP job failed: {done.stderr[-2000:]}")
    return rates


def figures(say) -> None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        say("DDP 2 ranks observed / bare", None, ">= 0.97", None, "PyTorch not installed: pip install -e '.[bench]'")
        return
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "job.py"
        script.write_text(JOB)
        rounds = [pair for job in range(JOBS) for pair in job_rates(script, str(Path(folder) / f"runs{job}"))]
    ratio = statistics.median(observed / bare for bare, observed in rounds)
    say("DDP 2 ranks observed / bare", ratio, ">= 0.97", ratio >= 0.97,
        f"median of {len(rounds)} alternating rounds of {STEPS:,} steps in {JOBS} torchrun jobs (gloo, CPU, one "
        f"thread a rank), 784-256-256-10 MLP, Adam, batch 64 a rank; best {max(o for _, o in rounds):,.0f} vs "
        f"{max(b for b, _ in rounds):,.0f} steps/s")
