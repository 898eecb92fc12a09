"""Opening a long run cold: a day of the default run's records with and without its fold cache, beside 10^6 records."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.page_cost import write_run
from nnobs.reading import foldcache
from nnobs.reading.watcher import RunWatcher
from nnobs.training.fold_keeper import KEEP_EVERY_BYTES
from nnobs.protocol.records import encode_record
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.schema import loss_report, state_report

# The default XOR run once its target is raised: about 50 state reports a second (one every 2,000 of
# its ~100,000 batches a second) and a loss report about every 0.05 s of the clock: in a day,
DAY_STATE_REPORTS = 4_300_000
DAY_LOSS_REPORTS = 1_700_000
REPORT_EVERY = 2000
TARGET = 10**12
OPENS = 3  # opens of a run with its cache behind, each in a fresh process: the median (one alone strays here)
T0 = 1.8e9  # wall time of the first record

OPEN_PROBE = """
import sys, time
import pandas  # the monitor has it loaded already (Streamlit, the charts): the bulk parser's number reader
from nnobs.reading.watcher import RunWatcher

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

start = time.perf_counter()
watcher = RunWatcher(sys.argv[1])
history = watcher.refresh()
took = time.perf_counter() - start
print(took, rss_mb(), watcher.resumed_at, history.n_records)
"""


def _templates() -> tuple[bytes, bytes]:
    """A state report's and a loss report's line as the worker's builders and encoder write them, with the
    numbers left as %-fields: each checked against the builders' own text on sample values."""
    state = b'{"eta":[%d,0.1],"sv":[%d,[%s]],"target":[%d,%d],"report_every":[%d,%d],"pace":[%d,0.0],"t":%s,"gen":1}\n'
    loss = b'{"loss":[%d,%s],"window":[%d,[%d,%s,%d,%s,%d,%s]],"t":%s,"gen":1}\n'
    sv, t = np.array([0.25, -1.5e-05, 3.0]), 1_800_000_123.456
    sv_text = ",".join(map(repr, sv.tolist())).encode()
    built = encode_record({**state_report(4000, 0.1, sv, TARGET, REPORT_EVERY, 0.0), "t": t, "gen": 1})
    assert built == state % (4000, 4000, sv_text, 4000, TARGET, 4000, REPORT_EVERY, 4000, repr(t).encode()), built
    window = (5000, 0.00123456789, 3990, 0.0025, 1500, 0.0017)
    built = encode_record({**loss_report(4000, 0.001234, window), "t": t, "gen": 1})
    short = [repr(float(f"{v:.7g}")).encode() for v in (window[1], window[3], window[5])]
    assert built == loss % (4000, b"0.001234", 4000, 5000, short[0], 3990, short[1], 1500, short[2], repr(t).encode()), built
    return state, loss


def write_day(path: Path, state_reports: int = DAY_STATE_REPORTS, loss_reports: int = DAY_LOSS_REPORTS) -> None:
    """A day of the default run's records: a state report every REPORT_EVERY batches and the loss reports between.

    The state vectors walk from a seed and the losses fall: a pool of each is drawn once and its texts
    reused line after line, so that a gigabyte is written in seconds, not the minutes of one json.dumps a line.
    """
    state, loss = _templates()
    rng = np.random.default_rng(0)
    sv_texts = [",".join(map(repr, row.tolist())).encode() for row in np.cumsum(rng.normal(scale=1e-3, size=(4096, 9)), 0)]
    loss_values = 0.5 * np.exp(-np.linspace(0, 12, 4096)) * (1 + 0.1 * rng.random(4096))
    loss_texts = [(repr(float(v)).encode(), repr(float(f"{v:.7g}")).encode(), repr(float(f"{2 * v:.7g}")).encode(),
                   repr(float(f"{1.5 * v:.7g}")).encode()) for v in loss_values]
    per_loss = state_reports / loss_reports
    seconds_per_state = 86_400 / state_reports
    with open(path, "wb") as out:
        lines, owed, states = [], 0.0, 0
        for i in range(loss_reports):
            owed += per_loss
            while owed >= 1 and states < state_reports:
                owed -= 1
                states += 1
                b = states * REPORT_EVERY
                t = repr(round(T0 + states * seconds_per_state, 3)).encode()
                lines.append(state % (b, b, sv_texts[states % 4096], b, TARGET, b, REPORT_EVERY, b, t))
            b = states * REPORT_EVERY + 1
            t = repr(round(T0 + states * seconds_per_state + 0.01, 3)).encode()
            value, low, high, mean = loss_texts[(i * 4096) // loss_reports]
            lines.append(loss % (b, value, b, 5000, low, b - 700, high, b - 4000, mean, t))
            if len(lines) >= 200_000:
                out.write(b"".join(lines))
                lines = []
        out.write(b"".join(lines))


def open_cold(run_file: Path) -> tuple[float, float, int, int]:
    """A fresh process opens the run as the page does: seconds, its RSS in MB, the cached offset, records."""
    out = subprocess.run([sys.executable, "-c", OPEN_PROBE, str(run_file)], capture_output=True, text=True, check=True)
    took, rss, resumed, records = out.stdout.split()
    return float(took), float(rss), int(resumed), int(records)


def open_behind(run_file: Path) -> tuple[float, float, float, int]:
    """Open run_file with no fold cache (seconds, RSS in MB), then with the cache as its worker keeps it at its
    oldest: KEEP_EVERY_BYTES behind the file's end, the most the keeping rule leaves (the worker folds each time the
    file grew by that much; its few seconds between looks add the records of those seconds, a few KB). Seconds of
    that open (the median of OPENS), and how far behind the cache was."""
    size = run_file.stat().st_size
    behind = min(KEEP_EVERY_BYTES, size // 2)
    with open(run_file, "r+b") as f:
        f.seek(size - behind - 2**16)
        before = f.read(2**16)
        tail_at = size - behind - 2**16 + before.rfind(b"\n") + 1  # a line start, at least behind from the end
        f.seek(tail_at)
        tail = f.read()
        f.truncate(tail_at)
    first, first_rss, _, _ = open_cold(run_file)  # the file as the worker last folded it: the cache saved at its end
    with open(run_file, "ab") as f:
        f.write(tail)
    if not foldcache.cache_path(run_file).exists():  # too short for a cache (a scaled-down check): no figure
        return first, first_rss, first, size
    opens = []
    for _ in range(OPENS):
        took, _, resumed, _ = open_cold(run_file)  # the cache KEEP_EVERY_BYTES behind
        assert resumed == tail_at, (resumed, tail_at)
        opens.append(took)
    return first, first_rss, statistics.median(opens), size - tail_at


def figures(say, scale: float = 1.0) -> None:
    """scale < 1 writes that share of a day (a quick check that the section works, not its figures)."""
    with tempfile.TemporaryDirectory() as root:
        day = Path(root) / "day" / "run.jsonl"
        day.parent.mkdir()
        write_day(day, int(DAY_STATE_REPORTS * scale), int(DAY_LOSS_REPORTS * scale))
        size = day.stat().st_size
        first, first_rss, oldest, behind = open_behind(day)
        caught_up = RunWatcher(day)  # as the worker's next fold leaves it: the cache covering every record
        caught_up.refresh()
        caught_up.save()
        del caught_up
        cached, cached_rss, resumed, records = open_cold(day)
        assert resumed == size, (resumed, size)
        cache_mb = foldcache.cache_path(day).stat().st_size / 1e6

        million = RunDir.named("million", root)
        write_run(million, int(10**6 * scale))
        million_first, million_rss, million_oldest, million_behind = open_behind(million.run_file)
        million_mb = million.run_file.stat().st_size / 1e6

    context = f"{size / 1e9:.2f} GB, {records:,} records, {cache_mb:.0f} MB cache"
    say("day-long run file: first open, its worker keeping the fold cache, s", oldest, "< 2 s", oldest < 2.0,
        f"median of {OPENS}, the cache {behind / 1e6:.0f} MB behind, the most the worker leaves; {cached:.2f} s "
        f"with it covering all; {context}")
    say("day-long run file: first open without any cache, s", first, "(context)", None,
        f"the whole file parsed and its fold cache saved; {first_rss:.0f} MB RSS after, {cached_rss:.0f} MB with the cache")
    say("10^6 records: first open, its worker keeping the fold cache, s", million_oldest, "< 0.5 s",
        million_oldest < 0.5, f"median of {OPENS}, {million_mb:.0f} MB file, the cache {million_behind / 1e6:.0f} MB "
        f"behind; {million_first:.2f} s without any cache ({million_rss:.0f} MB RSS)")
