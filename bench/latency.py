"""Command latency: from a command written to the control file to the worker's answer in the run file."""

from __future__ import annotations

import random
import statistics
import tempfile
import time

from nnobs.protocol.control import send_command
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.training.builtin.tasks import RunConfig

COMMANDS = 60


def latencies(pace: float = 0.0) -> list[float]:
    """Seconds from each command's write to its answer, while the worker trains flat out (or at a pace)."""
    with tempfile.TemporaryDirectory() as root:
        run = RunDir.named("latency", root)
        create_run(run, RunConfig(target=10**12, pace=pace))
        start_worker(run)
        watcher, found = RunWatcher(run.run_file), []
        try:
            for i in range(COMMANDS):
                command = send_command(run.control_file, "eta", 0.1 + 1e-6 * (i % 2), by="bench")
                while (answer := watcher.refresh().answers.get(command["id"])) is None:
                    time.sleep(0.005)
                found.append(answer.t - command["t"])
                time.sleep(random.uniform(0, 0.05))  # spread the sends over the worker's check cycle
        finally:
            stop_worker(run)
        return found


def figures(say) -> None:
    found = sorted(latencies())
    median, p95 = statistics.median(found), found[int(0.95 * (len(found) - 1))]
    say("command latency, median ms", median * 1000, "<= 50 ms", median <= 0.050, f"{len(found)} commands while training")
    say("command latency, p95 ms", p95 * 1000, "<= 150 ms", p95 <= 0.150, "control write to answer record")
    paced = sorted(latencies(pace=20))
    median = statistics.median(paced)
    say("command latency paced at 20 batches/s, median ms", median * 1000, "<= 50 ms", median <= 0.050,
        "slow motion answers as fast")
