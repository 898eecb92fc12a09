"""A run's worker started, stopped and restarted by the run's launcher, which also says whether it lives; new runs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import replace
from pathlib import Path

from nnobs.launching.base import STOP_GRACE_S, Launcher, Stopped
from nnobs.launching.local import LOCAL, settled_pid
from nnobs.launching.status import RunStatus, status_of
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import create_once, replace_atomically
from nnobs.protocol.jobs import (
    JobRecord,
    LauncherError,
    LauncherMissing,
    LauncherSettings,
    read_launcher,
    record_launcher,
)
from nnobs.protocol.rundir import RunDir, local_pid, script_description, unsafe_files
from nnobs.reading.history import RunHistory
from nnobs.training.builtin.tasks import RunConfig


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


def worker_pid(run: RunDir) -> int | None:
    """The live worker's pid; -1 when it is alive but its pid is not to be had here (not yet written, or a Slurm job's
    on another machine); None when no worker is alive."""
    return launcher_of(run).worker_pid(run)


def launcher_settings(run: RunDir) -> LauncherSettings:
    """The run's launcher.json (the local launcher's settings when it has none)."""
    return read_launcher(run.launcher_file)


def launcher_of(run: RunDir) -> Launcher:
    """The launcher that starts, watches and stops the run's worker: the one its launcher.json names."""
    return launcher_for(launcher_settings(run))


def launcher_for(settings: LauncherSettings) -> Launcher:
    """The launcher these settings name; LauncherMissing, saying which extra to install, when it cannot be loaded."""
    if settings.kind == "slurm":
        try:
            from nnobs.launching.slurm import SlurmLauncher  # submitit is imported only where a run is on Slurm
        except ImportError as err:
            raise LauncherMissing(
                f"runs on Slurm need submitit, which is not installed ({err}): pip install 'nnobs[slurm]'"
            ) from err
        return SlurmLauncher(settings)
    return LOCAL


def set_launcher(run: RunDir, settings: LauncherSettings) -> None:
    """Record the launcher the run starts under from now on; refused while a worker of another launcher serves it."""
    settings.check()
    launcher_for(settings)  # loadable, before anything is recorded
    if settings == launcher_settings(run):
        return
    # A queued job may take new Slurm settings; a local worker and a Slurm job never serve the run together.
    if worker_pid(run) is not None or (settings.kind != "slurm" and active_job(run) is not None):
        raise NnobsError(
            f"{run.name} has a live worker under its {launcher_settings(run).kind} launcher: stop it first "
            f"(nnobs stop {run.name}), then start it --on {settings.kind}"
        )
    run.path.mkdir(parents=True, exist_ok=True)
    record_launcher(run.launcher_file, settings)


def active_job(run: RunDir) -> JobRecord | None:
    """The run's Slurm job while it is queued or running; None for a local run, or one with no such job."""
    return launcher_of(run).active_job(run)


def start_worker(run: RunDir, by: str = "") -> int | JobRecord:
    """Start the run's worker by its launcher unless one is alive: the live worker's pid, or on Slurm its one job.

    by says who asked ("page", "cli"); the worker's started record carries it. A run whose directory holds a link
    or other non-file where a run file should be is not started: said before anything is written or launched.
    """
    if unsafe := unsafe_files(run):
        raise NnobsError(f"{run.name} is not started: {'; '.join(unsafe)}, which nnobs never follows; move it away")
    if not run.config.exists() and not run.launch.exists() and run.exists():
        pid = settled_pid(run)
        if pid is not None:
            return pid
        raise NnobsError(started_outside(run))
    if not run.launch.exists():
        create_run(run)  # a new name makes a run of the built-in worker
    return launcher_of(run).start(run, by)


def started_outside(run: RunDir) -> str:
    """Why nnobs cannot start a script's run, and where it must be started instead."""
    description = script_description(run)
    if description and description.get("kind") == "imported":
        return (
            f"{run.name} was imported from {description.get('from')}: a record to read, with nothing to start or steer"
        )
    where = ""
    if description and isinstance(description.get("argv"), list) and isinstance(description.get("cwd"), str):
        where = f" (`{shlex.join(map(str, description['argv']))}` in {description['cwd']})"
    return (
        f"{run.name} is served by a script started outside nnobs{where}: start it again there, or once with "
        f"`nnobs run {run.name} -- COMMAND`, which records the command so that Start and Restart can"
    )


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


def record_launch(run: RunDir, command: list[str], cwd: str, wandb: bool = False) -> list[str]:
    """Write launch.json: how Start and Restart start the run's script (wandb: with nnobs's W&B calls as its `import
    wandb`). The command's program is looked up on PATH now, so that a page with another PATH starts the same one.
    Only the CLI calls this, never the page."""
    if not command:
        raise NnobsError("nnobs run needs the command to start after --, e.g. nnobs run NAME -- python train.py")
    program = shutil.which(command[0], path=os.environ.get("PATH")) if os.sep not in command[0] else command[0]
    if program is None or not os.access(os.path.join(cwd, program), os.X_OK):
        raise NnobsError(f"no such program: {command[0]!r} (not on PATH, or not executable)")
    if run.config.exists():
        raise NnobsError(
            f"{run.name} is a run of the built-in worker (it has config.json): give the script's run another name"
        )
    recorded = [os.path.abspath(os.path.join(cwd, program)), *command[1:]]
    run.path.mkdir(parents=True, exist_ok=True)
    launch = {"command": recorded, "cwd": os.path.abspath(cwd), **({"wandb": True} if wandb else {})}
    content = json.dumps(launch, indent=1).encode()
    replace_atomically(run.launch, lambda f: f.write(content))
    return recorded


def stop_worker(run: RunDir, grace: float = STOP_GRACE_S, by: str = "stop") -> Stopped:
    """Stop the run's worker by its launcher: a shutdown, then a kill after grace seconds (on Slurm, a queued job
    is cancelled)."""
    return launcher_of(run).stop(run, grace, by)


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


def run_status(run: RunDir, history: RunHistory, now: float | None = None) -> RunStatus:
    """The run's state and latest values, with liveness from its launcher (the lock, or the scheduler)."""
    now = time.time() if now is None else now
    try:
        launcher = launcher_of(run)
    except LauncherMissing as err:  # a run recorded for a launcher this machine cannot load: its status says so
        status = status_of(run, history, now, None)
        return replace(status, launcher=launcher_settings(run).kind, error=str(err))
    except LauncherError as err:  # launcher.json unreadable, or not a file: the run's status says so all the same
        return replace(status_of(run, history, now, local_pid(run)), error=str(err))
    return launcher.status(run, history, now)
