"""worker.status: a few kilobytes reserved when a worker starts, for what it must say when nothing else can be written.

A full disk, a read-only remount or a quota stops the run file from growing; readers would only see
the worker fall silent. So each worker takes SLOT_BYTES of space up front and overwrites them in
place, which needs no new space: why it cannot write, how little space is left, how it ended.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from nnobs.protocol.files import FILE_MODE, open_fd, read_bytes
from nnobs.protocol.jsontext import parse_json

SLOT_BYTES = 4096


class StatusSlot:
    """The worker's fixed-size status file, overwritten in place."""

    def __init__(self, path: Path, pid: int, gen: int):
        self.pid, self.gen = pid, gen
        self._fd = open_fd(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            os.posix_fallocate(self._fd, 0, SLOT_BYTES)
        except OSError:  # a filesystem without fallocate (or no space even for this): written whole below, if it can be
            pass
        self.said: dict = {}
        self.say()

    def say(self, **status) -> bool:
        """Replace what the slot says by status (nothing: all is well); False when even that cannot be written."""
        self.said = status
        text = json.dumps({"pid": self.pid, "gen": self.gen, "t": round(time.time(), 3), **status}).encode()
        text = text[: SLOT_BYTES - 1] if len(text) >= SLOT_BYTES else text
        try:
            return os.pwrite(self._fd, text.ljust(SLOT_BYTES), 0) == SLOT_BYTES
        except OSError:
            return False

    def close(self) -> None:
        os.close(self._fd)


def read_slot(path: Path) -> dict:
    """What a worker's status slot says; {} when there is none or it is unreadable."""
    try:
        said = parse_json(read_bytes(path, SLOT_BYTES).rstrip(b" \0") or b"{}")
    except (OSError, ValueError):
        return {}
    return said if isinstance(said, dict) else {}


def tell_log(message: str) -> None:
    """Say message in worker.log (the process's stderr), unless even that cannot be written: a log that cannot
    grow must never take the worker down."""
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass
