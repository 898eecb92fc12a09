"""What a page refresh costs at 10^3, 10^5 and 10^6 records, a cold load, the bytes sent, and memory."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from streamlit import dataframe_util

from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.records import RecordWriter
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.protocol.schema import loss_report, state_report
from nnobs.training.builtin.tasks import RunConfig, parameter_names
from nnobs.views.view import RunView, build_view, chart_frames

STATE_EVERY = 20  # one state report per 20 lines: a long run's mix of loss and state reports
CONFIG = RunConfig(target=10**12)
NAMES = parameter_names(CONFIG)


def write_run(run: RunDir, n_records: int, state_every: int = STATE_EVERY) -> None:
    """A run file of n_records in the worker's own shapes, written by the worker's own encoder.

    Loss reports carry the window of the 50 batches since the one before, as clock-paced reports do.
    """
    create_run(run, CONFIG)
    out = RecordWriter(run.run_file, gen=1)
    rng = np.random.default_rng(0)
    sv = rng.normal(size=len(NAMES))
    for i in range(n_records):
        batch = 50 * i
        if i % state_every:
            low, high = sorted(0.5 / (1 + i) * (1 + 0.1 * rng.random(2)))
            window = (50, low, batch - 49 + int(rng.integers(49)), high, batch - int(rng.integers(49)), (low + high) / 2)
            out.write(loss_report(batch, 0.5 / (1 + i) * (1 + 0.1 * rng.random()), window))
        else:
            sv += rng.normal(scale=0.01, size=len(sv))
            out.write(state_report(batch, 0.1, sv, 10**12, 2000, 0.0))
    out.close()


def chart_bytes(view: RunView) -> int:
    """Bytes of chart data the page sends: the Arrow tables Streamlit makes of the frames."""
    frames = chart_frames(view, smoothing=0.6, log_scale=True).values()
    return sum(len(dataframe_util.convert_anything_to_arrow_bytes(f)) for f in frames)


def refresh(run: RunDir, watcher: RunWatcher) -> tuple[float, int]:
    """One page refresh: read what is new, fold it, build the chart data and serialize it. Seconds and bytes."""
    start = time.perf_counter()
    view = build_view(run, watcher, CONFIG)
    sent = chart_bytes(view)
    return time.perf_counter() - start, sent


def steady_refresh(run: RunDir, refreshes: int = 30) -> tuple[float, float, int]:
    """Cold load, then the median refresh while a real worker appends to the same file. Seconds, seconds, bytes."""
    watcher = RunWatcher(run.run_file)
    cold, _ = refresh(run, watcher)
    start_worker(run)
    try:
        costs, sizes = [], []
        for _ in range(refreshes):
            time.sleep(0.1)  # the page's timer: records arrive in between, as they do in use
            cost, sent = refresh(run, watcher)
            costs.append(cost)
            sizes.append(sent)
    finally:
        stop_worker(run)
    return cold, statistics.median(costs), max(sizes)


MEMORY_PROBE = """
import sys
from pathlib import Path
from nnobs.views.view import build_view
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.rundir import RunDir

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

run = RunDir(Path(sys.argv[1]))
before = rss_mb()
view = build_view(run, RunWatcher(run.run_file), None)
print(before, rss_mb())
"""


def memory_mb(run: RunDir) -> tuple[float, float]:
    """RSS of a fresh process, after imports and after loading the run: megabytes."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(run.path)], capture_output=True, text=True, check=True)
    before, after = (float(v) for v in out.stdout.split())
    return before, after


def figures(say) -> None:
    with tempfile.TemporaryDirectory() as root:
        runs = {}
        for n in (10**3, 10**5, 10**6):
            runs[n] = RunDir.named(f"r{n}", root)
            write_run(runs[n], n)
        measured = {n: steady_refresh(run) for n, run in runs.items()}
        small, large = measured[10**3][1], measured[10**6][1]
        say("refresh at 10^6 / at 10^3 records", large / small, "<= 1.5", large / small <= 1.5,
            " · ".join(f"10^{len(str(n)) - 1}: {m[1] * 1000:.1f} ms" for n, m in measured.items()))
        cold = measured[10**6][0]
        say("cold load of 10^6 records, s", cold, "<= 2 s", cold <= 2.0,
            f"{runs[10**6].run_file.stat().st_size / 1e6:.0f} MB file, 1 line in {STATE_EVERY} a state report")
        sent = measured[10**6][2]
        say("chart data per refresh at 10^6 records, KB", sent / 1000, "<= 300 KB", sent <= 300_000,
            "Arrow bytes of every chart's data")
        states = RunDir.named("states", root)
        write_run(states, 10**6, state_every=1)
        cold_states, _ = refresh(states, RunWatcher(states.run_file))
        say("cold load of 10^6 state reports, s", cold_states, "(context)", None,
            f"{states.run_file.stat().st_size / 1e6:.0f} MB: the converged XOR run's mix, 9 numbers a line")
        before, after = memory_mb(runs[10**6])
        say("monitor memory with 10^6 records loaded, MB", after, "(context)", None,
            f"{after - before:.0f} MB above the {before:.0f} MB of a process that has imported the page's modules")


