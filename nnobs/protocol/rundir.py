"""A run's directory: its name, the paths of its files, whether a worker holds it, and what it says of itself."""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from nnobs.protocol.errors import RunNameError, UnsafeFile
from nnobs.protocol.files import FILE_MODE, SETTINGS_MOST_BYTES, open_fd, open_file, read_text
from nnobs.protocol.jsontext import parse_json

DEFAULT_RUN = "default"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOG_TAIL_BYTES = 8192  # a crash's last lines: a traceback, not the whole log
LOCK_RETRY_S = 0.5  # how long a new worker retries worker.lock: a liveness check holds it for microseconds


def runs_root(explicit: str | os.PathLike | None = None) -> Path:
    """--runs if given, else $NNOBS_RUNS, else ./runs."""
    return Path(explicit or os.environ.get("NNOBS_RUNS") or "runs")


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise RunNameError(
            f"run name {name!r} refused: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class RunDir:
    """The paths of one run's directory."""

    path: Path

    @classmethod
    def named(cls, name: str, root: str | os.PathLike | None = None) -> RunDir:
        return cls(runs_root(root) / check_run_name(name))

    @property
    def name(self) -> str:
        return self.path.name

    run_file = property(lambda self: self.path / "run.jsonl")
    control_file = property(lambda self: self.path / "control.json")
    worker_lock = property(lambda self: self.path / "worker.lock")
    start_lock = property(lambda self: self.path / "start.lock")
    worker_log = property(lambda self: self.path / "worker.log")
    checkpoint = property(lambda self: self.path / "checkpoint.npz")
    config = property(lambda self: self.path / "config.json")  # a run of the built-in worker: what it trains
    description = property(lambda self: self.path / "run.json")  # a script's run: which script, where
    launch = property(lambda self: self.path / "launch.json")  # how nnobs starts it again (written by `nnobs run`)
    status_file = property(
        lambda self: self.path / "worker.status"
    )  # the live worker's last word when nothing can be written
    launcher_file = property(lambda self: self.path / "launcher.json")  # which launcher starts its worker; none: local
    job_file = property(lambda self: self.path / "job.json")  # a run on Slurm: the one job it has

    def exploit_file(self, donor: str, batch: int) -> Path:
        """Where the checkpoint of donor at batch lies that this run takes in place (population-based training)."""
        return self.path / "exploits" / f"{check_run_name(donor)}-{batch}.npz"

    def exists(self) -> bool:
        """A run is a directory with a config, a script's description or launch command, or a run file. A link in
        place of one counts (so that the run is listed and the link named wherever it is read), but is never followed."""
        return any(os.path.lexists(p) for p in (self.config, self.description, self.launch, self.run_file))


# Every file nnobs keeps in a run's directory (the kept checkpoints live in checkpoints/).
RUN_FILE_NAMES = (
    "run.jsonl", "control.json", "worker.lock", "start.lock", "worker.log", "checkpoint.npz", "config.json",
    "run.json", "launch.json", "worker.status", "launcher.json", "job.json", "fork.json", "run.fold", "run.curves",
    "start-failed.json",
)  # fmt: skip


def unsafe_files(run: RunDir) -> list[str]:
    """What lies where the run's directory or one of its files should be and is not one: each named, for status and
    the page to say, as nothing follows or reads it (a teammate's link to a secret, a pipe, a directory)."""
    try:
        if stat.S_ISLNK(os.lstat(run.path).st_mode):
            return [f"the run directory {run.path} is a symbolic link"]
    except OSError:
        return []
    found = []
    for name in RUN_FILE_NAMES:
        try:
            mode = os.lstat(run.path / name).st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            found.append(f"{name} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a regular file'}")
    return found


def take_worker_lock(run: RunDir) -> int | None:
    """An fd holding worker.lock exclusively, or None when a live worker holds it. The kernel drops it at exit."""
    fd = open_fd(run.worker_lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.01)


def local_pid(run: RunDir) -> int | None:
    """The live local worker's pid, or None when no process holds worker.lock (pids and zombies cannot fool this)."""
    try:
        fd = open_fd(run.worker_lock)
    except (FileNotFoundError, UnsafeFile):  # none, or a link no worker of ours holds (status names it)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if not text.isdigit() or process_gone(int(text)):
            return -1  # alive, but its pid not yet written over a dead predecessor's
        return int(text)
    else:
        return None
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it


def process_gone(pid: int) -> bool:
    """True when pid has exited (a zombie, exited but not yet reaped, counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    try:
        with open(f"/proc/{pid}/stat") as f:  # Linux tells zombies apart; elsewhere we take kill's word
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return os.path.isdir("/proc")  # with /proc, a missing entry means it just exited


def log_tail(run: RunDir, n_lines: int = 20) -> str:
    try:
        with open_file(run.worker_log) as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - LOG_TAIL_BYTES))
            return b"\n".join(f.read(LOG_TAIL_BYTES).splitlines()[-n_lines:]).decode(errors="replace")
    except FileNotFoundError:
        return ""
    except UnsafeFile as err:  # named in place of the lines, never followed
        return str(err)


def script_description(run: RunDir) -> dict | None:
    """What run.json says of what serves the run (a script: argv, cwd, pid; an import: where from), or None."""
    try:
        description = parse_json(read_text(run.description, SETTINGS_MOST_BYTES))
    except (OSError, ValueError):
        return None
    return description if isinstance(description, dict) else None


def is_imported(run: RunDir) -> bool:
    """True for a run file imported by `nnobs import`: read-only, nothing serves it."""
    description = script_description(run)
    return description is not None and description.get("kind") == "imported" and not os.path.lexists(run.launch)


def is_followed(run: RunDir) -> bool:
    """True for a run that shows a log written elsewhere (`nnobs follow`): its follower trains nothing, and cannot be
    steered."""
    description = script_description(run)
    return description is not None and description.get("kind") == "followed"


def list_runs(root: str | os.PathLike | None = None) -> list[str]:
    """The names of the runs under the runs root, sorted."""
    try:
        return sorted(p.name for p in runs_root(root).iterdir() if RUN_NAME.fullmatch(p.name) and RunDir(p).exists())
    except FileNotFoundError:
        return []
