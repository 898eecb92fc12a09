"""A runs root of 1,000 runs: what one overview refresh costs in file system calls and wall time (what NFS would see).

On a shared file system every call that names a path or opens a file may be a round trip to the server, so the
count of calls per refresh, not the local wall time, is what decides whether the monitor keeps up there.
The calls are counted by strace on a child process that marks, with a stat of a path that does not exist, where
the warm refreshes begin and end; without strace the counts are n/a and only the wall times are measured.
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.lab import overview_refresh
from bench.page_cost import write_run
from nnobs.protocol.rundir import RunDir

N_RUNS = 1000
RECORDS = 2000  # each run's file: a short finished run's worth of reports and states
REFRESHES = 10
NFS_ROUND_TRIP_MS = 0.5  # a GETATTR or OPEN on a LAN NFS server under light load; 1-5 ms on a busy one
MARK = "/nnobs-bench-mark"  # a stat of this missing path separates the phases in strace's log

# Syscalls by what they ask of the file system; fstat and reads of an open file need no lookup by name.
KINDS = {
    "stat by path": {"stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2", "readlink"},
    "open": {"open", "openat", "openat2"},
    "read": {"read", "pread64", "readv"},
    "directory listing": {"getdents", "getdents64"},
    "lock": {"flock", "fcntl"},  # fcntl only as F_SETLK/F_SETLKW/F_OFD_SETLK
}

CHILD = """
import os, sys
from bench.lab import overview_refresh
root, refreshes, mark = sys.argv[1], int(sys.argv[2]), sys.argv[3]
overview_refresh(root)  # the first look: every run's head, tail and sparkline read once
for _ in range(refreshes):
    try:
        os.stat(mark)
    except FileNotFoundError:
        pass
    overview_refresh(root)
try:
    os.stat(mark)
except FileNotFoundError:
    pass
"""


def make_root(root: str) -> None:
    """N_RUNS finished runs (no worker alive): one written by the worker's encoder, the others copies of it."""
    first = RunDir.named("run-0000", root)
    write_run(first, RECORDS)
    for i in range(1, N_RUNS):
        run = RunDir.named(f"run-{i:04d}", root)
        run.path.mkdir()
        for name in ("config.json", "run.jsonl"):
            shutil.copyfile(first.path / name, run.path / name)


def refresh_ms(root: str) -> tuple[float, float]:
    """Wall time of the first overview refresh and the median of the next REFRESHES, in milliseconds."""
    start = time.perf_counter()
    overview_refresh(root)
    first = time.perf_counter() - start
    costs = []
    for _ in range(REFRESHES):
        start = time.perf_counter()
        overview_refresh(root)
        costs.append(time.perf_counter() - start)
    return 1000 * first, 1000 * statistics.median(costs)


def calls_per_refresh(root: str) -> Counter[str] | None:
    """Syscalls of one warm refresh by kind (KINDS), from strace on a child; None without strace."""
    if shutil.which("strace") is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch, "strace.log")
        subprocess.run(["strace", "-f", "-qq", "-o", str(log), sys.executable, "-c", CHILD, root, str(REFRESHES), MARK],
                       check=True, cwd=Path(__file__).parent.parent, capture_output=True)
        lines = log.read_text(errors="replace").splitlines()
    marks = [i for i, line in enumerate(lines) if MARK in line and "exec" not in line]  # not the command line
    counts: Counter[str] = Counter()
    for line in lines[marks[0] + 1 : marks[-1]]:
        if MARK in line or not (found := re.match(r"(?:\d+\s+)?(\w+)\(", line)):
            continue
        name = found.group(1)
        if name == "fcntl" and "SETLK" not in line:
            continue  # Python's own F_GETFD and F_SETFD on every open: no lock, nothing asked of the server
        for kind, names in KINDS.items():
            if name in names:
                counts[kind] += 1
    return Counter({kind: n / REFRESHES for kind, n in counts.items()})


def figures(say) -> None:
    with tempfile.TemporaryDirectory() as root:
        make_root(root)
        first, warm = refresh_ms(root)
        calls = calls_per_refresh(root)
    say("overview of 1,000 runs: first refresh", first, "", None, f"ms; {N_RUNS} finished runs of {RECORDS:,} records")
    say("overview of 1,000 runs: each next refresh", warm, "", None, f"ms, median of {REFRESHES}; local disk")
    if calls is None:
        say("overview of 1,000 runs: file system calls a refresh", None, "", None, "strace is not installed")
        return
    by_name = calls["stat by path"] + calls["open"] + calls["lock"]
    for kind in KINDS:
        say(f"overview of 1,000 runs: {kind} calls a refresh", calls[kind], "", None, f"{calls[kind] / N_RUNS:.2f} a run")
    worst = by_name * NFS_ROUND_TRIP_MS
    say("overview of 1,000 runs: NFS round trips a refresh, at most", by_name, "", None,
        f"stats, opens and locks: {worst / 1000:.1f} s at {NFS_ROUND_TRIP_MS} ms each when none is cached")


if __name__ == "__main__":
    figures(lambda *row: print(row))
