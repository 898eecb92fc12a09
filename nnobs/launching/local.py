"""The local launcher: a worker on this machine, a detached process, alive while it holds worker.lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nnobs.launching.base import KILL_WAIT_S, START_TIMEOUT_S, STOP_GRACE_S, Stopped, start_lock
from nnobs.launching.status import START_FAILED, RunStatus, status_of
from nnobs.protocol.control import queue_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.files import replace_atomically
from nnobs.protocol.jobs import JobRecord
from nnobs.protocol.records import RecordReader, pair
from nnobs.protocol.rundir import RunDir, local_pid, log_tail, process_gone
from nnobs.protocol.slot import read_slot
from nnobs.reading.history import RunHistory


def _start_local(run: RunDir, by: str = "") -> int:
    """Start the run's worker detached unless one is alive; return the live worker's pid.

    Starts are serialized by start.lock, and a worker that finds worker.lock held exits at once,
    so any number of simultaneous starts leave exactly one worker. Returns once the new worker's
    "started" record is in the run file, so a status read right after shows the new generation.
    """
    with start_lock(run):
        pid = settled_pid(run)
        if pid is not None:
            return pid
        announcements = RecordReader.from_end(run.run_file)
        where = os.path.abspath(run.path)
        launched = subprocess.run(
            [sys.executable, "-P", "-m", "nnobs.launching.spawn", where, by],  # -P, and cwd: see worker_command
            cwd=where,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [package_parent(), os.environ.get("PYTHONPATH")])),
            },
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if launched.returncode != 0:
            raise NnobsError(_failed_start(run, f"could not launch the worker: {launched.stderr.strip()}"))
        pid = int(launched.stdout.strip())
        deadline = time.monotonic() + START_TIMEOUT_S
        said: list[dict] = []  # what the new worker wrote: its start, or why it could not
        # Its started record, or, when the disk takes no record, its status slot saying why.
        while not any(_is_start_of(record, pid) for record in said) and not _is_start_of(_slot_start(run), pid):
            if not process_gone(pid) and time.monotonic() > deadline:  # slow (a large import), not failed
                serves = "script" if run.launch.exists() else "worker"
                raise NnobsError(
                    f"the {serves} (pid {pid}) has not said it started after {START_TIMEOUT_S:g} s and is still "
                    f"running: `nnobs status {run.name}` shows when it does, or why not; its output is in "
                    f"{run.worker_log}"
                )
            if process_gone(pid):
                said += announcements.read_new()  # its last words may have landed as it exited
                why = _why_not_started(run, said)
                raise NnobsError(why if said else _failed_start(run, why))  # one that wrote records says why there
            time.sleep(0.02)
            said += announcements.read_new()
        _forget_failed_start(run)
        return pid


def _why_not_started(run: RunDir, said: list[dict]) -> str:
    """The worker's own error record when it wrote one, else the end of its log, its lines kept."""
    serves = "script" if run.launch.exists() else "worker"
    errors = [r.get("error") for r in said if (event := pair(r.get("event"))) and event[1] == "error"]
    if errors:
        return f"the {serves} did not start: {errors[-1]}. Details in {run.worker_log}"
    said_last = log_tail(run) or "(nothing: worker.log is empty)"
    return f"the {serves} exited before it started; worker.log ends:\n{said_last}"


def _failed_start(run: RunDir, why: str) -> str:
    """Record why a start failed without a word in the run file (a script missing a module), so that status reads
    "failed to start" and nothing starts it again unasked; why."""
    failure = json.dumps({"t": time.time(), "error": why}).encode()
    try:
        replace_atomically(run.path / START_FAILED, lambda f: f.write(failure))
    except OSError:
        pass  # a full disk or an unwritable directory: the start's error is still raised to whoever asked
    return why


def _forget_failed_start(run: RunDir) -> None:
    """A start that worked: the failure recorded before it no longer stands."""
    try:
        (run.path / START_FAILED).unlink()
    except OSError:  # none there, the usual case; one that cannot go is outdated by the records the worker writes
        pass


def settled_pid(run: RunDir, timeout: float = START_TIMEOUT_S) -> int | None:
    """The live worker's pid once it has written it (a moment after it took the lock); None when none lives."""
    deadline = time.monotonic() + timeout
    while (pid := local_pid(run)) == -1 and time.monotonic() < deadline:
        time.sleep(0.01)
    if pid == -1:
        raise NnobsError(f"the worker of {run.name} holds its lock but never said its pid; see {run.worker_log}")
    return pid


def _slot_start(run: RunDir) -> dict:
    """The worker's status slot as a started record, when it says the worker cannot write: how a start is seen on a
    full disk."""
    slot = read_slot(run.status_file)
    if not (slot.get("write_error") or slot.get("low_disk")):
        return {}
    return {"event": [0, EventKind.STARTED], "pid": slot.get("pid")}


def _is_start_of(record: dict, pid: int) -> bool:
    """True for the started record of the process launched as pid, or of one it started (a script run through a
    shell wrapper, in the session the launcher gave it, numbered by its pid; rank 0 of torchrun, which gives each
    rank a session of its own)."""
    event = pair(record.get("event"))
    if not event or event[1] != EventKind.STARTED or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == pid:
        return True
    try:
        return os.getsid(record["pid"]) == pid or _descends_from(record["pid"], pid)
    except OSError:
        return False


def _descends_from(child: int, ancestor: int, depth: int = 4) -> bool:
    """Whether ancestor started child, or started what started it (a few generations up); False where /proc is not."""
    for _ in range(depth):
        try:
            with open(f"/proc/{child}/stat", "rb") as stat:
                child = int(stat.read().rsplit(b")", 1)[1].split()[1])  # the field after the state: the parent's pid
        except (OSError, ValueError, IndexError):
            return False
        if child == ancestor:
            return True
        if child <= 1:
            return False
    return False


def package_parent() -> str:
    """The directory holding the nnobs package, so the worker imports this very copy of it."""
    return str(Path(__file__).resolve().parents[2])  # nnobs/launching/local.py: three levels under it


def _stop_local(run: RunDir, grace: float = STOP_GRACE_S, by: str = "stop") -> Stopped:
    """Ask the worker to shut down and wait until it has exited; kill it if it has not after grace seconds.

    When the control file cannot be written (a full disk, a read-only filesystem), the worker is told
    by SIGTERM, which it handles as a shutdown. A stuck worker cannot obey, so it is ended the way a
    crash would end it: without a shutdown record (its run then reads crashed), resuming from its last
    checkpoint.
    """
    pid = settled_pid(run)
    if pid is None:
        return Stopped(True)
    how = ask_to_stop(run, pid, by)
    if _gone_within(run, pid, grace):
        return Stopped(True, how)
    _signal(run, pid, signal.SIGKILL)
    return Stopped(_gone_within(run, pid, KILL_WAIT_S), f"{how}; " * bool(how) + f"killed after {grace:.0f} s")


def ask_to_stop(run: RunDir, pid: int, by: str) -> str:
    """Send the worker pid a shutdown; when the control file cannot be written, SIGTERM, which it handles the same
    way. "" or what had to be done instead."""
    try:
        queue_command(run, "shutdown", by=by)
        return ""
    except (OSError, NnobsError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        _signal(run, pid, signal.SIGTERM)
        return (
            f"the control file could not be written ({reason[:1].lower() + reason[1:]}): the worker was told by SIGTERM"
        )


def _signal(run: RunDir, pid: int, signum: int) -> None:
    """Signal the live worker (it still holds worker.lock, so pid is the worker's, not a reused one)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        raise NnobsError(f"the worker of {run.name} (pid {pid}) is not ours to signal") from err


def _gone_within(run: RunDir, pid: int, timeout: float) -> bool:
    """Wait until worker pid no longer holds the run: gone, or already followed by a worker someone else started."""
    deadline = time.monotonic() + timeout
    while local_pid(run) in (pid, -1):  # -1: its lock not yet dropped as it dies, or a successor's pid not yet written
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class LocalLauncher:
    """A worker on this machine: a detached process, alive while it holds worker.lock."""

    kind = "local"

    def start(self, run: RunDir, by: str) -> int:
        return _start_local(run, by)

    def status(self, run: RunDir, history: RunHistory, now: float) -> RunStatus:
        return status_of(run, history, now, local_pid(run))

    def worker_pid(self, run: RunDir) -> int | None:
        return local_pid(run)

    def active_job(self, run: RunDir) -> JobRecord | None:
        return None  # no scheduler here: a local worker is alive or not

    def stop(self, run: RunDir, grace: float, by: str) -> Stopped:
        return _stop_local(run, grace, by)

    def kill(self, run: RunDir) -> None:
        pid = settled_pid(run)
        if pid is not None:
            _signal(run, pid, signal.SIGKILL)
            _gone_within(run, pid, KILL_WAIT_S)


LOCAL = LocalLauncher()
