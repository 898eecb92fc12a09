"""Run files opened as what they must be (regular files, no link followed), and written so that readers and crashes
only ever see the old content or the new, whole."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from nnobs.protocol.errors import UnsafeFile

# A run's settings files (config.json, run.json, fork.json, launch.json, launcher.json, job.json, a checkpoint's
# settings) hold a few lines: one larger than this is no file nnobs wrote, and is refused unread.
SETTINGS_MOST_BYTES = 1 << 20
FILE_MODE = 0o644  # before the umask, as for every file of a run: readable by everyone who may watch it


Signature = tuple[int, int, int]  # (inode, mtime in ns, size): a file replaced, rewritten or grown changes it


def signature_of(stat: os.stat_result) -> Signature:
    """What says whether a file changed since it was last read: replaced (inode), rewritten (mtime) or grown (size)."""
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def file_signature(path: Path) -> Signature | None:
    """The file's signature, or None when it cannot be stat()ed (not there, or not ours to see)."""
    try:
        return signature_of(os.lstat(path))  # a link's own: a link's target is never read
    except OSError:
        return None


# Never follow a link at the file (a teammate's run.jsonl pointing at a secret, or worker.log at someone's file);
# never wait on a pipe planted in its place (opening a FIFO for reading blocks until a writer comes).
_SAFE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_MODE_FLAGS = {
    "rb": os.O_RDONLY,
    "r+b": os.O_RDWR,
    "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
}


def _what_is_at(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "not a regular file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def _refused(path: Path, what: str) -> UnsafeFile:
    return UnsafeFile(f"{path} is {what}: nnobs does not follow it or read it")


def open_fd(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = FILE_MODE) -> int:
    """A descriptor of the regular file at path. A symbolic link at the file or at its directory (the run's directory)
    is refused, never followed, and the file is checked on the descriptor itself, so that nothing can be swapped in
    between a check and the read. Raises UnsafeFile, or the OSError of the open (FileNotFoundError...)."""
    path = Path(path)
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ENOTDIR, errno.ELOOP):
            raise _refused(path.parent, _what_is_at(path.parent)) from None
        raise
    try:
        fd = os.open(path.name, flags | _SAFE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refused(path, "a symbolic link") from None
        if err.errno == errno.EISDIR:
            raise _refused(path, "a directory") from None
        raise
    finally:
        os.close(dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(path, "not a regular file")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # what children inherit
    return fd


def open_file(path: str | os.PathLike, mode: str = "rb") -> io.BufferedIOBase:
    """open(path, mode) for a run file ("rb", "r+b", "ab" or "wb"), through open_fd: no link followed."""
    return cast(io.BufferedIOBase, os.fdopen(open_fd(path, _MODE_FLAGS[mode]), mode))


def read_bytes(path: str | os.PathLike, most: int | None = None) -> bytes:
    """The whole regular file at path; UnsafeFile for a link, no regular file, or one larger than most bytes (which is
    then not read at all)."""
    with open_file(path) as f:
        if most is None:
            return f.read()
        content = f.read(most + 1) if os.fstat(f.fileno()).st_size <= most else None
    if content is None or len(content) > most:  # grown past it since, too
        raise UnsafeFile(f"{path} is larger than the {most:,} bytes it may hold: nnobs does not read it")
    return content


def read_text(path: str | os.PathLike, most: int | None = None) -> str:
    """read_bytes as UTF-8 text (UnicodeDecodeError, a ValueError, for other bytes)."""
    return read_bytes(path, most).decode()


def is_regular(path: str | os.PathLike) -> bool:
    """Whether a regular file lies at path itself (a link to one is not)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def leftover_temps(path: Path) -> list[Path]:
    """Temporary files of path that a killed writer never renamed into place."""
    return list(path.parent.glob(f".{path.name}.*.tmp"))


@dataclass
class WrittenTemp:
    """A temporary file beside path holding what a writer wrote, not yet synced: sync_into_place() makes it durable
    and puts it at path. Until then a reader of path, and a crash, see the file that was there before."""

    tmp: Path
    path: Path
    fd: int  # still open: the sync may come later, on another thread
    size: int  # bytes written

    def sync(self) -> None:
        """Make the bytes durable and close the file; on a failure the temporary file is gone."""
        try:
            os.fsync(self.fd)
        except BaseException:
            os.unlink(self.tmp)
            raise
        finally:
            os.close(self.fd)

    def sync_into_place(self) -> None:
        """Make the bytes durable, then rename them over path: a crash leaves the old file or the new, whole."""
        self.sync()
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.unlink(self.tmp)
            raise


def write_temp(path: Path, write: Callable[[BinaryIO], object], into: Path | None = None) -> WrittenTemp:
    """What write() writes, in a temporary file beside path: into, written over from its start and cut to what was
    written, when given (a prepared_temp, whose pages are in memory already), else a new one."""
    path = Path(path)
    if into is None:
        tmp, fd = _new_temp(path)
    else:
        tmp, fd = into, os.open(into, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            size = f.tell()
            f.truncate()  # a prepared file's bytes past what was written
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return WrittenTemp(tmp, path, fd, size)


PREPARE_READ_BYTES = 1 << 20


def prepared_temp(path: Path, size: int) -> Path:
    """A temporary file beside path of size bytes, its room taken on the disk and its pages brought into memory, for a
    write_temp into it: the write then copies bytes into pages already there. A new file's pages are found as it grows,
    which can cost far more than the copy: 1.2 s against 0.05 s for 432 MB on a virtual machine whose host takes back
    the memory its guest frees, and hands it over again page by page."""
    tmp, fd = _new_temp(Path(path))
    try:
        os.posix_fallocate(fd, 0, size)  # a full disk says so here, not in the write
        piece = bytearray(PREPARE_READ_BYTES)  # read through: the room taken, as zeros, becomes pages in memory
        while os.readv(fd, [piece]):
            pass
    except BaseException:
        os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return tmp


def _new_temp(path: Path) -> tuple[Path, int]:
    """A new, empty temporary file beside path, in the shape leftover_temps looks for: its name and a descriptor (for
    reading and writing)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:  # not mkstemp: its files are 0600 whatever the umask, unreadable to a page run by another user
            return tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace path with what write() writes to a file object."""
    write_temp(path, write).sync_into_place()


def create_once(path: Path, content: bytes) -> bool:
    """Create path with content unless it exists; True if this call created it. Safe against racing creators."""
    path = Path(path)
    written = write_temp(path, lambda f: f.write(content))
    written.sync()
    tmp = written.tmp
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
    if os.lstat(path).st_size <= most:
        return False  # the usual case, told by one stat: the worker asks every second
    with open_file(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(size - keep)
        tail = f.read()
        tail = tail[tail.find(b"\n") + 1 :] or tail
        f.seek(0)
        f.write(b"[older lines cut: this log is kept under %d bytes]\n" % most + tail)
        f.truncate()
    return True
