"""What a run's history has folded, saved beside its run file so that reopening it parses only what came since.

`run.fold` (a full history) and `run.curves` (an outline-only one) hold a JSON header and raw
arrays (arrayfile.py): only int64 and float64 arrays, read straight into place (a numpy .npz of
the same arrays took 0.5 to 2 s to open at 150 MB: its zip reader checks a CRC and copies every
byte), never unpickled, every entry checked before use.

The meta says which bytes of the run file the history covers: their count (a line boundary), the
run file's inode, and SHA-256 of the first and the last PROBE_BYTES of them. A cache is used only
when the run file, as it is now, has that inode and those bytes where they were; missing, stale,
unreadable, of another format or malformed, it is ignored, and the run file, the source of truth,
is folded from the start. Writes replace the file whole, and a failed write is survived in silence.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnobs.protocol.files import open_file, replace_atomically
from nnobs.protocol.numbers import is_int, is_number
from nnobs.protocol.records import HEAD_BYTES
from nnobs.reading.arrayfile import ArrayFile, check, write_arrays
from nnobs.reading.history import RunHistory
from nnobs.reading.journal import MAX_MARKERS, Answer, Event, Marker
from nnobs.reading.series import RECENT_BATCHES, Column, MinMaxBuckets, StateArchive, WindowedSeries
from nnobs.reading.tracks import NOT_LEARNING_REPORTS, StateTrack

FORMAT = 3  # raise it whenever what a history holds, or how it folds, changes: older caches are then rebuilt
PROBE_BYTES = 16384  # hashed at each end of the covered bytes
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
        with open_file(run_file) as f:
            if os.fstat(f.fileno()).st_ino != inode:  # replaced since it was read: what was folded is not in it
                return False
            covers = _fingerprint(f.fileno(), offset)
        if covers is None:
            return False
        arrays, described = _arrays_of(history)
        meta = {
            "format": FORMAT,
            "outline_only": history.outline_only,
            "covers": {**covers, "inode": inode},
            "history": described,
        }
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
            with open_file(path) as f:
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
    with open_file(run_file) as f:
        fd = f.fileno()
        said = {k: covers.get(k) for k in ("offset", "head", "tail")}
        if os.fstat(fd).st_ino != inode or _fingerprint(fd, offset) != said:
            return None
        return Covered(offset, inode, os.pread(fd, min(offset, HEAD_BYTES), 0))


# -- a history as arrays and JSON, and back ---------------------------------------------------------


def _arrays_of(history: RunHistory) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    buckets: dict[str, Any] = {}

    def put_buckets(key: str, series: MinMaxBuckets | None) -> None:
        if series is None:
            return
        buckets[key] = {
            "n_columns": series.n_columns,
            "max_buckets": series.max_buckets,
            "width": series.width,
            "n": series.n,
            "first": series.first[0],
            "last": series.last[0],
        }
        for name in _BUCKET_ARRAYS:
            arrays[f"{key}.{name}"] = getattr(series, name)
        arrays[f"{key}.first_value"], arrays[f"{key}.last_value"] = series.first[1], series.last[1]

    def put_windowed(key: str, series: WindowedSeries) -> dict[str, Any]:
        put_buckets(f"{key}.outline", series.outline)
        put_buckets(f"{key}.means", series.means)
        return {"latest": list(series.latest) if series.latest is not None else None}

    recent = slice(-NOT_LEARNING_REPORTS, None)  # what an outline-only history keeps, for the verdict on learning
    losses = history.loss_track
    for name, column in (
        ("loss_batches", losses.batches),
        ("loss_values", losses.values),
        ("loss_windows", losses.windows),
    ):
        arrays[f"recent.{name}"] = column.values()[recent]
        if not history.outline_only:
            arrays[name] = column.values()
    loss = put_windowed("loss", losses.outline)
    metrics = [[name, put_windowed(f"metric{i}", series)] for i, (name, series) in enumerate(history.metrics.items())]
    put_buckets("loss_times", losses.times)
    put_buckets("loss_recent", losses.recent.trace)
    arrays["loss_recent_tail"] = losses.recent.tail
    states = history.state_track
    if states is not None:
        for key, series in (
            ("sv_buckets", states.buckets),
            ("step_buckets", states.steps),
            ("layers", states.layers),
            ("updates", states.updates),
            ("dead", states.dead),
        ):
            put_buckets(key, series)
        if states.archive is not None:
            archive = states.archive
            arrays["archive.batches"], arrays["archive.vectors"] = (
                archive.batches[: archive.n],
                archive.vectors[: archive.n],
            )
            if archive.newest is not None:
                arrays["archive.newest"] = archive.newest[1]
            buckets["archive"] = {
                "width": archive.width,
                "capacity": archive.capacity,
                "stride": archive.stride,
                "seen": archive.seen,
                "newest": None if archive.newest is None else archive.newest[0],
            }
        arrays["sv_batches"] = states.batches.values()
        for key, vectors in (("sv_latest", states.latest), ("sv_tail", states.tail)):
            if vectors is not None:
                arrays[key] = vectors
    described = {
        "max_points": 2 * history.loss_outline.outline.max_buckets,
        "scalars": {name: getattr(history, name) for name in _SCALARS},
        "events": [[e.kind, e.batch, e.gen, e.t, e.detail, e.by] for e in history.events],
        "markers": [[m.batch, m.label, m.kind, m.number] for m in history.markers],
        "marked_batches": history.journal.marked_batches,
        "answers": [[key, a.ok, a.batch, a.reason, a.t] for key, a in history.answers.items()],
        "tensors": [[name, list(shape)] for name, shape in history.tensors] if history.tensors is not None else None,
        "sample": history.sample,
        "loss": loss,
        "loss_fresh_from": losses.recent.fresh_from,
        "metrics": metrics,
        "buckets": buckets,
    }
    return arrays, described


# Scalars and their kinds: what the history's latest values may be.
_SCALARS = {
    "batch": "int",
    "loss": "number?",
    "batch_loss": "number?",
    "lowest_batch_loss": "number?",
    "eta": "number?",
    "target": "number?",
    "report_every": "number?",
    "pace": "number?",
    "best_loss": "number?",
    "gen": "int?",
    "last_t": "number?",
    "diverged": "bool",
    "n_records": "int",
    "skipped_lines": "int",
    "metrics_dropped": "bool",
}


def _history_of(archive: ArrayFile, described: dict, outline_only: bool) -> RunHistory:
    """The history the arrays and their description hold; ValueError (or another error) when malformed."""
    max_points = described["max_points"]
    check(is_int(max_points) and max_points >= 4 and max_points % 4 == 0, "max_points")
    history = RunHistory(max_points, outline_only=outline_only)
    for name, kind in _SCALARS.items():
        setattr(history, name, _scalar(described["scalars"][name], kind))
    buckets = described["buckets"]

    def get_buckets(key: str) -> MinMaxBuckets | None:
        if key not in buckets:
            return None
        told = buckets[key]
        k, b, width, n = (told[name] for name in ("n_columns", "max_buckets", "width", "n"))
        check(
            all(map(is_int, (k, b, width, n, told["first"], told["last"])))
            and k >= 0
            and b >= 2
            and b % 2 == 0
            and width >= 1
            and 0 <= n <= width * b
            and k * b < 2**28,
            key,
        )
        series = MinMaxBuckets(k, b)
        series.width, series.n = width, n
        for name in _BUCKET_ARRAYS:
            like = getattr(series, name)
            setattr(series, name, archive.checked(f"{key}.{name}", like.dtype, like.shape))
        series.first = (told["first"], archive.checked(f"{key}.first_value", np.float64, (k,)))
        series.last = (told["last"], archive.checked(f"{key}.last_value", np.float64, (k,)))
        return series

    def get_windowed(key: str, told: dict) -> WindowedSeries:
        series = WindowedSeries(max_points // 2)
        series.outline = _present(get_buckets(f"{key}.outline"), key)
        series.means = _present(get_buckets(f"{key}.means"), key)
        latest = told["latest"]
        check(latest is None or (len(latest) == 2 and is_int(latest[0]) and is_number(latest[1])), key)
        series.latest = None if latest is None else (latest[0], float(latest[1]))
        return series

    source = "recent." if outline_only else ""
    losses = history.loss_track
    losses.batches = Column.of(archive.checked(f"{source}loss_batches", np.int64, (None,)))
    losses.values = Column.of(archive.checked(f"{source}loss_values", np.float64, (len(losses.batches),)))
    losses.windows = Column.of(archive.checked(f"{source}loss_windows", np.float64, (len(losses.batches), 6)))
    losses.outline = get_windowed("loss", described["loss"])
    losses.times = _present(get_buckets("loss_times"), "loss_times")
    losses.recent.trace = _present(get_buckets("loss_recent"), "loss_recent")
    losses.recent.tail = archive.checked("loss_recent_tail", np.float64, (None, 4))
    tail = losses.recent.tail  # what the next mean reaches back over: each report one batch at least, so this few
    check(len(tail) <= RECENT_BATCHES + 1 and bool((tail[:, 1] >= 1).all()), "loss_recent_tail")
    losses.recent.fresh_from = described["loss_fresh_from"]
    check(is_int(losses.recent.fresh_from), "loss_fresh_from")
    for i, (name, told) in enumerate(described["metrics"]):
        check(isinstance(name, str) and name not in history.metrics, "metrics")
        history.metrics[name] = get_windowed(f"metric{i}", told)
    if history.state_track is not None:
        _restore_states(history.state_track, archive, get_buckets, buckets)
    for kind, batch, gen, t, detail, by in described["events"]:
        check(
            isinstance(kind, str)
            and is_int(batch)
            and (gen is None or is_int(gen))
            and _number_or_none(t)
            and isinstance(detail, str)
            and isinstance(by, str),
            "events",
        )
        history.events.append(Event(kind, batch, gen, t, detail, by))
    for batch, label, kind, number in described["markers"][-MAX_MARKERS:]:
        check(is_int(batch) and isinstance(label, str) and isinstance(kind, str) and is_int(number), "markers")
        history.markers.append(Marker(batch, label, kind, number))
    history.journal.marked_batches = _scalar(described["marked_batches"], "int")
    for key, ok, batch, reason, t in described["answers"]:
        check(
            isinstance(key, str)
            and isinstance(ok, bool)
            and is_int(batch)
            and isinstance(reason, str)
            and _number_or_none(t),
            "answers",
        )
        history.answers[key] = Answer(ok, batch, reason, t)
    tensors, sample = described["tensors"], described["sample"]
    if tensors is not None:
        check(all(isinstance(name, str) and all(map(is_int, shape)) for name, shape in tensors), "tensors")
        history.tensors = [(name, tuple(shape)) for name, shape in tensors]
    check(sample is None or all(map(is_int, sample)), "sample")
    history.sample = sample
    return history


def _restore_states(
    states: StateTrack, archive: ArrayFile, get_buckets: Callable[[str], MinMaxBuckets | None], buckets: dict
) -> None:
    """Fill an empty state track with what the cache holds of it."""
    states.batches = Column.of(archive.checked("sv_batches", np.int64, (None,)))
    states.buckets, states.steps = get_buckets("sv_buckets"), get_buckets("step_buckets")
    states.layers, states.updates, states.dead = get_buckets("layers"), get_buckets("updates"), get_buckets("dead")
    if "archive" in buckets:
        states.archive = _state_archive(archive, buckets["archive"])
    if "sv_latest" in archive.files:
        check(states.buckets is not None and states.steps is not None, "sv_buckets")
        states.latest = latest = archive.checked("sv_latest", np.float64, (None,))
        check(_present(states.buckets, "sv_buckets").n_columns <= len(latest), "sv_latest")
        if "sv_tail" in archive.files:
            states.tail = archive.checked("sv_tail", np.float64, (None, len(latest)))
    else:
        check("sv_tail" not in archive.files, "sv_tail")


def _state_archive(archive: ArrayFile, told: dict) -> StateArchive:
    width, capacity, stride, seen, newest = (told[name] for name in ("width", "capacity", "stride", "seen", "newest"))
    check(
        all(map(is_int, (width, capacity, stride, seen)))
        and width >= 0
        and capacity >= 2
        and capacity % 2 == 0
        and stride >= 1
        and seen >= 0
        and width * capacity < 2**28
        and (newest is None or is_int(newest)),
        "archive",
    )
    states = StateArchive(width)
    states.capacity, states.stride, states.seen = capacity, stride, seen
    batches = archive.checked("archive.batches", np.int64, (None,))
    check(len(batches) <= capacity, "archive")
    states.batches, states.vectors = np.empty(capacity, np.int64), np.empty((capacity, width))
    states.n = len(batches)
    states.batches[: states.n] = batches
    states.vectors[: states.n] = archive.checked("archive.vectors", np.float64, (len(batches), width))
    if newest is not None:
        states.newest = (newest, archive.checked("archive.newest", np.float64, (width,)))
    return states


def _scalar(value: Any, kind: str) -> Any:
    """value, checked to be of kind ("int", "number" or "bool", "?" after it where None will do)."""
    is_kind = {"int": is_int, "number": is_number, "bool": lambda v: isinstance(v, bool)}[kind.rstrip("?")]
    check((kind.endswith("?") and value is None) or is_kind(value), kind.rstrip("?"))
    return value


def _number_or_none(value: Any) -> bool:
    return value is None or is_number(value)


def _present(series: MinMaxBuckets | None, what: str) -> MinMaxBuckets:
    """series, which the cache must hold."""
    if series is None:
        raise ValueError(f"fold cache: {what} missing")
    return series
