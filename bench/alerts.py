"""The alert watcher over a runs root of 1,000 runs: what watching them costs, in cores.

A real watcher process (started by `nnobs alert`, as a user would) looks at 1,000 finished runs every 2 s; its CPU
time over a minute of looks, after its first look, divided by the minute, is its share of a core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.shared_fs import N_RUNS, make_root
from nnobs.views.alert_watcher import folder_of, watcher_pid

MEASURED_S = 60.0


def cpu_seconds(pid: int) -> float:
    """The process's user and system time so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watcher_cores(root: str) -> float:
    cli = [sys.executable, "-m", "nnobs.cli", "--runs", root]
    subprocess.run([*cli, "alert", "--command", "true", "--threshold", "loss<0.001"], check=True, capture_output=True)
    folder = folder_of(root)
    try:
        pid = watcher_pid(folder)
        assert pid and pid > 0
        seen = Path(folder) / "seen.json"
        deadline = time.monotonic() + 120
        while not seen.exists() and time.monotonic() < deadline:  # its first look reads every run's head and tail
            time.sleep(0.1)
        start, used = time.monotonic(), cpu_seconds(pid)
        time.sleep(MEASURED_S)  # a minute of the watcher's own looks: what is measured is its clock, not ours
        return (cpu_seconds(pid) - used) / (time.monotonic() - start)
    finally:
        subprocess.run([*cli, "alert", "--off"], capture_output=True)


def figures(say) -> None:
    with tempfile.TemporaryDirectory() as root:
        make_root(root)
        cores = watcher_cores(root)
    say("alert watcher over 1,000 runs, cores", cores, "<= 0.05", cores <= 0.05,
        f"{N_RUNS} finished runs, a look every 2 s, CPU time over {MEASURED_S:.0f} s of looks after the first")
