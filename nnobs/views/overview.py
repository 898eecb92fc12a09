"""One row per run for the overview and `nnobs list`: read from a run file's head, tail and a few samples, never whole."""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnobs.launching.lifecycle import run_status
from nnobs.protocol.checkpoint import load_checkpoint_meta
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import Signature, file_signature, open_file
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int
from nnobs.protocol.rundir import RunDir, list_runs, runs_root, script_description
from nnobs.protocol.schema import TEST_LOSS
from nnobs.protocol.states import State
from nnobs.reading.history import RunHistory
from nnobs.reading.origin import created_at, fork_origin
from nnobs.training.builtin.netspec import format_net
from nnobs.training.builtin.tasks import load_config

HEAD_BYTES = 16 << 10  # the first generation's start: its settings, what the net is
TAIL_BYTES = 64 << 10  # the newest records: a second or more of the fastest run's reports
SPARK_POINTS = 40  # sampled chunks across the file, a loss point from each
SPARK_CHUNK = 4 << 10
# Rows of runs something serves are read anew each time, as it can die without a word: a worker's, and a follower's.
ALIVE_LABELS = (*(state for state in State if state.alive), State.FOLLOWING)
SPARK_EVERY_S = 5.0  # a live run's sparkline is sampled anew at most this often: 40 reads of 4 KB each
LOSS_LINE = b'{"loss":['
CATCH_UP_BYTES = 1 << 20  # appended since the last look: beyond this, the middle is skipped
TEST_SCAN_BYTES = 1 << 20  # how far back the last test loss is looked for: hours of an idle run's heartbeats
TEST_LINE_MOST_BYTES = 64 << 10  # a loss report with its metrics
NO_TEST_SET = ("xor", "imported", "followed")  # tasks that report no test loss
RATE_SAMPLES = 64
RATE_LINES = 2000  # the tail's lines looked at for its rate, newest first
RATE_WINDOW_S = 10.0


@dataclass
class RunRow:
    """What the overview shows of one run."""

    name: str
    label: str  # the state badge: RunStatus.label
    task: str  # the built-in task, "script" for a script's run, "imported" for a run file read from elsewhere
    net: str  # the net spec, or the script's command line
    batch: int
    loss: float | None  # RunStatus.loss: the mean of the newest batches, not one minibatch's
    test_loss: float | None  # the newest test loss, made at test_batch: maybe long before the run's batch
    rate: float | None  # batches a second over the tail's records
    heartbeat_age_s: float | None
    created: float  # unix time: the order runs were made in
    sparkline: list[tuple[int, float]] = field(default_factory=list)  # (batch, loss), oldest first
    forked_from: str | None = None
    error: str = ""
    best_loss: float | None = None  # RunStatus.best_loss: the lowest the mean has been
    test_batch: int | None = None  # the batch test_loss was made at
    eta: float | None = None  # the base learning rate
    lr: float | None = None  # the learning rate in use, where a schedule scales eta
    gpu_mem_mb: float | None = None  # GPU memory its worker uses, summed over its GPUs, at the newest sample

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Feed:
    """What the overview keeps of one run between refreshes: a small history, fed from where it last read."""

    history: RunHistory  # outline only: bounded however long the run
    inode: int
    offset: int  # bytes of the run file folded, or skipped over, so far
    stamp: tuple[int, int]  # the run file's size and mtime when last read
    what: tuple[str, str, float, str | None]  # task, net, created, forked from: read once
    beats: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=RATE_SAMPLES))  # (last_t, batch)
    rate: float | None = None
    test_loss: tuple[int, float] | None = (
        None  # (batch, value): the newest test loss before the tail, when the tail has none
    )
    spark: list[tuple[int, float]] = field(default_factory=list)
    spark_t: float = 0.0
    row: RunRow | None = None


_feeds: dict[str, _Feed] = {}
_feeds_lock = threading.Lock()


def run_rows(root: str | os.PathLike | None = None, now: float | None = None) -> list[RunRow]:
    """A row for every run in the runs root, in the order they were made; unchanged runs are not read again."""
    now = time.time() if now is None else now
    runs = [RunDir.named(name, root) for name in list_runs(root)]
    rows = [_row_of(run, now) for run in runs]
    with _feeds_lock:  # forget runs that are gone from this root
        wanted = {str(run.path) for run in runs}
        prefix = str(runs_root(root)) + os.sep
        for key in [k for k in _feeds if k.startswith(prefix) and k not in wanted]:
            del _feeds[key]
    return sorted(rows, key=lambda r: (r.created, r.name))


def history_of(run: RunDir) -> RunHistory | None:
    """The small history run_rows keeps of a run (its latest metrics, generation, target and events), once read."""
    with _feeds_lock:
        feed = _feeds.get(str(run.path))
    return None if feed is None else feed.history


def read_row(run: RunDir, now: float | None = None) -> RunRow:
    """The row of one run, read afresh: its run file's head and tail, its checkpoint's settings, its description."""
    feed = _new_feed(run)
    return _row(run, feed, time.time() if now is None else now)


def _row_of(run: RunDir, now: float) -> RunRow:
    key = str(run.path)
    with _feeds_lock:
        feed = _feeds.get(key)
    inode, mtime, size = _stat(run.run_file)
    # A run that stopped writing is read once; a live one is asked anew each time: it can die without a word.
    if feed is not None and feed.row is not None and feed.stamp == (size, mtime) and feed.row.label not in ALIVE_LABELS:
        return feed.row
    if feed is None or feed.inode != inode or size < feed.offset:
        feed = _new_feed(run)  # new, replaced or cut short: read its head and tail again
    elif size > feed.offset:
        _feed_on(run, feed, size)
    row = _row(run, feed, now)
    with _feeds_lock:
        _feeds[key] = feed
    return row


def _row(run: RunDir, feed: _Feed, now: float) -> RunRow:
    history = feed.history
    status = run_status(run, history, now)
    if history.last_t is not None and (not feed.beats or feed.beats[-1][0] < history.last_t):
        feed.beats.append((history.last_t, history.batch))
    rate = _rate_of(feed.beats) or feed.rate
    _, mtime, size = _stat(run.run_file)
    if feed.stamp[0] != size and now - feed.spark_t >= SPARK_EVERY_S:  # a growing run's, at most every few seconds
        feed.spark, feed.spark_t = sparkline(run.run_file), now
    feed.stamp = (size, mtime)
    task, net, created, forked_from = feed.what
    test = history.metrics.get(TEST_LOSS)
    test_batch, test_loss = test.latest if test is not None and test.latest else feed.test_loss or (None, None)
    feed.row = RunRow(
        name=run.name,
        label=status.label,
        task=task,
        net=net,
        batch=status.batch,
        loss=status.loss,
        test_loss=test_loss,
        test_batch=test_batch,
        best_loss=status.best_loss,
        rate=rate if status.state == "training" else None,
        heartbeat_age_s=status.heartbeat_age_s,
        created=created,
        sparkline=feed.spark,
        forked_from=forked_from,
        error=status.error,
        eta=status.eta,
        lr=status.lr,
        gpu_mem_mb=gpu_memory_mb(status.system),
    )
    return feed.row


def gpu_memory_mb(system: dict[str, float]) -> float | None:
    """The GPU memory a worker uses over all its GPUs (every rank's, under DDP), from its newest sample; None where it
    uses none."""
    used = [value for name, value in system.items() if ".gpu" in f".{name}" and name.endswith(".mem_mb")]
    return sum(used) if used else None


def _stat(path: Path) -> Signature:
    """The file's (inode, mtime, size); zeros when it is not there."""
    return file_signature(path) or (0, 0, 0)


def _new_feed(run: RunDir) -> _Feed:
    """A feed of the run's first records, then its checkpoint's settings, then its newest records."""
    history = RunHistory(max_points=64, outline_only=True)
    inode, mtime, size = _stat(run.run_file)
    origin = fork_origin(run)
    feed = _Feed(
        history, inode, 0, (-1, -1), (*_what_it_trains(run), created_at(run), origin.get("run") if origin else None)
    )
    try:
        with open_file(run.run_file) as f:
            size = os.fstat(f.fileno()).st_size
            head = _whole_lines(f.read(min(size, HEAD_BYTES)), at_start=True)
            tail_from = max(len(head), size - TAIL_BYTES)
            f.seek(tail_from)
            tail = _whole_lines(f.read(size - tail_from), at_start=tail_from == len(head))
    except OSError:
        return feed
    history.add_lines(head)
    history.metrics = {}  # the first metrics are no one's latest: the tail's, or the newest found, are
    meta = load_checkpoint_meta(run.checkpoint)
    if meta is not None and meta.get("batch", 0) >= history.batch:
        for name in ("eta", "target", "report_every", "pace"):
            if name in meta:
                setattr(history, name, meta[name])
    if tail_from > len(head):
        history.loss_track.recent.skip()
    history.add_lines(tail)
    feed.offset = tail_from + len(tail) if tail else len(head)
    feed.rate = tail_rate(tail)
    if TEST_LOSS not in history.metrics and feed.what[0] not in NO_TEST_SET:
        # An idle run's tail is heartbeats: its last test loss lies further back.
        feed.test_loss = _last_test_loss(run.run_file, tail_from)
    return feed


def _feed_on(run: RunDir, feed: _Feed, size: int) -> None:
    """Fold in what was appended since the feed last read; past CATCH_UP_BYTES of it, only its newest records."""
    try:
        with open_file(run.run_file) as f:
            start = max(feed.offset, size - CATCH_UP_BYTES)
            f.seek(start)
            chunk = f.read(size - start)
    except OSError:
        return
    lines = _whole_lines(chunk, at_start=start == feed.offset)
    if start > feed.offset:
        feed.history.loss_track.recent.skip()
    feed.history.add_lines(lines)
    feed.offset = start + chunk.rfind(b"\n") + 1  # a torn last line is read again next time, whole


def _last_test_loss(path: Path, before: int) -> tuple[int, float] | None:
    """The newest test loss reported before offset `before`, with the batch of the report it came in (batch, value),
    looked for backwards over at most TEST_SCAN_BYTES."""
    needle = f'"{TEST_LOSS}":['.encode()
    try:
        with open_file(path) as f:
            end = before
            while end > 0 and before - end < TEST_SCAN_BYTES:
                start = max(0, end - TAIL_BYTES)
                f.seek(start)
                block = f.read(end - start + len(needle))  # a needle across the boundary is found once
                at = block.rfind(needle)
                if at >= 0:
                    line_start = block.rfind(b"\n", 0, at) + 1  # a line longer than a block: found from its end
                    f.seek(start + line_start)
                    return _test_loss_of(f.readline(TEST_LINE_MOST_BYTES))
                end = start
    except (OSError, ValueError):
        return None
    return None


def _test_loss_of(line: bytes) -> tuple[int, float] | None:
    """(batch, test loss) of a report's line carrying one, else None."""
    try:
        record = parse_json(line)
        batch, entry = record["metrics"][0], record["metrics"][1][TEST_LOSS]  # "metrics": [batch, {name: entry}]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    value = entry[0] if isinstance(entry, list) and entry else None
    if not is_int(batch) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return batch, float(value)


def _rate_of(beats: deque[tuple[float, int]]) -> float | None:
    """Batches a second over the newest RATE_WINDOW_S of the beats the feed saw, once they span a second."""
    if len(beats) < 2:
        return None
    t1, b1 = beats[-1]
    t0, b0 = next(((t, b) for t, b in beats if t >= t1 - RATE_WINDOW_S), beats[-2])
    if t1 - t0 < 1.0 or b1 < b0:
        return None
    return (b1 - b0) / (t1 - t0)


def _whole_lines(chunk: bytes, at_start: bool) -> bytes:
    """The complete lines of a chunk read from the middle of a file: a first partial line and a torn tail dropped."""
    if not at_start:
        chunk = chunk[chunk.find(b"\n") + 1 :] if b"\n" in chunk else b""
    return chunk[: chunk.rfind(b"\n") + 1]


def tail_rate(tail: bytes) -> float | None:
    """Batches a second over the tail's newest RATE_WINDOW_S of records of one line of training, spanning 1 s or more."""
    newest = earliest = None
    for line in reversed(tail.splitlines()[-RATE_LINES:]):
        found = _time_and_batch(line)
        if found is None:
            continue
        if newest is None:
            newest = found
        elif found[1] > newest[1] or newest[0] - found[0] > RATE_WINDOW_S:
            break  # a start went back in batches here, or the window is full
        earliest = found
    if newest is None or earliest is None or newest[0] - earliest[0] < 1.0:
        return None
    return (newest[1] - earliest[1]) / (newest[0] - earliest[0])


def _time_and_batch(line: bytes) -> tuple[float, int] | None:
    try:
        record = parse_json(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("t"), (int, float)):
        return None
    for value in record.values():
        if isinstance(value, list) and len(value) == 2 and is_int(value[0]):
            return float(record["t"]), value[0]
    return None


def sparkline(path: Path, points: int = SPARK_POINTS) -> list[tuple[int, float]]:
    """(batch, loss) from chunks sampled evenly across the run file: the whole run's shape for a bounded read."""
    out: dict[int, float] = {}
    try:
        with open_file(path) as f:
            size = os.fstat(f.fileno()).st_size
            starts = sorted({int(s) for s in np.linspace(0, max(0, size - SPARK_CHUNK), points)}) if size else []
            for start in starts:
                f.seek(start)
                if found := _last_loss(_whole_lines(f.read(SPARK_CHUNK), at_start=start == 0)):
                    out[found[0]] = found[1]
    except OSError:
        return []
    return sorted(out.items())


def _last_loss(lines: bytes) -> tuple[int, float] | None:
    """The last loss report's batch and its window's mean (what a smoothed curve shows there), else its loss.

    A report without a window that repeats the batch of the one before (a shutdown's, with its last loss) gives
    way to that one's mean: a single minibatch's loss would bend the line's end.
    """
    repeat: tuple[int, float] | None = None  # a report without a window, standing in unless one at its batch has one
    at = lines.rfind(LOSS_LINE)  # schema.loss_report's lines begin so; the notebook's have a space after the colon
    if at < 0:
        at = lines.rfind(b'{"loss": [')
    while at >= 0:
        begin = lines.rfind(b"\n", 0, at) + 1
        if begin == at:  # at a line's start, not inside a string of some other record
            try:
                record = parse_json(lines[begin : lines.index(b"\n", at)])
                batch, loss = record["loss"]
                window = record.get("window")
                windowed = isinstance(window, list) and len(window) == 2
                value = window[1][5] if windowed else loss
                if isinstance(batch, int) and isinstance(value, (int, float)) and math.isfinite(value):
                    if repeat is not None and batch != repeat[0]:
                        return repeat
                    if windowed or repeat is not None:
                        return batch, float(value)
                    repeat = batch, float(value)
            except (ValueError, KeyError, TypeError, IndexError):
                pass
        at = max(lines.rfind(LOSS_LINE, 0, at), lines.rfind(b'{"loss": [', 0, at))
    return repeat


def _what_it_trains(run: RunDir) -> tuple[str, str]:
    """(task, net) for a built-in run; ("script", its command line) or ("imported", where from) otherwise."""
    if run.config.exists():
        try:
            config = load_config(run.config)
        except (NnobsError, OSError) as err:
            return "?", f"config.json unreadable: {err}"
        return config.task, _net_of(config)
    description = script_description(run) or {}
    if description.get("kind") in ("imported", "followed"):
        return str(description["kind"]), str(description.get("from", ""))
    argv = description.get("argv")
    if isinstance(argv, list) and argv:  # the program by its name: a venv's long path would fill the column
        return "script", " ".join([Path(str(argv[0])).name, *map(str, argv[1:])])
    return "script", ""


def _net_of(config) -> str:
    return format_net(config.sizes, config.activations)
