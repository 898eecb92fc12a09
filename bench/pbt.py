"""Population-based training against a grid of the same total batches: which finds the better net.

Task spiral (the two interleaved spirals, its own 2x8tx8tx1t net), 8 runs of 30,000 batches each way, on three seeds:
a grid of 8 etas spaced evenly in log from 0.003 to 3, and a population of 8 whose etas are drawn from the same
range, exploiting every 3,000 batches by test loss. Each side trains 240,000 batches in all; the figure is the best
final test loss of the population over the grid's, per seed (below 1: the population found the better net).
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nnobs.protocol.population import Journal, folder_of

MEMBERS, TARGET, INTERVAL, LOW, HIGH = 8, 30_000, 3_000, 0.003, 3.0
SEEDS = (1, 2, 3, 4, 5)
TASK = ("--task", "spiral")


def test_loss(root: str, name: str) -> float:
    """The run's test loss at its target, from its run file."""
    value = math.nan
    with open(Path(root) / name / "run.jsonl") as f:
        for line in f:
            record = json.loads(line)
            metrics = record.get("metrics")
            if metrics and metrics[0] == TARGET and "test_loss" in metrics[1]:
                value = metrics[1]["test_loss"][0]
    return value


def side_by_side(root: str, seed: int) -> tuple[float, float, float, float]:
    """(grid's best, population's best, grid's seconds, population's seconds) on one seed."""
    cli = [sys.executable, "-m", "nnobs.cli", "--runs", root]
    etas = [LOW * (HIGH / LOW) ** (i / (MEMBERS - 1)) for i in range(MEMBERS)]
    grid = ",".join(f"{eta:.3g}" for eta in etas)
    started = time.perf_counter()
    subprocess.run([*cli, "sweep", f"grid{seed}", *TASK, "--eta", grid, "--seed", str(seed), "--target", str(TARGET)],
                   check=True, capture_output=True)
    grid_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*cli, "sweep", f"pbt{seed}", "--pbt", *TASK, "--population", str(MEMBERS), "--eta",
                    f"{LOW}..{HIGH}", "--seed", str(seed), "--target", str(TARGET), "--interval", str(INTERVAL),
                    "--wait"], check=True, capture_output=True)
    pbt_s = time.perf_counter() - started
    journal = Journal(folder_of(root, f"pbt{seed}") / "decisions.jsonl")
    assert journal.done, "the population finished"
    grid_best = min(test_loss(root, f"grid{seed}-eta{eta:.3g}-seed{seed}") for eta in etas)
    pbt_best = min(test_loss(root, f"pbt{seed}-m{i}") for i in range(MEMBERS))
    return grid_best, pbt_best, grid_s, pbt_s


def figures(say) -> None:
    ratios, lines = [], []
    with tempfile.TemporaryDirectory() as root:
        for seed in SEEDS:
            grid_best, pbt_best, grid_s, pbt_s = side_by_side(root, seed)
            ratios.append(pbt_best / grid_best)
            lines.append(f"seed {seed}: grid {grid_best:.4g} ({grid_s:.0f} s), population {pbt_best:.4g} ({pbt_s:.0f} s)")
            print("  " + lines[-1], file=sys.stderr, flush=True)
    ratio = statistics.median(ratios)
    say("population / grid, best test loss (spiral)", ratio, "< 1: the better net", ratio < 1,
        f"median of {len(SEEDS)} seeds ({', '.join(f'{r:.2f}' for r in ratios)}); 8 runs x {TARGET:,} batches each "
        f"way; " + "; ".join(lines))
