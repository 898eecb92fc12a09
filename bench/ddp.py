"""A torchrun job of two ranks (gloo, CPU), bare and as one nnobs run: what steering the ranks as one costs them.

The job trains a 784-256-256-10 MLP with DistributedDataParallel and Adam, batches of 64 a rank, one thread a rank;
the observed job opens nnobs.Run on every rank (rank 0 holds the run, the others follow its decisions: a broadcast
and an all-gather at each of its stops). Rank 0 times its steps after a warm-up; jobs alternate bare and observed,
and the ratio is the median of the pairs'.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS, WARM_UP, PAIRS = 3000, 200, 3

JOB = """
import sys, time, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

observed, root, steps, warm_up = sys.argv[1] == "observed", sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dist.init_process_group("gloo")
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
ddp = DistributedDataParallel(model)
optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
data = torch.Generator().manual_seed(dist.get_rank())
x, y = torch.randn(64, 784, generator=data), torch.randint(0, 10, (64,), generator=data)
started = None


def step(batch):
    global started
    if batch == warm_up:
        started = time.perf_counter()
    loss = nn.functional.cross_entropy(ddp(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


if observed:
    import nnobs, nnobs.torch
    with nnobs.Run("ddp", trainer=nnobs.torch.attach(model, optimizer), target=steps, root=root) as run:
        for batch in run.batches():
            run.log(step(batch).item())
else:
    for batch in range(1, steps + 1):
        step(batch).item()
if dist.get_rank() == 0:
    print("rate", (steps - warm_up) / (time.perf_counter() - started), flush=True)
dist.destroy_process_group()
"""


def job_rate(script: Path, observed: bool, root: str) -> float:
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), "observed" if observed else "bare", root,
         str(STEPS), str(WARM_UP)],
        capture_output=True, text=True, timeout=600,
    )
    rates = [float(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("rate ")]
    if done.returncode != 0 or not rates:
        raise RuntimeError(f"the DDP job failed: {done.stderr[-2000:]}")
    return rates[0]


def figures(say) -> None:
    try:
        import torch.distributed  # noqa: F401
    except ImportError:
        say("DDP 2 ranks observed / bare", None, ">= 0.97", None, "PyTorch not installed: pip install -e '.[bench]'")
        return
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "job.py"
        script.write_text(JOB)
        ratios, bare, watched = [], 0.0, 0.0
        for pair in range(PAIRS):
            plain = job_rate(script, False, folder)
            observed = job_rate(script, True, str(Path(folder) / f"runs{pair}"))
            ratios.append(observed / plain)
            bare, watched = max(bare, plain), max(watched, observed)
    ratio = statistics.median(ratios)
    say("DDP 2 ranks observed / bare", ratio, ">= 0.97", ratio >= 0.97,
        f"median of {PAIRS} alternating pairs of {STEPS:,}-step torchrun jobs (gloo, CPU, one thread a rank), "
        f"784-256-256-10 MLP, Adam, batch 64 a rank; best {watched:,.0f} vs {bare:,.0f} steps/s")
