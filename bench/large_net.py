"""Large nets: a page refresh of the 2-256-256-1 net's run beside the XOR run's, its run file's growth, and the
longest line a million-parameter PyTorch model writes.

The two runs are trained TRAIN_S seconds each by real workers (one after the other, default reporting, a
target far away), then refreshed the way page_cost does (read what is new, fold it, build the chart data and
serialize it) while their workers train on: alternating, ROUNDS times, each round's median, the best of them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench.page_cost import chart_bytes
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.view import build_view

TRAIN_S = 60.0  # the first minute, the fullest: the start's burst of state reports beside the steady budget
STEADY_FROM_S = 10.0  # the growth after the start's burst of state reports: from here to TRAIN_S
ROUNDS = 3
REFRESHES = 20  # a round: this many refreshes, 0.1 s apart, as the page's timer does
MB = 1e6
XOR = RunConfig(target=10**12)
LARGE = RunConfig(sizes=[2, 256, 256, 1], target=10**12)  # 66,817 parameters


def refresh_cost(run: RunDir, watcher: RunWatcher, config: RunConfig) -> float:
    start = time.perf_counter()
    chart_bytes(build_view(run, watcher, config))
    return time.perf_counter() - start


def train(run: RunDir, config: RunConfig) -> dict:
    """Train the run TRAIN_S seconds from its start; the run file's growth over it, and after the first seconds."""
    create_run(run, config)
    start_worker(run)  # returns once the started record is in the run file
    start, size0 = time.monotonic(), os.path.getsize(run.run_file)
    time.sleep(STEADY_FROM_S)
    steady, size1 = time.monotonic(), os.path.getsize(run.run_file)
    time.sleep(max(0.0, TRAIN_S - (time.monotonic() - start)))
    end, size2 = time.monotonic(), os.path.getsize(run.run_file)
    stop_worker(run)
    watcher = RunWatcher(run.run_file)
    cold = refresh_cost(run, watcher, config)
    return {"whole": (size2 - size0) / (end - start) * 60 / MB, "steady": (size2 - size1) / (end - steady) * 60 / MB,
            "batches": watcher.refresh().batch, "cold": cold, "size": os.path.getsize(run.run_file) / MB}


def steady_refresh(run: RunDir, watcher: RunWatcher, config: RunConfig) -> float:
    """The median refresh of a round while the run's worker trains on and appends."""
    start_worker(run)
    try:
        costs = []
        for _ in range(REFRESHES):
            time.sleep(0.1)
            costs.append(refresh_cost(run, watcher, config))
    finally:
        stop_worker(run)
    return statistics.median(costs)


def longest_line_of_a_million(root: str) -> tuple[int, str, int] | None:
    """Bytes of the longest line in the run file of a ~10^6-parameter PyTorch model, what it is, and its parameters."""
    try:
        import torch
    except ImportError:
        return None
    import json

    import nnobs
    import nnobs.torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))  # 1,011,010
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 1000), torch.randint(0, 10, (16,))
    with nnobs.Run("million", root=root, trainer=nnobs.torch.attach(model, optimizer), report_every=10) as run:
        for batch in run.batches():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            run.log(loss.item())
            if batch == 35:
                break
    lines = run.run_dir.run_file.read_bytes().splitlines()
    longest = max(lines, key=len)
    kinds = "+".join(k for k in json.loads(longest) if k not in ("t", "gen"))
    return len(longest), kinds, sum(p.numel() for p in model.parameters())


def figures(say) -> None:
    with tempfile.TemporaryDirectory() as root:
        xor_run, large_run = RunDir.named("xor", root), RunDir.named("large", root)
        xor, large = train(xor_run, XOR), train(large_run, LARGE)
        watchers = {"xor": RunWatcher(xor_run.run_file), "large": RunWatcher(large_run.run_file)}
        for name, run, config in (("xor", xor_run, XOR), ("large", large_run, LARGE)):
            refresh_cost(run, watchers[name], config)  # the cold load, before the rounds
        best = {"xor": float("inf"), "large": float("inf")}
        for _ in range(ROUNDS):
            best["xor"] = min(best["xor"], steady_refresh(xor_run, watchers["xor"], XOR))
            best["large"] = min(best["large"], steady_refresh(large_run, watchers["large"], LARGE))
        ratio = best["large"] / best["xor"]
        say("refresh 2-256-256-1 / XOR run", ratio, "(context)", None,
            f"{best['large'] * 1000:.1f} vs {best['xor'] * 1000:.1f} ms after {TRAIN_S:.0f} s of training each "
            f"({large['batches']:,} vs {xor['batches']:,} batches, {large['size']:.1f} vs {xor['size']:.1f} MB); "
            f"cold load {large['cold'] * 1000:.0f} vs {xor['cold'] * 1000:.0f} ms")
        say("2-256-256-1 run file growth, MB a minute", large["whole"], "<= 2 MB", large["whole"] <= 2.0,
            f"over its first {TRAIN_S:.0f} s at default reporting (MB = 10^6 bytes); "
            f"{large['steady']:.2f} after the first {STEADY_FROM_S:.0f} s; XOR's {xor['whole']:.2f}")
        found = longest_line_of_a_million(root)
        if found is None:
            say("longest run file line, 10^6-parameter model, KB", None, "< 200 KB", None, "PyTorch not installed")
            return
        size, kinds, n_params = found
        say("longest run file line, 10^6-parameter model, KB", size / 1000, "< 200 KB", size < 200_000,
            f"{n_params:,} parameters by nnobs.torch, report_every 10: the {kinds} line")
