"""The one family of errors nnobs raises, each with a message meant for the person who caused it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from filelock import BaseFileLock, Timeout


class NnobsError(Exception):
    """Base of every error nnobs raises on purpose."""


class RunNameError(NnobsError, ValueError):
    """A run name that could escape the runs root or is not a plain name."""


class CommandError(NnobsError, ValueError):
    """A command or value the worker would refuse."""


class ControlFileError(NnobsError):
    """The control file exists but cannot be read as commands."""


class UnsafeFile(NnobsError, OSError):
    """Where a run file should be lies something nnobs does not open: a symbolic link, no regular file, or a file
    beyond the size it can hold. It is named, never followed or read."""


class LockTimeout(NnobsError, TimeoutError):
    """Another process held a lock for longer than we wait."""


class MissingExtra(NnobsError, ImportError):
    """An optional part this needs is not installed: the message names the extra to install."""


class MetricError(NnobsError, ValueError, TypeError):
    """What run.log refuses: a metric name it cannot take, or a loss or metric that is no number."""


@contextmanager
def hold(lock: BaseFileLock, what: str) -> Iterator[None]:
    """Hold a filelock lock; a timeout becomes a LockTimeout naming what was locked."""
    try:
        with lock:
            yield
    except Timeout as err:
        raise LockTimeout(
            f"{what} is locked by another process (waited {lock.timeout:g} s for {lock.lock_file})"
        ) from err
