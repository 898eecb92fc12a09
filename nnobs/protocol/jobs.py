"""Which launcher starts a run's worker, with what settings (launcher.json), and the job it has (job.json).

A launcher is how a worker is started, found alive, stopped and killed: `local` (a detached process on this
machine, alive while it holds worker.lock) or `slurm` (a Slurm job submitted through submitit, alive while the
scheduler runs it and its heartbeat beats). A run without launcher.json is local, as every run was before.
Only the standard library is imported here: every run's status reads this module.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import shlex
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nnobs.protocol.errors import MissingExtra, NnobsError
from nnobs.protocol.files import SETTINGS_MOST_BYTES, read_text, replace_atomically
from nnobs.protocol.jsontext import parse_json

KINDS = ("local", "slurm")
JOB_ID_ENV = "NNOBS_JOB_ID"  # in a job: the id job.json must name for its worker to write anything
LAUNCHER_ENV = "NNOBS_LAUNCHER"  # "slurm" in a job: SIGTERM then means Slurm is ending it, not a request to stop
DEFAULT_TIME = "1:00:00"  # submitit would ask for 5 minutes; an hour, then a checkpoint and a requeue
DEFAULT_SIGNAL_DELAY_S = 90  # Slurm signals at most once a minute: 90 s leaves one full chance to checkpoint
# Slurm's time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]].
TIME_FORMATS = re.compile(
    r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?)"
    r"|(?P<h>\d+):(?P<hm>\d+):(?P<hs>\d+)|(?P<m>\d+)(?::(?P<ms>\d+))?"
)
SBATCH_OPTION = re.compile(r"--[a-z][a-z0-9-]*(=.+)?")
# What nnobs sets itself, or what would break how it watches its job: refused in --sbatch, with the way instead.
SBATCH_OWN = {
    "partition": "--partition",
    "time": "--time",
    "cpus-per-task": "--cpus",
    "gpus-per-node": "--gpus",
    "gpus": "--gpus",
    "nodes": "--nodes",
    "ntasks-per-node": "--tasks-per-node",
    "ntasks": "--nodes and --tasks-per-node",
    "job-name": "",
    "output": "",
    "error": "",
    "open-mode": "",
    "signal": "",
    "hold": "",
    "array": "",
    "wrap": "",
    "requeue": "",
    "no-requeue": "",
}


class LauncherError(NnobsError, ValueError):
    """Launcher settings that cannot be used: a kind, a time limit or an sbatch option refused."""


class LauncherMissing(MissingExtra):
    """A launcher this machine cannot load: the optional package it needs is not installed."""


def slurm_minutes(limit: str) -> int:
    """A Slurm time limit ("1:00:00", "90", "2-12") in whole minutes, rounded up; LauncherError for any other text."""
    match = TIME_FORMATS.fullmatch(limit.strip()) if isinstance(limit, str) else None
    if match is None:
        raise LauncherError(
            f"time limit {limit!r} refused: use minutes (90), minutes:seconds (5:30), "
            "hours:minutes:seconds (1:00:00) or days-hours[:minutes[:seconds]] (2-12, 1-00:30:00)"
        )
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    seconds = (
        g.get("d", 0) * 86400
        + (g.get("dh", 0) + g.get("h", 0)) * 3600
        + (g.get("dm", 0) + g.get("hm", 0) + g.get("m", 0)) * 60
        + g.get("ds", 0)
        + g.get("hs", 0)
        + g.get("ms", 0)
    )
    if seconds <= 0:
        raise LauncherError(f"time limit {limit!r} refused: a job needs at least a minute")
    return math.ceil(seconds / 60)


def sbatch_options(text: str) -> tuple[str, ...]:
    """--sbatch's text ("--qos=high --exclusive") as options, each checked; LauncherError naming what is refused."""
    try:
        options = tuple(shlex.split(text))
    except ValueError as err:
        raise LauncherError(f"--sbatch {text!r} refused: {err}") from err
    for option in options:
        if not SBATCH_OPTION.fullmatch(option):
            raise LauncherError(
                f"sbatch option {option!r} refused: write each in its long form, --name=value or --flag "
                '(e.g. --sbatch="--qos=high --constraint=a100")'
            )
        name = option[2:].split("=", 1)[0]
        if name in SBATCH_OWN:
            instead = f": use nnobs's {SBATCH_OWN[name]} instead" if SBATCH_OWN[name] else ": nnobs sets it itself"
            raise LauncherError(f"sbatch option --{name} refused{instead}")
    return options


@dataclass(frozen=True)
class LauncherSettings:
    """launcher.json: the launcher a run's worker starts under, and what it asks the scheduler for."""

    kind: str = "local"  # local or slurm
    partition: str | None = None  # Slurm's partition; None: the cluster's default
    time: str | None = None  # the job's time limit in Slurm's words; None: DEFAULT_TIME
    cpus: int | None = None  # cpus per task
    gpus: int | None = None  # gpus per node
    nodes: int | None = None  # nodes of the job, each running one torchrun agent (a script's torchrun command)
    tasks_per_node: int | None = None  # torchrun agents per node: more than one on one node stands for as many nodes
    sbatch: tuple[str, ...] = field(default=())  # more sbatch options, each --name=value or --flag
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S  # the preemption signal comes this long before the kill
    requeue: bool = True  # requeue the job after a preemption or its time limit, resuming from its checkpoint

    def check(self) -> LauncherSettings:
        """These settings, or LauncherError for the first one that cannot be used."""
        if self.kind not in KINDS:
            raise LauncherError(f"launcher {self.kind!r} refused: use one of {', '.join(KINDS)}")
        slurm_only = [
            name
            for name in ("partition", "time", "cpus", "gpus", "nodes", "tasks_per_node")
            if getattr(self, name) is not None
        ]
        if self.kind == "local" and (slurm_only or self.sbatch):
            flags = ", ".join(f"--{name.replace('_', '-')}" for name in slurm_only + ["sbatch"] * bool(self.sbatch))
            raise LauncherError(f"{flags} are for runs on Slurm: add --on slurm, or leave them out")
        if self.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.partition):
            raise LauncherError(
                f"partition {self.partition!r} refused: a partition is named by letters, digits, '_', '.', '-'"
            )
        if self.time is not None:
            slurm_minutes(self.time)
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4096):
                raise LauncherError(f"--{name} must be a whole number from 0 to 4096, not {value!r}")
        for name in ("nodes", "tasks_per_node"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096):
                raise LauncherError(f"--{name.replace('_', '-')} must be a whole number from 1 to 4096, not {value!r}")
        if self.cpus == 0:
            raise LauncherError("--cpus must be at least 1")
        for option in self.sbatch:
            sbatch_options(shlex.quote(option))
        if not isinstance(self.signal_delay_s, int) or not 10 <= self.signal_delay_s <= 3600:
            raise LauncherError(f"signal_delay_s must be whole seconds from 10 to 3600, not {self.signal_delay_s!r}")
        return self

    @property
    def tasks(self) -> int:
        """The job's tasks: one torchrun agent each."""
        return (self.nodes or 1) * (self.tasks_per_node or 1)

    @property
    def minutes(self) -> int:
        return slurm_minutes(self.time or DEFAULT_TIME)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "sbatch": list(self.sbatch)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LauncherSettings:
        """Settings as written by to_json; LauncherError for a file of any other shape (it may be edited by hand)."""
        try:
            raw = parse_json(text)
        except ValueError as err:
            raise LauncherError(f"launcher.json is not JSON ({err})") from err
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known:
            raise LauncherError(f"launcher.json holds other keys than {', '.join(sorted(known))}")
        if not isinstance(raw.get("sbatch", []), list):
            raise LauncherError("launcher.json: sbatch must be a list of options")
        return cls(**{**raw, "sbatch": tuple(raw.get("sbatch", []))}).check()


def read_launcher(path: Path) -> LauncherSettings:
    """The settings in the launcher.json at path; the local launcher's when there is none."""
    try:
        text = read_text(path, SETTINGS_MOST_BYTES)
    except FileNotFoundError:
        return LauncherSettings()
    except OSError as err:
        raise LauncherError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        return LauncherSettings.from_json(text)
    except LauncherError as err:
        raise LauncherError(f"{path}: {err}; fix it, or write it anew with `nnobs start RUN --on ...`") from err


def record_launcher(path: Path, settings: LauncherSettings) -> None:
    """Write launcher.json, after checking the settings; a local run with no settings keeps no file."""
    settings.check()
    if settings == LauncherSettings():
        path.unlink(missing_ok=True)
        return
    replace_atomically(path, lambda f: f.write(settings.to_json().encode()))


@dataclass(frozen=True)
class JobRecord:
    """job.json: the one Slurm job a run has, who submitted it, and whether nnobs itself cancelled it."""

    job_id: str  # "17", or "17_3" for a job array's task
    submitted_at: float
    by: str = ""  # who asked: "cli", "page", "sweep"
    host: str = ""
    user: str = ""
    folder: str = ""  # submitit's folder: the job's script and its log
    cancelled_by: str = ""  # set when nnobs cancelled it (a stop of a queued job): the run reads stopped, not crashed

    @classmethod
    def new(cls, job_id: str, by: str, folder: Path) -> JobRecord:
        return cls(job_id, time.time(), by, socket.gethostname(), getpass.getuser(), str(folder))


def read_job(path: Path) -> JobRecord | None:
    """The job job.json names, or None when there is none (or a file no one could have written whole)."""
    try:
        raw = parse_json(read_text(path, SETTINGS_MOST_BYTES))
        return JobRecord(**{k: raw[k] for k in raw if k in JobRecord.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError):
        return None


def record_job(path: Path, job: JobRecord) -> None:
    replace_atomically(path, lambda f: f.write(json.dumps(asdict(job), indent=1).encode()))


def own_job_id() -> str | None:
    """The id of the job this process runs in, as job.json names it ("17", or "17_3" for an array's task)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def recorded_for_another_job(run: Any) -> str:
    """Why this process must not serve the run ("" when it may): the run's job.json names another job than ours."""
    ours = os.environ.get(JOB_ID_ENV)
    if not ours:
        return ""
    job = read_job(run.job_file)
    if job is None:
        return f"{run.job_file} names no job, and this is job {ours}"
    if job.job_id != ours:
        return f"{run.name} is recorded for job {job.job_id}, and this is job {ours}"
    return ""
