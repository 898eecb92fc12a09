"""Whose run directory this is: taking the worker lock, and making sure the run is still this worker's."""

from __future__ import annotations

import os

from nnobs.protocol.files import leftover_temps
from nnobs.protocol.jobs import recorded_for_another_job
from nnobs.protocol.rundir import RunDir, take_worker_lock

PID_WIDTH = 20  # worker.lock holds the pid, space-padded to this many bytes
OWNERSHIP_CHECK_S = 1.0  # how often the session makes sure its run directory is still its own


class Orphaned(Exception):
    """The run directory this session serves was deleted or replaced under it."""


def claim(run: RunDir) -> int | None:
    """Take the run's worker lock and write our pid in it; None when a live worker holds it. Clears what a killed
    predecessor left half-written. The kernel drops the lock when the process ends, or when the fd is closed."""
    run.path.mkdir(parents=True, exist_ok=True)
    lock_fd = take_worker_lock(run)
    if lock_fd is None:
        return None
    # Written over the last pid in place, padded to a fixed width: no truncation, so no new space needed on a full disk.
    os.pwrite(lock_fd, str(os.getpid()).ljust(PID_WIDTH).encode(), 0)
    for stale in leftover_temps(run.checkpoint):
        stale.unlink(missing_ok=True)  # only the lock holder writes checkpoints
    return lock_fd


class Ownership:
    """The worker lock a session holds (the caller took it), and the Slurm job it runs in, if any."""

    def __init__(self, run: RunDir, job_id: str | None):
        self.run_dir = run
        self.job_id = job_id
        self.lock_inode = os.stat(run.worker_lock).st_ino  # the lock file this session holds
        self.next_check = 0.0  # monotonic time

    def check_when_due(self, now: float) -> None:
        """check_still_owned(), at most every OWNERSHIP_CHECK_S."""
        if now >= self.next_check:
            self.check_still_owned()
            self.next_check = now + OWNERSHIP_CHECK_S

    def check_still_owned(self) -> None:
        """Raise Orphaned when worker.lock is no longer the file we lock: the run was deleted or made anew."""
        try:
            same = os.stat(self.run_dir.worker_lock).st_ino == self.lock_inode
        except FileNotFoundError:
            same = False
        if not same:
            raise Orphaned(f"{self.run_dir.path} was deleted or replaced")
        if self.job_id and (why := recorded_for_another_job(self.run_dir)):
            raise Orphaned(why)  # a new job serves the run: this one must not write beside it
