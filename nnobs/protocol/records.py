"""The run file: one JSON object per line, appended by the worker, read incrementally by everyone else."""

from __future__ import annotations

import collections
import errno
import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nnobs.protocol.errors import UnsafeFile
from nnobs.protocol.files import FILE_MODE, open_fd, open_file
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.slot import tell_log

Record = dict[str, Any]
# A record to be built where it is written: a BackgroundWriter builds it on its own thread, and the training thread
# only hands over the numbers (a loss report built in place cost a fast loop 32 µs with its caches cold after each
# step, 20 handed over so). What it builds from must not change after it is handed over.
Deferred = Callable[[], Record]


def built(record: Record | Deferred) -> Record:
    """The record itself, a deferred one built."""
    return record() if callable(record) else record


def _as_list(value: Any) -> Any:
    """numpy arrays (a state vector) are written as JSON lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _finite_or_none(value: Any) -> Any:
    """Replace every NaN or infinity inside value by None: JSON has no spelling for them."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


# One encoder for every record: json.dumps with these settings would make a new one each call.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_as_list)


def encode_record(record: Record) -> bytes:
    """One complete line of strict JSON; a record holding NaN or infinity is written with nulls and "diverged": true."""
    try:
        text = _ENCODER.encode(record)
    except ValueError:
        text = json.dumps({**_finite_or_none(record), "diverged": True}, allow_nan=False, separators=(",", ":"))
    return text.encode() + b"\n"


class RecordWriter:
    """Appends records stamped with wall time and worker generation; a failed write is reported, never raised."""

    def __init__(self, path: Path, gen: int | None):
        self.path = Path(path)
        self.gen = gen
        self.failed_writes = 0
        self.error: OSError | None = None  # why the latest write failed; None once one succeeds again
        self._torn = False  # the file ends in part of a line, left by a short write: the next write ends it first
        # O_APPEND makes each single write land whole at the end, even beside another writer.
        self._fd = open_fd(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        self._end_torn_line()

    def _end_torn_line(self) -> None:
        """End a line left unfinished by a killed writer, so that only it is lost, not our first record."""
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            self._torn = True  # ended by the first write, which a full disk may refuse now

    def write(self, record: Record | Deferred) -> bool:
        return self._append(encode_record(self._stamped(built(record))))

    def write_at(self, record: Record, t: float) -> bool:
        """Write a record stamped with wall time t: when another logger wrote what it holds (a TensorBoard scalar)."""
        return self._append(encode_record({**record, "t": round(t, 3), "gen": self.gen}))

    def _stamped(self, record: Record) -> Record:
        return {**record, "t": round(time.time(), 3), "gen": self.gen}

    def _append(self, line: bytes) -> bool:
        if self._torn:
            line = b"\n" + line  # the torn line is ended, and so skipped by readers, once; this record lands whole
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                self._torn = self._torn or written > 0
                raise OSError(errno.ENOSPC, f"short write: {written} of {len(line)} bytes")
            self._torn = False
            self.error = None
            return True
        except OSError as err:
            # Observing must never take training down: count it, say it once in worker.log, go on.
            self.failed_writes += 1
            self.error = err
            if self.failed_writes == 1:
                tell_log(f"nnobs: cannot write to {self.path}: {err}")
            return False

    def flush(self) -> None:
        """Every record written so far is in the file (it is, once write returns)."""

    def size(self) -> int:
        """Bytes in the file now."""
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)


# Records handed over within this long of one another are written together, in one call: the writer thread wakes
# once for them all. A wake per record cost a loop with a report every batch more than the record itself (88 vs 54
# µs a batch, bench torch_loop's MLP), as the woken thread and the training take the interpreter's lock in turns.
GATHER_S = 0.05


class BackgroundWriter(RecordWriter):
    """A RecordWriter that builds (a deferred record), stamps, encodes and writes on a thread of its own, so training
    never waits for any of it.

    Records are timed when handed over and land in order, at most GATHER_S later (a killed process loses those
    not yet written); flush() and close() wait until all have, without the wait. While records keep coming, the
    thread looks for them every GATHER_S by itself; once it finds none it sleeps until the next is handed over.
    Handing one over is then a deque's append: waking a sleeping thread (40 µs in a training loop, its caches cold)
    and copying the record to stamp it had cost a 10^5-parameter MLP's report more than the rest of it.
    """

    def __init__(self, path: Path, gen: int | None):
        super().__init__(path, gen)
        # A deque: appending takes no Python-level lock, so handing a record over never waits on the writer thread.
        self._handed: collections.deque[tuple[Record | Deferred, float, int | None] | threading.Event | None] = (
            collections.deque()
        )
        self._waiting = threading.Event()  # set to wake the thread when it sleeps (asleep) or must hurry (urgent)
        self._urgent = threading.Event()  # set by flush() and close(): write now, do not wait for more
        self._asleep = False  # the thread found nothing at its last look and waits to be woken
        self._running = True  # until close() or the thread's end: nothing would write a record handed over after
        self._thread = threading.Thread(target=self._drain, name="nnobs-records", daemon=True)
        self._thread.start()

    def write(self, record: Record | Deferred) -> bool:
        return self._hand_over((record, time.time(), self.gen))  # the generation as handed over: a rewind moves it

    def write_at(self, record: Record, t: float) -> bool:
        return self._hand_over((record, t, self.gen))

    def _hand_over(self, item: tuple[Record | Deferred, float, int | None]) -> bool:
        if not self._running:
            return False  # closed: nothing would write it
        self._handed.append(item)
        if self._asleep:
            self._waiting.set()
        return True

    def _hand_over_now(self, item: threading.Event | None) -> None:
        self._handed.append(item)
        self._urgent.set()
        self._waiting.set()

    def _drain(self) -> None:
        try:
            while True:
                self._urgent.wait(GATHER_S)  # records handed over meanwhile are written together
                self._urgent.clear()
                if not self._handed:  # none for a whole GATHER_S: sleep until the next is handed over
                    self._asleep = True
                    if not self._handed:  # one handed over since the look above saw no one asleep
                        self._waiting.wait()
                    self._waiting.clear()
                    self._asleep = False
                    continue  # and gather for GATHER_S from it
                if not self._write_handed():
                    return
        finally:
            self._running = False

    def _write_handed(self) -> bool:
        """Write what was handed over, in one call between flushes; False at close()'s mark."""
        lines: list[bytes] = []
        while self._handed:
            item = self._handed.popleft()
            if item is None or isinstance(item, threading.Event):
                if lines:
                    self._append(b"".join(lines))
                    lines = []
                if item is None:
                    return False
                item.set()  # a flush: everything handed over before it is written
                continue
            record, t, gen = item
            try:
                lines.append(encode_record({**built(record), "t": round(t, 3), "gen": gen}))
            except Exception as err:  # a record that cannot be JSON: say so, keep the rest coming
                self.failed_writes += 1
                said = str(record)[:200] if isinstance(record, dict) else f"{getattr(record, 'func', record)!r}"
                tell_log(f"nnobs: record not written ({type(err).__name__}: {err}): {said}")
        if lines:
            self._append(b"".join(lines))
        return True

    def flush(self) -> None:
        """Wait until every record handed over so far is in the file (at once when closed)."""
        if not self._running:
            return
        written = threading.Event()
        self._hand_over_now(written)
        while not written.wait(1.0):
            if not self._thread.is_alive():
                return

    def close(self) -> None:
        """Write what was handed over, and close the file; again, nothing."""
        if not self._thread.is_alive():
            return
        self._running = False  # nothing handed over from here on is taken
        self._hand_over_now(None)
        self._thread.join()
        super().close()


HEAD_BYTES = 256  # the file's first bytes, kept to tell a file refilled past our offset from the one we read
# The longest line every reader reads, its newline included. The longest nnobs writes is a state report of a net
# of FULL_STATE_MAX_PARAMS (about 200 KB); a larger net's summary takes about 200 bytes a tensor, so even 10,000
# tensors stay under 2 MB. Anything longer was written by someone else into a shared runs root: it is skipped
# and counted like a torn line, and never held in memory whole.
MAX_LINE_BYTES = 16 << 20
LONG_LINE_BLOCK = 1 << 20  # a line past MAX_LINE_BYTES is searched for its end this much at a time
# What a reader is handed in place of a line past the bound: no JSON, so every reader skips and counts it.
LONG_LINE_STAND_IN = b"# a line longer than MAX_LINE_BYTES, skipped unread\n"


class RecordReader:
    """Reads the records appended since the last call; a torn last line waits for the next call."""

    def __init__(self, path: Path, max_line_bytes: int = MAX_LINE_BYTES):
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes  # a longer line, its newline included, is skipped unread
        self.offset = 0  # bytes of the file consumed so far: always at a line boundary
        self.skipped_lines = 0  # lines that were not a JSON object, since the last restart
        self.restarts = 0  # times the file shrank or was replaced and was read again from the start
        self.bytes_read = 0  # bytes read from the file in all, torn line tails included
        self.refused = ""  # why the file was not read at the last call: a link or no regular file in its place
        self._inode: int | None = None
        self._head = b""  # the file's first bytes as read: a new file starts with another worker's pid, or other text
        # Set while the line at offset is longer than max_line_bytes: how far it was searched for its newline.
        self._long_line_searched: int | None = None

    @classmethod
    def from_end(cls, path: Path) -> RecordReader:
        """A reader of what is appended from now on (a command's answers, a new worker's start)."""
        reader = cls(path)
        try:
            reader.offset = os.lstat(path).st_size  # a link's own size: what it points at is never read
        except FileNotFoundError:
            pass
        return reader

    @property
    def inode(self) -> int | None:
        """The inode of the file read so far (None before the first read)."""
        return self._inode

    def resume(self, offset: int, inode: int, head: bytes) -> None:
        """Go on from offset of the file with this inode and first bytes, as if this reader had read up to there."""
        self.offset, self._inode, self._head = offset, inode, head[:HEAD_BYTES]
        self._long_line_searched = None

    def read_new_lines(self, max_bytes: int | None = None) -> bytes:
        """The complete lines appended since the last call. After a restart (see `restarts`), the whole file again.

        With max_bytes, about that much at most (more only for a longer line): call again for the rest. A line
        longer than max_line_bytes comes as LONG_LINE_STAND_IN once its newline is written, and is never read whole.
        """
        try:
            with open_file(self.path) as f:
                fd = f.fileno()
                stat = os.fstat(fd)
                if self._inode is not None and (
                    stat.st_ino != self._inode
                    or stat.st_size < self._bytes_known()
                    or os.pread(fd, len(self._head), 0) != self._head  # emptied, then written past our offset
                ):
                    self.offset, self.skipped_lines, self._head = 0, 0, b""
                    self._long_line_searched = None
                    self.restarts += 1
                self._inode = stat.st_ino
                chunk = self._complete_lines(fd, stat.st_size, max_bytes)
                if len(self._head) < HEAD_BYTES and self.offset > len(self._head):
                    self._head = os.pread(fd, min(self.offset, HEAD_BYTES), 0)
        except FileNotFoundError:
            return b""
        except UnsafeFile as err:  # a link or no file where the run file should be: nothing is read through it
            self.refused = str(err)
            return b""
        self.refused = ""
        return chunk

    def _bytes_known(self) -> int:
        """How much of the file this reader has seen: up to offset, or further through a long line searched."""
        return self.offset if self._long_line_searched is None else self._long_line_searched

    def _complete_lines(self, fd: int, size: int, max_bytes: int | None) -> bytes:
        """The complete lines from offset on, about max_bytes of them, read in pieces of at most max_line_bytes."""
        lines: list[bytes] = []
        budget = size if max_bytes is None else max_bytes
        while budget > 0:
            if self._long_line_searched is not None:
                if not self._step_over_long_line(fd, size, self._long_line_searched):
                    break  # its newline is not written yet: the next call searches on from where this one stopped
                lines.append(LONG_LINE_STAND_IN)
            available = size - self.offset
            if not available:
                break
            taken, more = self._lines_of_piece(fd, available, budget)
            lines.append(taken)
            budget -= len(taken)
            if not more:
                break
        return b"".join(lines)

    def _lines_of_piece(self, fd: int, available: int, budget: int) -> tuple[bytes, bool]:
        """The complete lines of the next piece, offset moved past them, and whether more may follow this call.

        A piece is budget bytes, or up to max_line_bytes when those hold no newline; max_line_bytes without a
        newline are the start of a line past the bound, passed over from then on.
        """
        cut_at_the_bound = min(available, budget) > self.max_line_bytes
        piece = os.pread(fd, min(available, budget, self.max_line_bytes), self.offset)
        if b"\n" not in piece and len(piece) < min(available, self.max_line_bytes):  # a line longer than budget
            piece = os.pread(fd, min(available, self.max_line_bytes), self.offset)
        self.bytes_read += len(piece)
        end = piece.rfind(b"\n") + 1  # a line after the last newline is still being written
        self.offset += end
        if not end and len(piece) == self.max_line_bytes:
            self._long_line_searched = self.offset + len(piece)
            return b"", True
        return piece[:end], bool(end) and cut_at_the_bound

    def _step_over_long_line(self, fd: int, size: int, searched: int) -> bool:
        """Search on from searched for the newline ending the long line at offset; True once offset is past it."""
        while searched < size:
            block = os.pread(fd, min(LONG_LINE_BLOCK, size - searched), searched)
            if not block:  # cut short since the stat: the next call sees it shrunk, and starts over
                break
            self.bytes_read += len(block)
            newline = block.find(b"\n")
            if newline >= 0:
                self.offset, self._long_line_searched = searched + newline + 1, None
                return True
            searched += len(block)
        self._long_line_searched = searched
        return False

    def read_new(self) -> list[Record]:
        """The records appended since the last call, each line parsed as JSON; bad lines are counted and skipped."""
        records = []
        for line in self.read_new_lines().split(b"\n"):  # lines end in a newline only, as JSON strings hold no \r
            if not line.strip():
                continue
            try:
                record = parse_json(line)
            except ValueError:  # garbage, a line torn by a crash, or not UTF-8
                self.skipped_lines += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                self.skipped_lines += 1
        return records


def read_all(path: Path) -> list[Record]:
    """Every complete record in the file."""
    return RecordReader(path).read_new()


def pair(value: Any) -> tuple[int, Any] | None:
    """A topic's [batch, value], or None when the value does not have that shape."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and 0 <= value[0] < 2**63  # a batch count fits an int64 column
    ):
        return value[0], value[1]
    return None
