"""A run directory: its files, whether its worker lives, starting and stopping it (by the run's launcher), its status."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from nnobs.bulk import pair
from nnobs.checkpoint import load_checkpoint
from nnobs.control import Command, forget_applied, send_command
from nnobs.errors import NnobsError, RunNameError, hold
from nnobs.files import FILE_MODE, create_once, replace_atomically
from nnobs.history import RunHistory, RunWatcher
from nnobs.launchers import JobRecord, Launcher, LauncherSettings, read_launcher, record_launcher
from nnobs.records import RecordReader
from nnobs.slot import read_slot
from nnobs.tasks import RunConfig

DEFAULT_RUN = "default"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0  # a worker that has not obeyed a shutdown by then (stuck, or stopped) is killed
KILL_WAIT_S = 10.0  # for the kernel to end a killed worker and drop its lock
STALL_AFTER_S = 10.0  # a live worker writes at least once a second: this much silence means it is stuck
COMMANDS_KEPT = 1000  # applied commands control.json keeps; older ones live on as answers in the run file
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
    status_file = property(lambda self: self.path / "worker.status")  # the live worker's last word when nothing can be written
    launcher_file = property(lambda self: self.path / "launcher.json")  # which launcher starts its worker; none: local
    job_file = property(lambda self: self.path / "job.json")  # a run on Slurm: the one job it has

    def exists(self) -> bool:
        """A run is a directory with a config, a script's description or launch command, or a run file."""
        return any(p.is_file() for p in (self.config, self.description, self.launch, self.run_file))


def create_run(run: RunDir, config: RunConfig | None = None) -> None:
    """Make the run directory and its config.json, unless they exist: an existing run keeps its config.

    A config that cannot be trained is refused before anything is written."""
    (config or RunConfig()).check()
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config.exists():
            create_once(run.config, (config or RunConfig()).to_json().encode())
    except OSError as err:
        raise NnobsError(f"cannot create run {run.name} in {run.path.parent}: {err}") from err


def take_worker_lock(run: RunDir) -> int | None:
    """An fd holding worker.lock exclusively, or None when a live worker holds it. The kernel drops it at exit."""
    fd = os.open(run.worker_lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
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


def worker_pid(run: RunDir) -> int | None:
    """The live worker's pid; -1 when it is alive but its pid is not to be had here (not yet written, or a Slurm job's
    on another machine); None when no worker is alive."""
    launcher = launcher_of(run)
    return launcher.worker_pid(run) if launcher.kind != "local" else _local_pid(run)


def _local_pid(run: RunDir) -> int | None:
    """The live local worker's pid, or None when no process holds worker.lock (pids and zombies cannot fool this)."""
    try:
        fd = os.open(run.worker_lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if not text.isdigit() or _process_gone(int(text)):
            return -1  # alive, but its pid not yet written over a dead predecessor's
        return int(text)
    else:
        return None
    finally:
        os.close(fd)  # closing drops our shared lock, if we got it


def _process_gone(pid: int) -> bool:
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


def queue_command(run: RunDir, cmd: str, value=None, by: str = "") -> Command:
    """Queue a command for the run's worker; every COMMANDS_KEPT commands, forget what it applied long ago.

    A run steered for days by a script would otherwise grow control.json without end, and with it
    the time every sender, the worker and every page spend reading it.
    """
    command = send_command(run.control_file, cmd, value, by=by)
    if command["seq"] % COMMANDS_KEPT == 0:
        try:
            ckpt = load_checkpoint(run.checkpoint)
        except NnobsError:
            ckpt = None  # an unreadable checkpoint says nothing of what was applied: keep everything
        if ckpt is not None:
            forget_applied(run.control_file, ckpt.control_id, ckpt.last_seq, keep=COMMANDS_KEPT)
    return command


def log_tail(run: RunDir, n_lines: int = 20) -> str:
    try:
        with open(run.worker_log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            return b"\n".join(f.read().splitlines()[-n_lines:]).decode(errors="replace")
    except FileNotFoundError:
        return ""


def launcher_settings(run: RunDir) -> LauncherSettings:
    """The run's launcher.json (the local launcher's settings when it has none)."""
    return read_launcher(run.launcher_file)


def launcher_of(run: RunDir) -> Launcher:
    """The launcher that starts, watches and stops the run's worker: the one its launcher.json names."""
    settings = launcher_settings(run)
    if settings.kind == "slurm":
        from nnobs.slurm import SlurmLauncher  # submitit is imported only where a run is on Slurm

        return SlurmLauncher(settings)
    return LOCAL


def set_launcher(run: RunDir, settings: LauncherSettings) -> None:
    """Record the launcher the run starts under from now on; refused while a worker of another launcher serves it."""
    settings.check()
    if settings == launcher_settings(run):
        return
    if worker_pid(run) is not None or (settings.kind != "slurm" and _has_active_job(run)):
        raise NnobsError(f"{run.name} has a live worker under its {launcher_settings(run).kind} launcher: stop it first "
                         f"(nnobs stop {run.name}), then start it --on {settings.kind}")
    run.path.mkdir(parents=True, exist_ok=True)
    record_launcher(run.launcher_file, settings)


def _has_active_job(run: RunDir) -> bool:
    return active_job(run) is not None


def active_job(run: RunDir) -> JobRecord | None:
    """The run's Slurm job while it is queued or running; None for a local run, or one with no such job."""
    launcher = launcher_of(run)
    return launcher.active_job(run) if launcher.kind == "slurm" else None


def start_lock(run: RunDir):
    """The lock that serializes starts of the run's worker (held while one is started or submitted)."""
    return hold(FileLock(run.start_lock, timeout=START_TIMEOUT_S), f"starting {run.name}")


def start_worker(run: RunDir, by: str = "") -> int | JobRecord:
    """Start the run's worker by its launcher unless one is alive: the live worker's pid, or on Slurm its one job.

    by says who asked ("page", "cli"); the worker's started record carries it.
    """
    if not run.config.exists() and not run.launch.exists() and run.exists():
        pid = _settled_pid(run)
        if pid is not None:
            return pid
        raise NnobsError(started_outside(run))
    if not run.launch.exists():
        create_run(run)  # a new name makes a run of the built-in worker
    return launcher_of(run).start(run, by)


def _start_local(run: RunDir, by: str = "") -> int:
    """Start the run's worker detached unless one is alive; return the live worker's pid.

    Starts are serialized by start.lock, and a worker that finds worker.lock held exits at once,
    so any number of simultaneous starts leave exactly one worker. Returns once the new worker's
    "started" record is in the run file, so a status read right after shows the new generation.
    """
    with start_lock(run):
        pid = _settled_pid(run)
        if pid is not None:
            return pid
        announcements = RecordReader(run.run_file)
        announcements.offset = run.run_file.stat().st_size if run.run_file.exists() else 0
        launched = subprocess.run(
            [sys.executable, "-m", "nnobs.launch", str(run.path), by],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_parent(), os.environ.get("PYTHONPATH")]))},
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if launched.returncode != 0:
            raise NnobsError(f"could not launch the worker: {launched.stderr.strip()}")
        pid = int(launched.stdout.strip())
        deadline = time.monotonic() + START_TIMEOUT_S
        said: list[dict] = []  # what the new worker wrote: its start, or why it could not
        # Its started record, or, when the disk takes no record, its status slot saying why.
        while not any(_is_start_of(record, pid) for record in said) and not _is_start_of(_slot_start(run), pid):
            if _process_gone(pid) or time.monotonic() > deadline:
                said += announcements.read_new()  # its last words may have landed as it exited
                raise NnobsError(_why_not_started(run, said))
            time.sleep(0.02)
            said += announcements.read_new()
        return pid


def started_outside(run: RunDir) -> str:
    """Why nnobs cannot start a script's run, and where it must be started instead."""
    description = script_description(run)
    if description and description.get("kind") == "imported":
        return f"{run.name} was imported from {description.get('from')}: a record to read, with nothing to start or steer"
    where = ""
    if description and isinstance(description.get("argv"), list) and isinstance(description.get("cwd"), str):
        where = f" (`{shlex.join(map(str, description['argv']))}` in {description['cwd']})"
    return (f"{run.name} is served by a script started outside nnobs{where}: start it again there, or once with "
            f"`nnobs run {run.name} -- COMMAND`, which records the command so that Start and Restart can")


def script_description(run: RunDir) -> dict | None:
    """What run.json says of what serves the run (a script: argv, cwd, pid; an import: where from), or None."""
    try:
        description = json.loads(run.description.read_text())
    except (OSError, ValueError):
        return None
    return description if isinstance(description, dict) else None


def is_imported(run: RunDir) -> bool:
    """True for a run file imported by `nnobs import`: read-only, nothing serves it."""
    description = script_description(run)
    return bool(description) and description.get("kind") == "imported" and not run.launch.exists()


def import_run(run: RunDir, source: Path) -> int:
    """Make a read-only run of a run file written elsewhere (the notebook's t1.jsons, say); its records' count."""
    if run.exists():
        raise NnobsError(f"{run.name} exists already in {run.path.parent}: import under another name")
    try:
        content = Path(source).read_bytes()
    except OSError as err:
        raise NnobsError(f"cannot read {source}: {err.strerror or err}") from err
    history = RunHistory()
    history.add_lines(content if content.endswith(b"\n") else content + b"\n")
    if not history.n_records:
        raise NnobsError(f"{source} holds no records (one JSON object a line, as a run file does)")
    run.path.mkdir(parents=True, exist_ok=True)
    description = json.dumps({"kind": "imported", "from": str(Path(source).resolve())}, indent=1).encode()
    replace_atomically(run.description, lambda f: f.write(description))
    replace_atomically(run.run_file, lambda f: f.write(content))
    return history.n_records


def record_launch(run: RunDir, command: list[str], cwd: str) -> list[str]:
    """Write launch.json: how Start and Restart start the run's script. The command's program is looked up on
    PATH now, so that a page with another PATH starts the same one. Only the CLI calls this, never the page."""
    if not command:
        raise NnobsError("nnobs run needs the command to start after --, e.g. nnobs run NAME -- python train.py")
    program = shutil.which(command[0], path=os.environ.get("PATH")) if os.sep not in command[0] else command[0]
    if program is None or not os.access(os.path.join(cwd, program), os.X_OK):
        raise NnobsError(f"no such program: {command[0]!r} (not on PATH, or not executable)")
    if run.config.exists():
        raise NnobsError(f"{run.name} is a run of the built-in worker (it has config.json): give the script's run another name")
    recorded = [os.path.abspath(os.path.join(cwd, program)), *command[1:]]
    run.path.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"command": recorded, "cwd": os.path.abspath(cwd)}, indent=1).encode()
    replace_atomically(run.launch, lambda f: f.write(content))
    return recorded


def _why_not_started(run: RunDir, said: list[dict]) -> str:
    """The worker's own error record when it wrote one, else the end of its log."""
    errors = [r.get("error") for r in said if (event := pair(r.get("event"))) and event[1] == "error"]
    if errors:
        return f"the worker did not start: {errors[-1]}. Details in {run.worker_log}"
    return f"the worker did not start; worker.log ends:\n{log_tail(run)}"


def _settled_pid(run: RunDir, timeout: float = START_TIMEOUT_S) -> int | None:
    """The live worker's pid once it has written it (a moment after it took the lock); None when none lives."""
    deadline = time.monotonic() + timeout
    while (pid := _local_pid(run)) == -1 and time.monotonic() < deadline:
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
    return {"event": [0, "started"], "pid": slot.get("pid")}


def _is_start_of(record: dict, pid: int) -> bool:
    """True for the started record of the process launched as pid, or of one it started (a script run through a
    shell wrapper): the launcher gives it a session of its own, numbered by its pid."""
    event = pair(record.get("event"))
    if not event or event[1] != "started" or not isinstance(record.get("pid"), int):
        return False
    if record["pid"] == pid:
        return True
    try:
        return os.getsid(record["pid"]) == pid
    except OSError:
        return False


def package_parent() -> str:
    """The directory holding the nnobs package, so the worker imports this very copy of it."""
    return str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Stopped:
    """How a stop went: whether no worker lives now, and what it had to do beyond a shutdown command."""

    gone: bool
    how: str = ""  # e.g. "the control file could not be written (no space left on device): told by SIGTERM"

    def __bool__(self) -> bool:
        return self.gone


def stop_worker(run: RunDir, grace: float = STOP_GRACE_S, by: str = "stop") -> Stopped:
    """Stop the run's worker by its launcher: a shutdown, then a kill after grace seconds (on Slurm, a queued job
    is cancelled)."""
    return launcher_of(run).stop(run, grace, by)


def _stop_local(run: RunDir, grace: float = STOP_GRACE_S, by: str = "stop") -> Stopped:
    """Ask the worker to shut down and wait until it has exited; kill it if it has not after grace seconds.

    When the control file cannot be written (a full disk, a read-only filesystem), the worker is told
    by SIGTERM, which it handles as a shutdown. A stuck worker cannot obey, so it is ended the way a
    crash would end it: without a shutdown record (its run then reads crashed), resuming from its last
    checkpoint.
    """
    pid = _settled_pid(run)
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
        return f"the control file could not be written ({reason[:1].lower() + reason[1:]}): the worker was told by SIGTERM"


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
    while _local_pid(run) in (pid, -1):  # -1: its lock not yet dropped as it dies, or a successor's pid not yet written
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def restart_worker(run: RunDir, by: str = "", said: list[str] | None = None) -> int | JobRecord:
    """Stop the live worker, if any, and start the next generation from the last checkpoint.

    by says who asked ("page", "cli"): the shutdown is sent as "<by> restart", the start as by. A script
    started outside nnobs is left running: nnobs could not start it again. What the stop had to do beyond
    a shutdown command is appended to said.
    """
    if not run.config.exists() and not run.launch.exists() and run.exists():
        raise NnobsError(started_outside(run))
    stopped = stop_worker(run, by=f"{by} restart".strip())
    if not stopped:
        raise NnobsError(f"the worker of {run.name} is still alive after a shutdown and a kill; see {run.worker_log}")
    if stopped.how and said is not None:
        said.append(stopped.how)
    return start_worker(run, by=by)


@dataclass
class RunStatus:
    """What `status` reports: the run's state and latest values."""

    run: str
    state: str  # training, idle, stalled (alive but silent), stopped, crashed, imported (read-only) or absent
    batch: int
    target: int | None
    eta: float | None
    report_every: int | None
    pace: float | None  # at most this many batches a second; 0 or None: flat out
    loss: float | None
    best_loss: float | None  # the lowest loss of the run's current line of training
    generation: int | None
    pid: int | None
    heartbeat_age_s: float | None
    diverged: bool
    not_learning: bool  # training, but the loss stopped moving far above its best
    free_bytes: int | None  # free space on the run's filesystem, when the worker paused for it (low disk)
    write_error: str  # why the live worker cannot write, e.g. "cannot write run.jsonl: no space left on device"
    error: str  # the last error event's message, if the last generation ended in one
    skipped_lines: int  # lines of the run file that were not records (torn by a crash, or garbage)
    launcher: str = "local"  # local or slurm
    job_id: str | None = None  # on Slurm: the run's job
    job_state: str | None = None  # on Slurm: the scheduler's state of it (PENDING, RUNNING, CANCELLED...)
    reason: str = ""  # on Slurm: why the job waits (Slurm's reason), or why it ended

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """The state in the words the page's badge and the CLI both use: a diverged or stuck run says so."""
        if self.state in ("training", "idle") and self.diverged:
            return "diverged"
        if self.state == "training" and self.not_learning:
            return "not learning"
        return self.state


def run_status(run: RunDir, history: RunHistory, now: float | None = None) -> RunStatus:
    """The run's state and latest values, with liveness from its launcher (the lock, or the scheduler)."""
    now = time.time() if now is None else now
    launcher = launcher_of(run)
    if launcher.kind != "local":
        return launcher.status(run, history, now)
    return status_of(run, history, now, _local_pid(run))


def status_of(run: RunDir, history: RunHistory, now: float, pid: int | None) -> RunStatus:
    """Combine liveness (pid: None when no worker lives, -1 alive with no pid to give) with what the run file says,
    and what the worker's slot says when it cannot write."""
    last = history.last_lifecycle
    slot = read_slot(run.status_file)
    own_slot = pid is not None and pid > 0 and slot.get("pid") == pid
    last_t = max(history.last_t or 0.0, slot.get("t") or 0.0) if own_slot else history.last_t  # both beat
    age = None if not last_t else max(0.0, now - last_t)
    low_disk = slot.get("low_disk") if own_slot and isinstance(slot.get("low_disk"), dict) else None
    write_error = str(slot.get("write_error", "")) if own_slot else ""
    error = last.detail if last is not None and last.kind == "error" else ""
    if pid is not None and _silent_since_start(run, age, now):
        state = "stalled"
    elif write_error:
        state = "cannot write"
    elif low_disk:
        state = "low disk"
    elif pid is not None:
        # A diverged worker waits for a new eta: it is not training, whatever its target.
        at_rest = history.diverged or (history.target is not None and history.batch >= history.target)
        state = "idle" if at_rest else "training"
    elif not run.path.is_dir():
        state = "absent"
    elif is_imported(run):
        state = "imported"
    elif last is None or last.kind == "shutdown":
        state = "stopped"
    elif slot.get("ended") == "shutdown" and slot.get("gen") == history.gen:
        state = "stopped"  # shut down cleanly, but the disk took no shutdown record
        error = "shut down cleanly, but its shutdown record could not be written"
    else:
        state = "crashed"
        if slot.get("ended") == "error" and slot.get("gen") == history.gen and not error:
            error = str(slot.get("error", ""))
    return RunStatus(
        run=run.name,
        state=state,
        batch=history.batch,
        target=history.target,
        eta=history.eta,
        report_every=history.report_every,
        pace=history.pace,
        loss=history.loss,
        best_loss=history.best_loss,
        generation=history.gen,
        pid=pid if pid and pid > 0 else None,
        heartbeat_age_s=None if age is None else round(age, 3),
        diverged=history.diverged,
        not_learning=state == "training" and history.not_learning,
        free_bytes=low_disk.get("free") if low_disk else None,
        write_error=write_error,
        error=error,
        skipped_lines=history.skipped_lines,
    )


def _silent_since_start(run: RunDir, heartbeat_age: float | None, now: float) -> bool:
    """True when the live worker has written nothing for STALL_AFTER_S, and started longer ago than that.

    The worker writes its pid into worker.lock as it starts, so the file's mtime dates the start:
    the last generation's old heartbeat does not count against a worker that is still starting.
    """
    if heartbeat_age is None or heartbeat_age <= STALL_AFTER_S:
        return False
    try:
        return now - os.stat(run.worker_lock).st_mtime > STALL_AFTER_S
    except FileNotFoundError:
        return False


def read_history(run: RunDir) -> RunHistory:
    """The whole run file, folded: from its fold cache when one is there, in bounded chunks, the cache saved anew."""
    return RunWatcher(run.run_file).refresh()


def list_runs(root: str | os.PathLike | None = None) -> list[str]:
    """The names of the runs under the runs root, sorted."""
    try:
        return sorted(p.name for p in runs_root(root).iterdir() if RUN_NAME.fullmatch(p.name) and RunDir(p).exists())
    except FileNotFoundError:
        return []


class LocalLauncher:
    """A worker on this machine: a detached process, alive while it holds worker.lock."""

    kind = "local"

    def start(self, run: RunDir, by: str) -> int:
        return _start_local(run, by)

    def stop(self, run: RunDir, grace: float, by: str) -> Stopped:
        return _stop_local(run, grace, by)

    def kill(self, run: RunDir) -> None:
        pid = _settled_pid(run)
        if pid is not None:
            _signal(run, pid, signal.SIGKILL)
            _gone_within(run, pid, KILL_WAIT_S)


LOCAL = LocalLauncher()
