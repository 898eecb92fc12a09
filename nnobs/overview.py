"""One row per run for the overview and `nnobs list`: read from a run file's head, tail and a few samples, never whole."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnobs.bulk import parse_lines
from nnobs.checkpoint import load_checkpoint_meta
from nnobs.errors import NnobsError
from nnobs.history import RunHistory
from nnobs.lab import created_at, fork_origin
from nnobs.runs import RunDir, list_runs, run_status, script_description
from nnobs.netspec import format_net
from nnobs.tasks import load_config

HEAD_BYTES = 16 << 10  # the first generation's start: its settings, what the net is
TAIL_BYTES = 64 << 10  # the newest records: a second or more of the fastest run's reports
SPARK_POINTS = 40  # sampled chunks across the file, a loss point from each
SPARK_CHUNK = 4 << 10
ALIVE_LABELS = ("training", "idle", "stalled", "diverged", "not learning", "cannot write", "low disk")
SPARK_EVERY_S = 5.0  # a live run's sparkline is sampled anew at most this often: 40 reads of 4 KB each


@dataclass
class RunRow:
    """What the overview shows of one run."""

    name: str
    label: str  # the state badge: RunStatus.label
    task: str  # the built-in task, "script" for a script's run, "imported" for a run file read from elsewhere
    net: str  # the net spec, or the script's command line
    batch: int
    loss: float | None
    test_loss: float | None
    rate: float | None  # batches a second over the tail's records
    heartbeat_age_s: float | None
    created: float  # unix time: the order runs were made in
    sparkline: list[tuple[int, float]] = field(default_factory=list)  # (batch, loss), oldest first
    forked_from: str | None = None
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Cached:
    """A row and the run file's size and mtime it was read at."""

    stamp: tuple[int, int]
    row: RunRow
    spark_t: float


_cache: dict[str, _Cached] = {}
_cache_lock = threading.Lock()


def run_rows(root: str | os.PathLike | None = None, now: float | None = None) -> list[RunRow]:
    """A row for every run in the runs root, in the order they were created; rows of unchanged runs are reused."""
    now = time.time() if now is None else now
    rows = []
    names = list_runs(root)
    for name in names:
        run = RunDir.named(name, root)
        rows.append(_row_of(run, now))
    with _cache_lock:  # forget runs that are gone
        wanted = {str(RunDir.named(name, root).path) for name in names}
        for key in [k for k in _cache if k.startswith(str(Path(root or "runs"))) and k not in wanted]:
            del _cache[key]
    return sorted(rows, key=lambda r: (r.created, r.name))


def _row_of(run: RunDir, now: float) -> RunRow:
    try:
        st = os.stat(run.run_file)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (0, 0)
    key = str(run.path)
    with _cache_lock:
        cached = _cache.get(key)
    # A run that stopped writing is read once; a live one is asked anew each time: it can die without a word.
    if cached is not None and cached.stamp == stamp and cached.row.label not in ALIVE_LABELS:
        return cached.row
    row = read_row(run, now)
    spark_t = now
    if cached is not None and stamp[0] >= cached.stamp[0] and now - cached.spark_t < SPARK_EVERY_S:
        row.sparkline, spark_t = cached.row.sparkline, cached.spark_t
    elif row.sparkline == []:
        row.sparkline = sparkline(run.run_file)
    with _cache_lock:
        _cache[key] = _Cached(stamp, row, spark_t)
    return row


def read_row(run: RunDir, now: float | None = None) -> RunRow:
    """The row of one run, from the head and tail of its run file, its checkpoint's settings and its description."""
    history, rate = _head_and_tail(run)
    status = run_status(run, history, now)
    task, net = _what_it_trains(run)
    test = history.metrics.get("test_loss")
    origin = fork_origin(run)
    return RunRow(
        name=run.name,
        label=status.label,
        task=task,
        net=net,
        batch=status.batch,
        loss=status.loss,
        test_loss=test.latest[1] if test is not None and test.latest else None,
        rate=rate if status.state == "training" else None,
        heartbeat_age_s=status.heartbeat_age_s,
        created=created_at(run),
        sparkline=[],
        forked_from=origin.get("run") if origin else None,
        error=status.error,
    )


def _head_and_tail(run: RunDir) -> tuple[RunHistory, float | None]:
    """The run's first records, then the checkpoint's settings, then its newest records, folded; and the tail's rate."""
    history = RunHistory(max_points=64)
    try:
        with open(run.run_file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = _whole_lines(f.read(min(size, HEAD_BYTES)), at_start=True)
            tail_from = max(len(head), size - TAIL_BYTES)
            f.seek(tail_from)
            tail = _whole_lines(f.read(size - tail_from), at_start=tail_from == len(head))
    except OSError:
        return history, None
    history.add_lines(head)
    meta = load_checkpoint_meta(run.checkpoint)
    if meta is not None and meta.get("batch", 0) >= history.batch:
        for name in ("eta", "target", "report_every", "pace"):
            if name in meta:
                setattr(history, name, meta[name])
    history.add_lines(tail)
    return history, _rate(tail)


def _whole_lines(chunk: bytes, at_start: bool) -> bytes:
    """The complete lines of a chunk read from the middle of a file: a first partial line and a torn tail dropped."""
    if not at_start:
        chunk = chunk[chunk.find(b"\n") + 1 :] if b"\n" in chunk else b""
    return chunk[: chunk.rfind(b"\n") + 1]


def _rate(tail: bytes) -> float | None:
    """Batches a second between the tail's first and last timed records, when they are a second or more apart."""
    lines = tail.splitlines()
    first = next((_time_and_batch(line) for line in lines[:8] if _time_and_batch(line)), None)
    last = next((_time_and_batch(line) for line in reversed(lines[-8:]) if _time_and_batch(line)), None)
    if not first or not last or last[0] - first[0] < 1.0:
        return None
    return max(0.0, (last[1] - first[1]) / (last[0] - first[0]))


def _time_and_batch(line: bytes) -> tuple[float, int] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("t"), (int, float)):
        return None
    for value in record.values():
        if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool):
            return float(record["t"]), value[0]
    return None


def sparkline(path: Path, points: int = SPARK_POINTS) -> list[tuple[int, float]]:
    """(batch, loss) from chunks sampled evenly across the run file: the whole run's shape for a bounded read."""
    out: dict[int, float] = {}
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            starts = sorted({int(s) for s in np.linspace(0, max(0, size - SPARK_CHUNK), points)}) if size else []
            for start in starts:
                f.seek(start)
                chunk = _whole_lines(f.read(SPARK_CHUNK), at_start=start == 0)
                try:
                    parsed = parse_lines(chunk)
                except (ValueError, TypeError, OverflowError):
                    continue
                windows = parsed.loss_window
                if len(windows):  # the mean of the chunk's last window: what a smoothed curve would show there
                    mean = windows[-1, 5]
                    value = mean if np.isfinite(mean) else parsed.loss_value[-1]
                    if np.isfinite(value):
                        out[int(parsed.loss_batch[-1])] = float(value)
    except OSError:
        return []
    return sorted(out.items())


def _what_it_trains(run: RunDir) -> tuple[str, str]:
    """(task, net) for a built-in run; ("script", its command line) or ("imported", where from) otherwise."""
    if run.config.exists():
        try:
            config = load_config(run.config)
        except (NnobsError, OSError) as err:
            return "?", f"config.json unreadable: {err}"
        return config.task, _net_of(config)
    description = script_description(run) or {}
    if description.get("kind") == "imported":
        return "imported", str(description.get("from", ""))
    argv = description.get("argv")
    if isinstance(argv, list):
        return "script", " ".join(map(str, argv))
    return "script", ""


def _net_of(config) -> str:
    return format_net(config.sizes, config.activations)
