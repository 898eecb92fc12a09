"""A lab of 100 runs, ten of them of 10^6 records: overview and compare refreshes against one run's page, and memory."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.page_cost import refresh, write_run
from nnobs.views.compare import curve_frame, curves_of_history
from nnobs.reading.watcher import RunWatcher
from nnobs.views.overview import run_rows
from nnobs.app.overview_page import overview_frame
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.training.builtin.tasks import RunConfig
from nnobs.reading.shared_readers import curves_for

N_RUNS = 100
N_BIG = 10
BIG_RECORDS = 10**6
SMALL_RECORDS = 10**3
COMPARED = 8  # runs in the comparison: seven of the big ones and the live one
REFRESHES = 20
TASKS = ("xor", "circle", "noisy-xor", "gauss", "spiral", "plane", "sine")


def make_root(root: str, scale: float = 1.0) -> tuple[RunDir, list[RunDir]]:
    """The live default run, ten runs of 10^6 records (one written, nine copied) and small runs of every task."""
    big = [RunDir.named(f"big-{i}", root) for i in range(N_BIG)]
    write_run(big[0], int(BIG_RECORDS * scale))
    for run in big[1:]:
        run.path.mkdir()
        for name in ("config.json", "run.jsonl"):
            shutil.copyfile(big[0].path / name, run.path / name)
    small = RunDir.named("small-0", root)
    write_run(small, SMALL_RECORDS)
    for i in range(N_RUNS - N_BIG - 1):
        run = RunDir.named(f"small-{i}", root)
        if i:
            run.path.mkdir()
            shutil.copyfile(small.run_file, run.run_file)
            run.config.write_text(RunConfig(task=TASKS[i % len(TASKS)], target=10**12).to_json())
    live = RunDir.named("live", root)
    create_run(live, RunConfig(target=10**12))
    return live, big


def median_ms(step, refreshes: int = REFRESHES) -> float:
    """The median wall time of step(), called on the page's timer while the live run appends."""
    costs = []
    for _ in range(refreshes):
        time.sleep(0.1)  # records arrive in between, as they do in use
        start = time.perf_counter()
        step()
        costs.append(time.perf_counter() - start)
    return 1000 * statistics.median(costs)


def overview_refresh(root: str) -> None:
    """What the overview does each tick: every row (unchanged runs from memory), the table, its Arrow bytes."""
    pa.Table.from_pandas(overview_frame(run_rows(root), time.time()), preserve_index=False)


def compare_refresh(runs: list[RunDir]) -> None:
    """What the compare page does each tick: each run's curves, both charts' frames, their Arrow bytes."""
    curves = {run.name: curves_of_history(curves_for(run.run_file)) for run in runs}
    for series in ("loss", "test"):
        pa.Table.from_pandas(curve_frame(curves, series, 0.6, True), preserve_index=False)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


MEMORY_PROBE = """
import sys, json
from pathlib import Path
from bench.lab import compare_refresh, overview_refresh, rss_mb
from nnobs.protocol.rundir import RunDir
from nnobs.views.view import build_view
from nnobs.reading.shared_readers import watcher_for

root, what = sys.argv[1], sys.argv[2]
before = rss_mb()
if what == "one":
    run = RunDir.named("big-0", root)
    build_view(run, watcher_for(run.run_file), None)
else:
    overview_refresh(root)
    compare_refresh([RunDir.named(f"big-{i}", root) for i in range(8)])
print(json.dumps([before, rss_mb()]))
"""


def memory_mb(root: str, what: str) -> tuple[float, float]:
    """RSS of a fresh process after the page's imports, and after showing what: megabytes."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, root, what], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    return tuple(json.loads(out.stdout.splitlines()[-1]))


def figures(say, scale: float = 1.0) -> None:
    """scale < 1 writes that share of the big runs' records (a quick check that the section works, not figures)."""
    with tempfile.TemporaryDirectory() as root:
        live, big = make_root(root, scale)
        for run in big:  # each opened once, as a first look would: its fold cache is then beside it
            RunWatcher(run.run_file).refresh()
            curves_for(run.run_file)
        start_worker(live)
        try:
            watcher = RunWatcher(live.run_file)
            page = median_ms(lambda: refresh(live, watcher))
            overview = median_ms(lambda: overview_refresh(root))
            compared = [*big[:COMPARED - 1], live]
            compare = median_ms(lambda: compare_refresh(compared))
        finally:
            stop_worker(live)
        say("overview refresh / run page refresh", overview / page, "<= 3", overview / page <= 3,
            f"{overview:.1f} vs {page:.1f} ms: {N_RUNS} runs, {N_BIG} of {int(BIG_RECORDS * scale):,} records, one training")
        say("compare of 8 refresh / run page refresh", compare / page, "<= 4", compare / page <= 4,
            f"{compare:.1f} vs {page:.1f} ms: seven runs of {int(BIG_RECORDS * scale):,} records and the live one")
        one = memory_mb(root, "one")
        lab = memory_mb(root, "lab")
        ratio = lab[1] / one[1]
        say("monitor memory, overview + compare of 8 / one 10^6 run", ratio, "<= 2", ratio <= 2,
            f"{lab[1]:.0f} vs {one[1]:.0f} MB ({lab[1] - lab[0]:.0f} vs {one[1] - one[0]:.0f} MB above the imports)")


if __name__ == "__main__":
    figures(lambda *row: print(row), scale=float(sys.argv[1]) if sys.argv[1:] else 1.0)
