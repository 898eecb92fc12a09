"""A run's floor of free disk space: pausing when the disk runs low or the run file cannot be written, and going on."""

from __future__ import annotations

import os
from pathlib import Path

from nnobs.protocol.events import EventKind
from nnobs.protocol.files import cap_file
from nnobs.training.placer import CheckpointPlacer
from nnobs.training.reporter import Reporter
from nnobs.training.state import RunState

DISK_CHECK_S = 1.0  # how often the free space on the run's filesystem is looked at: one statvfs
MB = 1024 * 1024
WORKER_LOG_MAX = 4 * MB  # worker.log beyond this is cut back to its newest WORKER_LOG_KEPT bytes
WORKER_LOG_KEPT = 1 * MB


class DiskGuard:
    """Whether training waits for the disk, and why: the floor of free space (min_free_mb) and the run file's health."""

    def __init__(self, run: RunState, reporter: Reporter, min_free_mb: float, placer: CheckpointPlacer):
        self.run = run
        self.reporter = reporter
        self.min_free_mb = min_free_mb
        self.placer = placer  # its prepared file holds room the next checkpoint takes over
        self.trouble: dict = {}  # why training waits for the disk: low_disk (free bytes, and the floor) or write_error
        self.next_check = 0.0  # monotonic time

    def check_when_due(self, now: float) -> None:
        """check(), at most every DISK_CHECK_S."""
        if now >= self.next_check:
            self.check(now)
            self.next_check = now + DISK_CHECK_S

    def check(self, now: float) -> None:
        """Pause when the run's filesystem has less than min_free_mb free, or the run file cannot be written, and say
        why in the slot; go on by itself when space is back and a heartbeat lands again."""
        run = self.run
        free = free_bytes(run.run_dir.path)
        was = self.trouble
        if not self.room_for_checkpoint(free):  # below the floor, or a checkpoint would take it there
            self.trouble = {"low_disk": {"free": free, "min_free": round(self.min_free_mb * MB)}}
        elif run.out.error is not None:
            self.trouble = {"write_error": f"cannot write {run.run_dir.run_file.name}: {os_reason(run.out.error)}"}
        else:
            self.trouble = {}
        if self.trouble:
            run.slot.say(**self.trouble)
            if not was:
                low = "low_disk" in self.trouble
                said = f"{free / MB:.1f} MB free, below {self.min_free_mb:g} MB" if free is not None else ""
                run.out.write(
                    {
                        "event": [run.batch, EventKind.LOW_DISK if low else EventKind.WRITE_ERROR],
                        "error": self.trouble.get("write_error", said),
                        **self.trouble,
                    }
                )
            if "write_error" in self.trouble:
                self.reporter.report_loss(now)  # a heartbeat that tells, when it lands, that writing works again
        elif was:
            run.slot.say()
            run.pacer.restart(run.batch, now)  # no burst to catch up the paused seconds
            self.reporter.report_loss(now, {"event": [run.batch, EventKind.DISK_OK], "free": free})
        cap_log(run.run_dir.worker_log)

    def room_for_checkpoint(self, free: int | None = None) -> bool:
        """Whether a checkpoint as large as the last one leaves min_free_mb free (kept checkpoints hold the old ones' space;
        a prepared file's room is the next checkpoint's already). A floor of 0 never pauses: what does not fit fails,
        and the checkpoint before stays whole."""
        if not self.min_free_mb:
            return True
        free = free_bytes(self.run.run_dir.path) if free is None else free
        try:
            size = os.path.getsize(self.run.run_dir.checkpoint)
        except OSError:
            size = 0
        return free is None or free + self.placer.prepared_bytes - size >= self.min_free_mb * MB


def free_bytes(path: Path) -> int | None:
    """Bytes free for unprivileged writers on path's filesystem; None when it cannot be told."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def os_reason(err: OSError) -> str:
    """An OS error in plain lower-case words: "no space left on device"."""
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def cap_log(worker_log: Path) -> None:
    """Cut worker.log back to its newest part when it has grown past WORKER_LOG_MAX."""
    try:
        cap_file(worker_log, WORKER_LOG_MAX, WORKER_LOG_KEPT)
    except OSError:
        pass  # a log that cannot be cut is a log, not a reason to stop
