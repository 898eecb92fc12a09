"""What a run's history has folded, saved beside its run file so that reopening it parses only what came since.

`run.fold` (a full history) and `run.curves` (an outline-only one) hold a JSON header and raw
arrays: the magic line, the header's length (8 bytes, little-endian), the header {"meta": ...,
"arrays": {name: [dtype, shape, offset]}}, then each array's bytes. Only int64 and float64 arrays
are read, straight into place (a numpy .npz of the same arrays took 0.5 to 2 s to open at 150 MB:
its zip reader checks a CRC and copies every byte); nothing in the file is ever unpickled or
executed, and every entry is checked before use, since anyone may have put a file there.

The meta says which bytes of the run file the history covers: their count (a line boundary), the
run file's inode, and SHA-256 of the first and the last PROBE_BYTES of them. A cache is used only
when the run file, as it is now, has that inode and those bytes where they were; missing, stale,
unreadable, of another format or malformed, it is ignored, and the run file, the source of truth,
is folded from the start. Writes replace the file whole, and a failed write is survived in silence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnobs.protocol.files import replace_atomically
from nnobs.protocol.numbers import is_int, is_number
from nnobs.protocol.records import HEAD_BYTES
from nnobs.reading.history import MAX_MARKERS, NOT_LEARNING_REPORTS, Answer, Event, Marker, RunHistory, WindowedSeries
from nnobs.reading.series import Column, MinMaxBuckets, StateArchive

MAGIC = b"nnobs fold cache\n"
FORMAT = 2  # raise it whenever what a history holds, or how it folds, changes: older caches are then rebuilt
PROBE_BYTES = 16384  # hashed at each end of the covered bytes
ALIGN = 64  # each array's bytes start at a multiple of this
MAX_HEADER_BYTES = 64 << 20  # a longer header is not one this module wrote
DTYPES = {"<i8": np.int64, "<f8": np.float64}  # the only arrays a cache holds
_BUCKET_ARRAYS = ("first_batch", "min_value", "min_batch", "max_value", "max_batch", "sum", "count", "weight")


@dataclass
class Covered:
    """The part of the run file a loaded cache stands for."""

    offset: int  # bytes from the start, ending at a line boundary
    inode: int
    head: bytes  # the file's first bytes, for the reader's check that it is still the same file


def cache_path(run_file: str | os.PathLike, outline_only: bool = False) -> Path:
    """run.fold (or run.curves for an outline-only history) beside run.jsonl."""
    run_file = Path(run_file)
    return run_file.with_name(f"{run_file.stem}.{'curves' if outline_only else 'fold'}")


def save(run_file: str | os.PathLike, history: RunHistory, offset: int, inode: int | None) -> bool:
    """Save what history folded of the run file's first offset bytes (the file read had this inode); whether it was."""
    if inode is None or offset <= 0:
        return False
    try:
        with open(run_file, "rb") as f:
            if os.fstat(f.fileno()).st_ino != inode:  # replaced since it was read: what was folded is not in it
                return False
            covers = _fingerprint(f.fileno(), offset)
        if covers is None:
            return False
        arrays, described = _arrays_of(history)
        meta = {"format": FORMAT, "outline_only": history.outline_only, "covers": {**covers, "inode": inode},
                "history": described}
        replace_atomically(cache_path(run_file, history.outline_only), lambda out: write_arrays(out, meta, arrays))
        return True
    except OSError:  # a read-only directory, a full disk: the run file is still there to fold
        return False


def load(run_file: str | os.PathLike, outline_only: bool = False) -> tuple[RunHistory, Covered] | None:
    """The cached history of the run file's longest covered prefix, or None when no cache fits the file as it is.

    An outline-only history can be taken from either cache, a full one only from run.fold.
    """
    found = None
    for path in [cache_path(run_file)] + ([cache_path(run_file, True)] if outline_only else []):
        try:
            with open(path, "rb") as f:
                archive = ArrayFile(f)
                meta = archive.meta
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    continue
                covered = _still_there(run_file, meta["covers"])
                if covered is None or (found is not None and covered.offset <= found[1].offset):
                    continue
                found = (_history_of(archive, meta["history"], outline_only), covered)
        except Exception:  # noqa: BLE001 - a file anyone may have written fails in ways past listing (cut short,
            continue  # a header that is not JSON, a wrong shape, a string for a number): each means "fold the run file"
    return found


def _fingerprint(fd: int, offset: int) -> dict[str, Any] | None:
    """The covered bytes' size and the hashes of their two ends; None when the file holds fewer, or not up to a line end."""
    probe = min(offset, PROBE_BYTES)
    head, tail = os.pread(fd, probe, 0), os.pread(fd, probe, offset - probe)
    if len(head) != probe or len(tail) != probe or not tail.endswith(b"\n"):
        return None
    return {"offset": offset, "head": hashlib.sha256(head).hexdigest(), "tail": hashlib.sha256(tail).hexdigest()}


def _still_there(run_file: str | os.PathLike, covers: dict) -> Covered | None:
    """What the cache covers, when the run file still holds exactly those bytes; else None."""
    offset, inode = covers["offset"], covers["inode"]
    if not (is_int(offset) and is_int(inode) and offset > 0):
        return None
    with open(run_file, "rb") as f:
        fd = f.fileno()
        if os.fstat(fd).st_ino != inode or _fingerprint(fd, offset) != {k: covers.get(k) for k in ("offset", "head", "tail")}:
            return None
        return Covered(offset, inode, os.pread(fd, min(offset, HEAD_BYTES), 0))


# -- the file: a JSON header, then raw arrays -------------------------------------------------------

def write_arrays(out, meta: Any, arrays: dict[str, np.ndarray]) -> None:
    """Write meta (JSON) and the int64 and float64 arrays to the binary file object out."""
    arrays = {name: np.ascontiguousarray(values) for name, values in arrays.items()}
    table, offset = {}, 0
    for name, values in arrays.items():
        assert values.dtype.str in DTYPES, f"{name}: a cache holds int64 and float64 arrays, not {values.dtype}"
        table[name] = [values.dtype.str, list(values.shape), offset]
        offset += -(-values.nbytes // ALIGN) * ALIGN
    header = json.dumps({"meta": meta, "arrays": table}).encode()
    start = len(MAGIC) + 8 + len(header)
    out.write(MAGIC + struct.pack("<Q", len(header)) + header + bytes(-start % ALIGN))
    for values in arrays.values():
        out.write(values.data)
        out.write(bytes(-values.nbytes % ALIGN))


class ArrayFile:
    """A cache file opened for reading: its meta, and its arrays read on demand, each checked against the file."""

    def __init__(self, f):
        self._f = f
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("not a fold cache")
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError("fold cache: header too long")
        header = json.loads(f.read(length))
        self.meta, self._table = header["meta"], header["arrays"]
        _check(isinstance(self._table, dict), "arrays")
        start = len(MAGIC) + 8 + length
        self._data_at = start + -start % ALIGN
        self._size = os.fstat(f.fileno()).st_size
        self.files = list(self._table)

    def __getitem__(self, name: str) -> np.ndarray:
        dtype, shape, offset = self._table[name]
        _check(dtype in DTYPES and isinstance(shape, list) and all(is_int(n) and n >= 0 for n in shape)
               and is_int(offset) and offset >= 0, name)
        _check(self._data_at + offset + 8 * math.prod(shape) <= self._size, name)  # before allocating what it says
        values = np.empty(shape, DTYPES[dtype])
        if values.nbytes:
            self._f.seek(self._data_at + offset)
            _check(self._f.readinto(memoryview(values).cast("B")) == values.nbytes, name)
        return values


# -- a history as arrays and JSON, and back ---------------------------------------------------------

def _arrays_of(history: RunHistory) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    buckets: dict[str, Any] = {}

    def put_buckets(key: str, series: MinMaxBuckets | None) -> None:
        if series is None:
            return
        buckets[key] = {"n_columns": series.n_columns, "max_buckets": series.max_buckets, "width": series.width,
                        "n": series.n, "first": series.first[0], "last": series.last[0]}
        for name in _BUCKET_ARRAYS:
            arrays[f"{key}.{name}"] = getattr(series, name)
        arrays[f"{key}.first_value"], arrays[f"{key}.last_value"] = series.first[1], series.last[1]

    def put_windowed(key: str, series: WindowedSeries) -> dict[str, Any]:
        put_buckets(f"{key}.outline", series.outline)
        put_buckets(f"{key}.means", series.means)
        return {"latest": list(series.latest) if series.latest is not None else None}

    recent = slice(-NOT_LEARNING_REPORTS, None)  # what an outline-only history keeps, for the verdict on learning
    for name in ("loss_batches", "loss_values", "loss_windows"):
        values = getattr(history, name).values()
        arrays[f"recent.{name}"] = values[recent]
        if not history.outline_only:
            arrays[name] = values
    loss = put_windowed("loss", history.loss_outline)
    metrics = [[name, put_windowed(f"metric{i}", series)] for i, (name, series) in enumerate(history.metrics.items())]
    put_buckets("loss_times", history.loss_times)
    if not history.outline_only:
        for key in ("sv_buckets", "step_buckets", "layers", "updates", "dead"):
            put_buckets(key, getattr(history, key))
        if history.archive is not None:
            archive = history.archive
            arrays["archive.batches"], arrays["archive.vectors"] = archive.batches[: archive.n], archive.vectors[: archive.n]
            if archive.newest is not None:
                arrays["archive.newest"] = archive.newest[1]
            buckets["archive"] = {"width": archive.width, "capacity": archive.capacity, "stride": archive.stride,
                                  "seen": archive.seen, "newest": None if archive.newest is None else archive.newest[0]}
        arrays["sv_batches"] = history.sv_batches.values()
        for key in ("sv_latest", "_sv_tail"):
            if getattr(history, key) is not None:
                arrays[key.lstrip("_")] = getattr(history, key)
    described = {
        "max_points": 2 * history.loss_outline.outline.max_buckets,
        "scalars": {name: getattr(history, name) for name in _SCALARS},
        "events": [[e.kind, e.batch, e.gen, e.t, e.detail, e.by] for e in history.events],
        "markers": [[m.batch, m.label, m.kind, m.number] for m in history.markers],
        "marked_batches": history._marked_batches,
        "answers": [[key, a.ok, a.batch, a.reason, a.t] for key, a in history.answers.items()],
        "tensors": [[name, list(shape)] for name, shape in history.tensors] if history.tensors is not None else None,
        "sample": history.sample,
        "loss": loss,
        "metrics": metrics,
        "buckets": buckets,
    }
    return arrays, described


# Scalars and their kinds: what the history's latest values may be.
_SCALARS = {"batch": "int", "loss": "number?", "eta": "number?", "target": "number?", "report_every": "number?",
            "pace": "number?", "best_loss": "number?", "gen": "int?", "last_t": "number?", "diverged": "bool",
            "n_records": "int", "skipped_lines": "int", "metrics_dropped": "bool"}


def _history_of(archive, described: dict, outline_only: bool) -> RunHistory:
    """The history the arrays and their description hold; ValueError (or another error) when malformed."""
    max_points = described["max_points"]
    _check(is_int(max_points) and max_points >= 4 and max_points % 4 == 0, "max_points")
    history = RunHistory(max_points, outline_only=outline_only)
    for name, kind in _SCALARS.items():
        setattr(history, name, _scalar(described["scalars"][name], kind))
    buckets = described["buckets"]

    def get_buckets(key: str) -> MinMaxBuckets | None:
        if key not in buckets:
            return None
        told = buckets[key]
        k, b, width, n = (told[name] for name in ("n_columns", "max_buckets", "width", "n"))
        _check(all(map(is_int, (k, b, width, n, told["first"], told["last"]))) and k >= 0 and b >= 2 and b % 2 == 0
               and width >= 1 and 0 <= n <= width * b and k * b < 2**28, key)
        series = MinMaxBuckets(k, b)
        series.width, series.n = width, n
        for name in _BUCKET_ARRAYS:
            like = getattr(series, name)
            setattr(series, name, _array(archive, f"{key}.{name}", like.dtype, like.shape))
        series.first = (told["first"], _array(archive, f"{key}.first_value", np.float64, (k,)))
        series.last = (told["last"], _array(archive, f"{key}.last_value", np.float64, (k,)))
        return series

    def get_windowed(key: str, told: dict) -> WindowedSeries:
        series = WindowedSeries(max_points // 2)
        series.outline, series.means = get_buckets(f"{key}.outline"), get_buckets(f"{key}.means")
        _check(series.outline is not None and series.means is not None, key)
        latest = told["latest"]
        _check(latest is None or (len(latest) == 2 and is_int(latest[0]) and is_number(latest[1])), key)
        series.latest = None if latest is None else (latest[0], float(latest[1]))
        return series

    source = "recent." if outline_only else ""
    loss_batches = _array(archive, f"{source}loss_batches", np.int64, (None,))
    history.loss_batches = Column.of(loss_batches)
    history.loss_values = Column.of(_array(archive, f"{source}loss_values", np.float64, (len(loss_batches),)))
    history.loss_windows = Column.of(_array(archive, f"{source}loss_windows", np.float64, (len(loss_batches), 6)))
    history.loss_outline = get_windowed("loss", described["loss"])
    history.loss_times = get_buckets("loss_times")
    _check(history.loss_times is not None, "loss_times")
    for i, (name, told) in enumerate(described["metrics"]):
        _check(isinstance(name, str) and name not in history.metrics, "metrics")
        history.metrics[name] = get_windowed(f"metric{i}", told)
    if not outline_only:
        history.sv_batches = Column.of(_array(archive, "sv_batches", np.int64, (None,)))
        history.sv_buckets, history.step_buckets = get_buckets("sv_buckets"), get_buckets("step_buckets")
        history.layers, history.updates, history.dead = get_buckets("layers"), get_buckets("updates"), get_buckets("dead")
        if "archive" in buckets:
            history.archive = _state_archive(archive, buckets["archive"])
        if "sv_latest" in archive.files:
            _check(history.sv_buckets is not None and history.step_buckets is not None, "sv_buckets")
            history.sv_latest = _array(archive, "sv_latest", np.float64, (None,))
            _check(history.sv_buckets.n_columns <= len(history.sv_latest), "sv_latest")
        if "sv_tail" in archive.files:
            _check(history.sv_latest is not None, "sv_tail")
            history._sv_tail = _array(archive, "sv_tail", np.float64, (None, len(history.sv_latest)))
    for kind, batch, gen, t, detail, by in described["events"]:
        _check(isinstance(kind, str) and is_int(batch) and (gen is None or is_int(gen)) and _number_or_none(t)
               and isinstance(detail, str) and isinstance(by, str), "events")
        history.events.append(Event(kind, batch, gen, t, detail, by))
    for batch, label, kind, number in described["markers"][-MAX_MARKERS:]:
        _check(is_int(batch) and isinstance(label, str) and isinstance(kind, str) and is_int(number), "markers")
        history.markers.append(Marker(batch, label, kind, number))
    history._marked_batches = _scalar(described["marked_batches"], "int")
    for key, ok, batch, reason, t in described["answers"]:
        _check(isinstance(key, str) and isinstance(ok, bool) and is_int(batch) and isinstance(reason, str)
               and _number_or_none(t), "answers")
        history.answers[key] = Answer(ok, batch, reason, t)
    tensors, sample = described["tensors"], described["sample"]
    if tensors is not None:
        _check(all(isinstance(name, str) and all(map(is_int, shape)) for name, shape in tensors), "tensors")
        history.tensors = [(name, tuple(shape)) for name, shape in tensors]
    _check(sample is None or all(map(is_int, sample)), "sample")
    history.sample = sample
    return history


def _state_archive(archive, told: dict) -> StateArchive:
    width, capacity, stride, seen, newest = (told[name] for name in ("width", "capacity", "stride", "seen", "newest"))
    _check(all(map(is_int, (width, capacity, stride, seen))) and width >= 0 and capacity >= 2 and capacity % 2 == 0
           and stride >= 1 and seen >= 0 and width * capacity < 2**28 and (newest is None or is_int(newest)), "archive")
    states = StateArchive(width)
    states.capacity, states.stride, states.seen = capacity, stride, seen
    batches = _array(archive, "archive.batches", np.int64, (None,))
    _check(len(batches) <= capacity, "archive")
    states.batches, states.vectors = np.empty(capacity, np.int64), np.empty((capacity, width))
    states.n = len(batches)
    states.batches[: states.n] = batches
    states.vectors[: states.n] = _array(archive, "archive.vectors", np.float64, (len(batches), width))
    if newest is not None:
        states.newest = (newest, _array(archive, "archive.newest", np.float64, (width,)))
    return states


def _array(archive, name: str, dtype, shape: tuple) -> np.ndarray:
    """The archive's array name, checked to be of dtype and shape (None: any length there)."""
    values = archive[name]
    _check(values.dtype == dtype and values.ndim == len(shape)
           and all(want is None or want == got for want, got in zip(shape, values.shape)), name)
    return values


def _scalar(value: Any, kind: str) -> Any:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    ok = (optional and value is None) or {"int": is_int, "number": is_number, "bool": lambda v: isinstance(v, bool)}[kind](value)
    _check(ok, kind)
    return value




def _number_or_none(value: Any) -> bool:
    return value is None or is_number(value)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"fold cache: malformed {what}")
