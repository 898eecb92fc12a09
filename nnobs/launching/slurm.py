"""The Slurm launcher: a run's worker as a Slurm job through submitit, watched by the scheduler's state and the heartbeat.

A job is submitted held, its id written to the run's job.json, then released: its worker, which checks that
job.json names its job before writing anything, can never start unrecorded. In the job, submitit runs a
SlurmWorker, which starts the run's usual worker command (the built-in worker, or the script `nnobs run`
recorded) as its child, in its own process group, so that Slurm's signals and its kill reach both. On the
preemption signal the worker checkpoints and says "preempted"; submitit then requeues the job, whose next
run resumes from the checkpoint as the next generation.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from nnobs.launching.base import Stopped, start_lock
from nnobs.launching.local import package_parent
from nnobs.launching.spawn import start_worker_process
from nnobs.launching.status import RunStatus, status_of
from nnobs.protocol import events
from nnobs.protocol.control import queue_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.jobs import (
    JOB_ID_ENV,
    LAUNCHER_ENV,
    JobRecord,
    LauncherSettings,
    own_job_id,
    read_job,
    read_launcher,
    record_job,
    recorded_for_another_job,
)
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.states import STALL_AFTER_S
from nnobs.reading.watcher import read_history

PREEMPT_SIGNAL = signal.SIGUSR2  # submitit's (SUBMITIT_PREEMPT_SIGNAL): asked for by --signal=USR2@delay
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"}
# Why a job that nnobs did not end is over, in words, after "job 17 ".
ENDINGS = {
    "CANCELLED": "was cancelled",
    "TIMEOUT": "reached its time limit",
    "FAILED": "failed",
    "NODE_FAIL": "lost its node",
    "OUT_OF_MEMORY": "ran out of memory",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not boot its node",
    "DEADLINE": "passed its deadline",
    "COMPLETED": "ended",
}
STATE_TTL_S = 0.5  # the page, the CLI's waits and the overview ask often: squeue answers once per job this often
SQUEUE_TIMEOUT_S = 10.0
STARTED_SKEW_S = 5.0  # clocks of login and compute nodes differ a little: a start this much before submission counts
RENDEZVOUS_PORT_BASE, RENDEZVOUS_PORTS = (
    29400,
    500,
)  # a job's rendezvous port, from its id: two jobs on a node seldom meet
MAX_REQUEUES = 1000  # submitit's count of time-limit requeues; the run's own requeue setting is what decides
POLL_S = 0.1


@dataclass(frozen=True)
class JobState:
    """What the scheduler says of a job: its state (PENDING, RUNNING, CANCELLED...), why, and where."""

    state: str
    reason: str = ""  # Slurm's reason for a pending job: Priority, Resources, JobHeldUser; "None" when running
    node: str = ""

    @property
    def queued(self) -> bool:
        return self.state in QUEUED

    @property
    def running(self) -> bool:
        return self.state in RUNNING

    @property
    def active(self) -> bool:
        return self.queued or self.running


_states: dict[str, tuple[float, JobState | None]] = {}  # job id -> (when asked, what squeue said)


def job_state(job_id: str, fresh: bool = False) -> JobState | None:
    """The scheduler's word on a job; None when it cannot be asked or no longer knows the job."""
    asked = _states.get(job_id)
    if asked is not None and not fresh and time.monotonic() - asked[0] < STATE_TTL_S:
        return asked[1]
    state = _squeue(job_id)
    _states[job_id] = (time.monotonic(), state)
    return state


def _squeue(job_id: str) -> JobState | None:
    """squeue's line for the job (it keeps ended jobs for the cluster's MinJobAge), else sacct's, else None."""
    for command in (
        ["squeue", "-h", "-r", "--states=all", "-j", job_id, "-o", "%T|%r|%N"],
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,Reason,NodeList"],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            continue
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode == 0 and lines:
            state, reason, node = (lines[0].split("|") + ["", ""])[:3]
            return JobState(state.split()[0], reason.strip(), node.strip())  # sacct: "CANCELLED by 0"
    return None


def _scontrol(*args: str) -> None:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    if done.returncode != 0:
        raise NnobsError(f"scontrol {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")


def cancel(job_id: str, signal_name: str | None = None) -> None:
    """scancel the job (or send it a signal); a job already gone is no error."""
    command = ["scancel", *([f"--signal={signal_name}"] if signal_name else []), job_id]
    subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    _states.pop(job_id, None)


class SlurmWorker(Checkpointable):
    """What submitit runs in the job: the run's worker command, as a child in our process group; checkpoint() is
    submitit's preemption hook: it has the worker checkpoint and exit, then says whether to requeue."""

    def __init__(self, run_path: str, by: str):
        self.run_path, self.by = run_path, by
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"run_path": self.run_path, "by": self.by}  # a live child is this job's alone

    def __setstate__(self, state: dict) -> None:
        SlurmWorker.__init__(self, state["run_path"], state["by"])

    def __call__(self) -> int:
        run = RunDir(Path(self.run_path))
        job_id = own_job_id() or ""
        os.environ[JOB_ID_ENV] = job_id
        if why := recorded_for_another_job(run):
            print(f"nnobs: {why}: this job exits without writing", flush=True)
            return 0
        env = {**os.environ, JOB_ID_ENV: job_id, LAUNCHER_ENV: "slurm", **torchrun_rendezvous(job_id)}
        # Not a session of its own, unlike a local worker: Slurm tracks the job's processes by process group, and its
        # signals and its kill must reach the worker.
        self._child = start_worker_process(run.path, self.by, env, own_session=False)
        code = self._child.wait()
        if code != 0:
            raise NnobsError(f"the worker of {run.name} exited with code {code}; see {run.worker_log}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission | None:  # type: ignore[override]  # None: no requeue, as submitit allows
        """On the preemption signal: the worker checkpoints and exits (it got the signal too; told again here in
        case it did not); then the job is requeued if the run says so."""
        settings = read_launcher(RunDir(Path(self.run_path)).launcher_file)
        if self._child is not None:
            try:
                os.kill(self._child.pid, PREEMPT_SIGNAL)
            except ProcessLookupError:
                pass
            _wait_exited(self._child.pid, max(5.0, settings.signal_delay_s - 10.0))
        if not settings.requeue or recorded_for_another_job(RunDir(Path(self.run_path))):
            return None  # submitit then ends the job without requeueing it
        return DelayedSubmission(SlurmWorker(self.run_path, "slurm requeue"))


def torchrun_rendezvous(job_id: str) -> dict[str, str]:
    """For a job of several tasks, what each task's torchrun reads as its defaults (PET_<option>): as many nodes as
    tasks, this task's place among them, and the first node, where task 0's agent listens, as the rendezvous
    (torchrun's static one: several agents on one node are told apart by their rank). Nothing for one task."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if tasks <= 1:
        return {}
    first = _first_host(os.environ.get("SLURM_JOB_NODELIST", ""))
    number = re.match(r"\d*", job_id)
    port = RENDEZVOUS_PORT_BASE + int(number.group() or 0) % RENDEZVOUS_PORTS if number else RENDEZVOUS_PORT_BASE
    return {
        "PET_NNODES": str(tasks),
        "PET_NODE_RANK": os.environ.get("SLURM_PROCID", "0"),
        "PET_RDZV_BACKEND": "static",
        "PET_MASTER_ADDR": first,
        "PET_MASTER_PORT": str(port),
        "PET_RDZV_ID": job_id,
    }


def refuse_unless_torchrun(run: RunDir) -> None:
    """A job of several tasks runs the run's command once a task: only torchrun's agents make one job of them."""
    try:
        command = parse_json(run.launch.read_text()).get("command") or []
    except (OSError, ValueError, AttributeError):
        command = []
    program = [os.path.basename(str(part)) for part in command[:3]]
    if not program or not (program[0] == "torchrun" or "torch.distributed.run" in command[:3]):
        said = " ".join(map(str, command)) or "the built-in worker"
        raise NnobsError(
            f"--nodes and --tasks-per-node start the run's command once a task, for torchrun to join them: "
            f"start {run.name} as `nnobs run {run.name} --on slurm --nodes N -- torchrun --nproc_per_node=G "
            f"train.py` (its command is {said})"
        )


def _first_host(nodelist: str) -> str:
    """The first host of a Slurm node list (node[1-4],gpu7 -> node1), as scontrol expands it."""
    try:
        done = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S
        )
        hosts = done.stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        hosts = []
    if hosts:
        return hosts[0]
    if re.fullmatch(r"[A-Za-z0-9.-]+", nodelist):  # one node, nothing to expand
        return nodelist
    raise NnobsError(f"cannot tell the job's first node from {nodelist!r}: scontrol show hostnames did not answer")


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait until the child pid has exited, without reaping it: this runs in a signal handler, and the Popen's own
    wait, interrupted under its lock, reaps it afterwards."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        time.sleep(POLL_S)
    return False


class SlurmLauncher:
    """Starts a run's worker as a Slurm job, says whether it is queued or running, stops, cancels and requeues it."""

    kind = "slurm"

    def __init__(self, settings: LauncherSettings):
        self.settings = settings

    # -- starting -------------------------------------------------------------------------

    def start(self, run: RunDir, by: str) -> JobRecord:
        """The run's job: the one queued or running, else a new one. Under the run's start lock, so two starts at
        once give one job."""
        with start_lock(run):
            job = self.active_job(run)
            if job is not None:
                return job
            return self.submit([run], by)[0]

    def submit(self, runs: list[RunDir], by: str, parallel: int | None = None) -> list[JobRecord]:
        """Submit one job per run (several: one job array, at most parallel tasks at once), held until each run's
        job.json names its job."""
        if self.settings.tasks > 1:
            for run in runs:
                refuse_unless_torchrun(run)
        folder = (
            runs[0].path.parent / ".slurm"
        )  # one folder for an array's script and logs; no run name starts with "."
        executor = self._executor(
            folder, f"nnobs-{runs[0].name}" if len(runs) == 1 else f"nnobs-sweep-{len(runs)}", parallel
        )
        workers = [SlurmWorker(os.path.abspath(run.path), by) for run in runs]
        try:
            if len(runs) == 1:
                jobs = [executor.submit(workers[0])]
            else:
                with executor.batch():
                    jobs = [executor.submit(worker) for worker in workers]
        except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as err:
            raise NnobsError(f"sbatch refused the job: {_said(err)}") from err
        records = [JobRecord.new(job.job_id, by, folder) for job in jobs]
        for run, record in zip(runs, records):
            record_job(run.job_file, record)
        try:
            for base in dict.fromkeys(job.job_id.split("_")[0] for job in jobs):
                _scontrol("release", base)
        except NnobsError:
            for base in dict.fromkeys(job.job_id.split("_")[0] for job in jobs):
                cancel(base)
            raise
        return records

    def _executor(self, folder: Path, name: str, parallel: int | None) -> submitit.SlurmExecutor:
        try:
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
        except RuntimeError as err:  # no srun here
            raise NnobsError(
                "Slurm's srun is not on this machine's PATH: runs on Slurm are started from a machine of "
                "the cluster (its login node)"
            ) from err
        settings = self.settings
        extra: dict[str, str | bool] = {"hold": True}  # released once job.json names the job
        if settings.requeue:
            extra["requeue"] = True
        for option in settings.sbatch:
            key, _, value = option[2:].partition("=")
            extra[key] = value if value else True
        parameters = dict(
            job_name=name,
            time=settings.minutes,
            signal_delay_s=settings.signal_delay_s,
            stderr_to_stdout=True,
            setup=[f"export PYTHONPATH={shlex.quote(package_parent())}${{PYTHONPATH:+:$PYTHONPATH}}"],
            additional_parameters=extra,
        )
        optional = {
            "partition": settings.partition,
            "cpus_per_task": settings.cpus,
            "gpus_per_node": settings.gpus,
            "nodes": settings.nodes,
            "ntasks_per_node": settings.tasks_per_node,
            "array_parallelism": parallel,
        }
        parameters.update({k: v for k, v in optional.items() if v is not None})
        executor.update_parameters(**parameters)
        return executor

    def active_job(self, run: RunDir) -> JobRecord | None:
        """The run's job when it is queued or running; None when it has none, or it ended."""
        job = read_job(run.job_file)
        if job is None:
            return None
        state = job_state(job.job_id, fresh=True)
        return job if state is not None and state.active else None

    # -- watching -------------------------------------------------------------------------

    def worker_pid(self, run: RunDir) -> int | None:
        """-1 while the run's job runs (its worker's pid is another machine's), None otherwise."""
        job = read_job(run.job_file)
        state = None if job is None else job_state(job.job_id)
        return -1 if state is not None and state.running else None

    def status(self, run: RunDir, history, now: float) -> RunStatus:
        """The run's state from the scheduler and the heartbeat: queued while its job waits (or its worker has not
        yet started), then the usual states; crashed, with the scheduler's reason, when the job ended without a
        shutdown."""
        job = read_job(run.job_file)
        state = None if job is None else job_state(job.job_id)
        job_id, job_state_now = (job.job_id if job else None), (state.state if state else None)
        phase = _worker_phase(history, job)
        started = phase == EventKind.STARTED
        if state is not None and (state.queued or (state.running and phase in ("", EventKind.PREEMPTED))):
            reason = state.reason if state.queued else f"starting on {state.node}"
            reason = {"JobHeldUser": "held while it is being submitted", "None": "waiting to be scheduled"}.get(
                reason, reason
            )
            status = status_of(run, history, now, pid=None)
            return replace(
                status,
                state="queued",
                launcher="slurm",
                job_id=job_id,
                job_state=job_state_now,
                reason=reason or state.state.lower(),
            )
        if state is None:
            # The scheduler cannot say (down, or it forgot the job): a heartbeat within the bound says alive.
            alive = started and history.last_t is not None and now - history.last_t <= STALL_AFTER_S
        else:
            alive = state.running and started
        status = replace(
            status_of(run, history, now, pid=-1 if alive else None),
            launcher="slurm",
            job_id=job_id,
            job_state=job_state_now,
        )
        if status.state == "crashed" and job is not None and state is not None and not state.active:
            if job.cancelled_by:
                return replace(status, state="stopped", error="", reason=f"job {job.job_id} was cancelled by nnobs")
            ending = f"job {job.job_id} {ENDINGS.get(state.state, state.state.lower())}"
            return replace(
                status, error=ending if not status.error or "SIGTERM" in status.error else status.error, reason=ending
            )
        if status.state == "stopped" and job is not None and job.cancelled_by:
            return replace(status, reason=f"job {job.job_id} was cancelled by nnobs")
        return status

    # -- stopping -------------------------------------------------------------------------

    def stop(self, run: RunDir, grace: float, by: str) -> Stopped:
        """Cancel a queued job; shut a running one down through the control file, and cancel it if it has not ended
        after grace seconds."""
        job = read_job(run.job_file)
        state = None if job is None else job_state(job.job_id, fresh=True)
        if job is None or state is None or not state.active:
            return Stopped(True)
        if state.queued or _worker_phase(read_history(run), job) != EventKind.STARTED:
            record_job(run.job_file, replace(job, cancelled_by=by or "stop"))
            cancel(job.job_id)
            return Stopped(_ended_within(job.job_id, grace), "the queued job was cancelled")
        try:
            queue_command(run, "shutdown", by=by)
            how = ""
        except (OSError, NnobsError) as err:
            how = f"the control file could not be written ({err}): the job was cancelled"
            cancel(job.job_id)
        if _ended_within(job.job_id, grace):
            return Stopped(True, how)
        self.kill(run)
        return Stopped(_ended_within(job.job_id, grace), f"{how}; " * bool(how) + f"cancelled after {grace:.0f} s")

    def kill(self, run: RunDir) -> None:
        """scancel the run's job: its worker ends without a shutdown record (crashed), resuming from its checkpoint."""
        job = read_job(run.job_file)
        if job is not None:
            cancel(job.job_id)


def _worker_phase(history, job: JobRecord | None) -> str:
    """The run file's newest start or end since the job was submitted: "started", "shutdown", "preempted", "error",
    or "" when its worker has written neither yet."""
    if job is None:
        return ""
    ends = (EventKind.STARTED, *events.ENDINGS)
    last = next((e for e in reversed(history.events) if e.kind in ends), None)
    return last.kind if last is not None and (last.t or 0) >= job.submitted_at - STARTED_SKEW_S else ""


def _ended_within(job_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (state := job_state(job_id, fresh=True)) is not None and state.active:
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _said(err: BaseException) -> str:
    text = getattr(err, "stderr", None) or getattr(err, "output", None) or str(err)
    return (text.decode(errors="replace") if isinstance(text, bytes) else str(text)).strip()[-500:]
