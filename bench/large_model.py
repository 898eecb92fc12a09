"""A ~40M-parameter model with Adam, bare and observed: what watching a large model costs it.

An MLP 4096-4096-4096-1024-10 (37.8M parameters, ReLU) with Adam, batches of 8, on one thread, data made once in
memory. Each fit runs in a process of its own for SECONDS (its peak resident memory is the process's), bare and
observed in pairs, ROUNDS of them, bare first in one pair and observed first in the next: batches a second over the whole fit after the first batch, the median pair's
ratio and the best of each. The observed fit runs inside nnobs.Run(trainer=nnobs.torch.attach(model, optimizer)) with
its default settings (state reports, checkpoints, kept checkpoints); a tell-state is sent to it halfway through and
the time until its answer is in the run file is measured. After it, the kept checkpoints' bytes are set against
their budget.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (4096, 4096, 4096, 1024, 10)
ROWS = 8
SECONDS = 60.0
ROUNDS = 4  # pairs of fits, which goes first alternating: bare fits alone moved by 20 % from one to the next in an hour
NAME = "large"


def fit(mode: str, root: str, seconds: float) -> dict:
    """Train for seconds in this process, bare or observed; its figures."""
    import resource

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(SIZES, SIZES[1:], strict=False):
        layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(ROWS, SIZES[0]), torch.randint(0, SIZES[-1], (ROWS,))

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    batches, start, elapsed = 0, 0.0, 0.0
    if mode == "bare":
        step()
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            step()
            batches += 1
    else:
        import nnobs
        import nnobs.torch

        with nnobs.Run(NAME, root=root, trainer=nnobs.torch.attach(model, optimizer), target=10**9) as run:
            for batch in run.batches():
                run.log(step())
                if batch == 1:
                    start = time.perf_counter()
                elif batch > 1:
                    batches += 1
                    if (elapsed := time.perf_counter() - start) >= seconds:
                        break  # the clock stops here: the checkpoint on leaving the run is not timed
    params = sum(p.numel() for p in model.parameters())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rate": batches / elapsed, "peak_mb": peak_mb, "params": params}


def run_fit(mode: str, root: str, seconds: float, tell_at: float | None = None) -> dict:
    """fit() in a process of its own; with tell_at, a tell-state sent that many seconds in, and its answer timed."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.large_model", mode, root, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    answered = None
    if tell_at is not None:
        answered = tell_state_after(Path(root), tell_at)
    out, _ = child.communicate(timeout=seconds + 600)
    if child.returncode:
        raise RuntimeError(f"the {mode} fit failed ({child.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "tell_state_s": answered}


def tell_state_after(root: Path, after: float) -> float | None:
    """Send tell_state to the run after seconds; the seconds until its answer is in the run file."""
    from nnobs.protocol.control import queue_commands
    from nnobs.protocol.rundir import RunDir
    from nnobs.training.commands import answered_since

    time.sleep(after)
    run = RunDir.named(NAME, root)
    offset = run.run_file.stat().st_size
    sent = time.perf_counter()
    (command,) = queue_commands(run, [("tell_state", None)], by="bench")
    while time.perf_counter() - sent < 60:
        if command["id"] in answered_since(run.run_file, offset):
            return time.perf_counter() - sent
        time.sleep(0.01)
    return None


def kept_bytes(root: str) -> tuple[int, int]:
    """Bytes of the run's kept checkpoints (hard links to checkpoint.npz count as nothing more), and how many."""
    from nnobs.protocol.rundir import RunDir

    run = RunDir.named(NAME, root)
    current = run.checkpoint.stat()
    folder = run.checkpoint.parent / "checkpoints"
    stats = [p.stat() for p in folder.glob("*.npz")]
    return sum(s.st_size for s in stats if s.st_ino != current.st_ino), len(stats)


def measure(seconds: float = SECONDS, rounds: int = ROUNDS) -> dict:
    """ROUNDS pairs of fits, in turn bare and observed first: their ratios, memory, tell-state answers and kept checkpoints."""
    pairs = []
    with tempfile.TemporaryDirectory() as base:
        for round_ in range(rounds):
            root = os.path.join(base, f"r{round_}")
            if round_ % 2 == 0:
                bare = run_fit("bare", root, seconds)
                observed = run_fit("observed", root, seconds, tell_at=seconds / 2)
            else:  # the other way round: a machine slowing (or speeding up) over minutes favours neither side
                observed = run_fit("observed", root, seconds, tell_at=seconds / 2)
                bare = run_fit("bare", root, seconds)
            pairs.append((bare, observed, *kept_bytes(root)))
    return {
        "ratio": statistics.median(o["rate"] / b["rate"] for b, o, _, _ in pairs),
        "memory": statistics.median(o["peak_mb"] / b["peak_mb"] for b, o, _, _ in pairs),
        "bare": max(b["rate"] for b, _, _, _ in pairs),
        "observed": max(o["rate"] for _, o, _, _ in pairs),
        "bare_mb": statistics.median(b["peak_mb"] for b, _, _, _ in pairs),
        "observed_mb": statistics.median(o["peak_mb"] for _, o, _, _ in pairs),
        "tell_s": max(o["tell_state_s"] if o["tell_state_s"] is not None else math.inf for _, o, _, _ in pairs),
        "kept": max(k for _, _, k, _ in pairs),
        "n_kept": max(n for _, _, _, n in pairs),
        "params": pairs[0][0]["params"],
        "rounds": rounds,
        "seconds": seconds,
    }


def figures(say) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        say("40M model observed / bare", None, ">= 0.97", None, "PyTorch not installed: pip install -e '.[bench]'")
        return
    from nnobs.protocol.checkpoint import KEPT_BYTES

    m = measure()
    fits = f"{m['params']:,}-parameter MLP, Adam, batch {ROWS}, 1 thread; median of {m['rounds']} pairs of "
    fits += f"{m['seconds']:.0f} s fits, each in a process of its own, bare first in one pair and observed in the next"
    say("40M model observed / bare (batches/s)", m["ratio"], ">= 0.97", m["ratio"] >= 0.97,
        f"{fits}; best {m['observed']:.2f} vs {m['bare']:.2f} batches/s")
    say("40M model peak memory observed / bare", m["memory"], "<= 1.1", m["memory"] <= 1.1,
        f"{m['observed_mb']:,.0f} vs {m['bare_mb']:,.0f} MB resident at most; checkpoints written from the tensors")
    say("40M model tell-state answered (s)", m["tell_s"], "< 1", m["tell_s"] < 1,
        "from the command's write to its answer in the run file, the slowest of the rounds")
    say("40M model kept checkpoints (MiB)", m["kept"] / 2**20, f"<= {KEPT_BYTES / 2**20:.0f}",
        m["kept"] <= KEPT_BYTES, f"{m['n_kept']} kept after a fit (the link to checkpoint.npz counts nothing)")


if __name__ == "__main__":
    if len(sys.argv) == 4:
        print(json.dumps(fit(sys.argv[1], sys.argv[2], float(sys.argv[3]))))
    else:
        figures(lambda *row: print(*row, sep=" | "))
