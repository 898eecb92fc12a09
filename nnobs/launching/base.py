"""What every launcher shares: its interface, how a stop went, and the lock that serializes starts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from filelock import FileLock

from nnobs.launching.status import RunStatus
from nnobs.protocol.errors import hold
from nnobs.protocol.jobs import JobRecord
from nnobs.protocol.rundir import RunDir
from nnobs.reading.history import RunHistory

START_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0  # a worker that has not obeyed a shutdown by then (stuck, or stopped) is killed
KILL_WAIT_S = 10.0  # for the kernel to end a killed worker and drop its lock


def start_lock(run: RunDir):
    """The lock that serializes starts of the run's worker (held while one is started or submitted)."""
    return hold(FileLock(run.start_lock, timeout=START_TIMEOUT_S), f"starting {run.name}")


@dataclass(frozen=True)
class Stopped:
    """How a stop went: whether no worker lives now, and what it had to do beyond a shutdown command."""

    gone: bool
    how: str = ""  # e.g. "the control file could not be written (no space left on device): told by SIGTERM"

    def __bool__(self) -> bool:
        return self.gone


class Launcher(Protocol):
    """How a run's worker is started, found alive, stopped and killed: the local launcher and the Slurm one alike,
    so no caller asks which it has."""

    kind: str  # its name in launcher.json: local or slurm

    def start(self, run: RunDir, by: str) -> int | JobRecord:
        """Start the worker unless one is alive (or queued); the live pid, or the run's one job."""
        ...

    def status(self, run: RunDir, history: RunHistory, now: float) -> RunStatus:
        """The run's state and latest values: its liveness by this launcher, joined with its run file."""
        ...

    def worker_pid(self, run: RunDir) -> int | None:
        """The live worker's pid; -1 when it lives but its pid is not to be had here; None when none lives."""
        ...

    def active_job(self, run: RunDir) -> JobRecord | None:
        """The scheduler's job of the run while it is queued or running; None when there is none (always, locally)."""
        ...

    def stop(self, run: RunDir, grace: float, by: str) -> Stopped:
        """Shut the worker down through the control file (cancel it while queued); kill it after grace seconds."""
        ...

    def kill(self, run: RunDir) -> None:
        """End the worker at once, without a shutdown: it reads crashed, and resumes from its checkpoint."""
        ...
