"""Writing files so that readers and crashes only ever see the old content or the new, whole."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FILE_MODE = 0o644  # as the run file's: readable by everyone who may watch the run


def _written_temp(path: Path, write: Callable[[BinaryIO], None]) -> str:
    """A synced temporary file beside path holding what write() wrote; its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes it 0600: a page or CLI run by another user could not read it
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def replace_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
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
