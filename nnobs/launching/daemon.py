"""A small detached process beside the runs (a runs root's alert watcher, a population's controller): alive while it
holds its lock file, with its pid written in it, as a worker holds worker.lock."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

from nnobs.launching.local import package_parent
from nnobs.launching.spawn import start_logged
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import open_fd
from nnobs.protocol.rundir import process_gone

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def daemon_pid(lock: Path) -> int | None:
    """The live process's pid, None when none holds lock, -1 while its pid is not written yet."""
    try:
        fd = open_fd(lock)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() and not process_gone(int(text)) else -1
    else:
        return None
    finally:
        os.close(fd)


def start_daemon(module: str, args: list[str], lock: Path, log: Path, what: str) -> int:
    """Start `python -m module args` detached, its output appended to log, unless one holds lock; its pid."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    if (pid := daemon_pid(lock)) is not None:
        return pid
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent(), os.environ.get("PYTHONPATH")]))}
    started = start_logged([sys.executable, "-P", "-m", module, *args], str(lock.parent), env, log, own_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while daemon_pid(lock) in (None, -1):
        if started.poll() is not None or time.monotonic() > deadline:
            raise NnobsError(f"the {what} did not start; see {log}")
        time.sleep(0.02)
    return started.pid


def stop_daemon(lock: Path) -> bool:
    """End the process holding lock (SIGTERM), waiting until it has let go; whether one was alive."""
    pid = daemon_pid(lock)
    if pid is None or pid < 0:
        return False
    os.kill(pid, 15)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while daemon_pid(lock) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    return True


def hold_lock(lock: Path, refused: str) -> int:
    """Take lock for this process's life, its pid written in it; exit saying refused when another holds it."""
    fd = open_fd(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(refused)
    os.pwrite(fd, str(os.getpid()).ljust(16).encode(), 0)
    return fd
