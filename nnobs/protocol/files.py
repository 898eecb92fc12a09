"""Writing files so that readers and crashes only ever see the old content or the new, whole."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # before the umask, as for every file of a run: readable by everyone who may watch it


Signature = tuple[int, int, int]  # (inode, mtime in ns, size): a file replaced, rewritten or grown changes it


def signature_of(stat: os.stat_result) -> Signature:
    """What says whether a file changed since it was last read: replaced (inode), rewritten (mtime) or grown (size)."""
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def file_signature(path: Path) -> Signature | None:
    """The file's signature, or None when it cannot be stat()ed (not there, or not ours to see)."""
    try:
        return signature_of(os.stat(path))
    except OSError:
        return None


def leftover_temps(path: Path) -> list[Path]:
    """Temporary files of path that a killed writer never renamed into place."""
    return list(path.parent.glob(f".{path.name}.*.tmp"))


def _written_temp(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """A synced temporary file beside path holding what write() wrote; its name."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"  # the shape leftover_temps looks for
        try:  # not mkstemp: its files are 0600 whatever the umask, unreadable to a page run by another user
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace path with what write() writes to a file object."""
    path = Path(path)
    tmp = _written_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def create_once(path: Path, content: bytes) -> bool:
    """Create path with content unless it exists; True if this call created it. Safe against racing creators."""
    path = Path(path)
    tmp = _written_temp(path, lambda f: f.write(content))
    try:
        os.link(tmp, path)  # fails if path exists: the first creator wins, whole
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def cap_file(path: Path, most: int, keep: int) -> bool:
    """Cut the file at path back to its last keep bytes, from a line start, when it is larger than most; whether it was.

    In place, so that writers holding it open with O_APPEND (a worker's stdout) go on writing at its end.
    """
    if os.stat(path).st_size <= most:
        return False  # the usual case, told by one stat: the worker asks every second
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(size - keep)
        tail = f.read()
        tail = tail[tail.find(b"\n") + 1 :] or tail
        f.seek(0)
        f.write(b"[older lines cut: this log is kept under %d bytes]\n" % most + tail)
        f.truncate()
    return True
