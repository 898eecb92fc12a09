"""Real Slurm for the tests: installed and started by .ci/slurm-up, skipped saying why only where that cannot be done,
and a job's state read from the scheduler itself (scontrol), since this cluster has no accounting for sacct to read.

Test modules take the fixtures by importing them: `from slurm_support import slurm, slurm_runs_root  # noqa: F401`.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, wait_for

SLURM_UP = REPO / ".ci/slurm-up"
INSTALL_TIMEOUT_S = 600.0  # apt-get on a slow mirror; the script itself waits at most ~90 s for the daemons
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "TIMEOUT"})
_FIELD = re.compile(r"(\w+)=(\S*)")


def _answers() -> bool:
    """True when slurmctld answers and a node takes jobs (what .ci/slurm-up leaves behind)."""
    if shutil.which("sinfo") is None:
        return False
    done = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(s in ("idle", "mixed", "allocated") for s in done.stdout.split())


@functools.cache
def why_no_slurm() -> str | None:
    """None when Slurm runs here (starting it with .ci/slurm-up if need be); else why it cannot, for the skip."""
    if _answers():
        return None
    if os.geteuid() != 0:
        return "Slurm does not answer sinfo, and .ci/slurm-up must run as root to install and start it"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "Slurm does not answer sinfo, and this machine has neither Slurm nor apt-get to install it with"
    done = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    if done.returncode != 0:
        return f".ci/slurm-up could not start Slurm (exit {done.returncode}): {done.stderr.strip()[-500:]}"
    return None


@dataclass(frozen=True)
class Job:
    """A job as slurmctld tells it: kept for MinJobAge (an hour here) after it ends."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETING, COMPLETED, CANCELLED, FAILED, TIMEOUT, PREEMPTED, ...
    reason: str  # why it waits (JobHeldUser, Resources, BeginTime) or "None"
    restarts: int  # times it was requeued
    work_dir: str
    std_out: str

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def _parse(line: str) -> Job:
    fields = dict(_FIELD.findall(line))
    task = fields.get("ArrayTaskId")
    job_id = f"{fields['ArrayJobId']}_{task}" if task and task != "N/A" else fields["JobId"]
    return Job(job_id=job_id, state=fields.get("JobState", ""), reason=fields.get("Reason", ""),
               restarts=int(fields.get("Restarts", "0")), work_dir=fields.get("WorkDir", ""),
               std_out=fields.get("StdOut", ""))


def _scontrol_jobs(*job_id: str) -> list[Job]:
    done = subprocess.run(["scontrol", "show", "job", "--oneliner", *job_id], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        if "Invalid job id" in done.stderr:
            return []
        raise RuntimeError(f"scontrol show job failed: {done.stderr.strip()}")
    return [_parse(line) for line in done.stdout.splitlines() if line.startswith("JobId=")]


def job(job_id: str | int) -> Job | None:
    """The job (or array task "12_3") as Slurm knows it now; None when it has no such job."""
    jobs = _scontrol_jobs(str(job_id))
    return next((j for j in jobs if j.job_id == str(job_id)), jobs[0] if jobs else None)


def wait_for_job(job_id: str | int, *states: str, timeout: float = 30.0) -> Job:
    """Wait until the job is in one of states (e.g. "RUNNING"; "ENDED" for any end) and return it."""
    wanted = set(states)
    if "ENDED" in wanted:
        wanted |= ENDED

    def reached() -> Job | None:
        now = job(job_id)
        return now if now is not None and now.state in wanted else None

    return wait_for(reached, timeout=timeout, what=f"Slurm job {job_id} to be {' or '.join(states)} (now {job(job_id)})")


def jobs_under(path: Path) -> list[Job]:
    """Every job Slurm still knows whose working directory or output lies under path."""
    root = str(Path(path).resolve())
    return [j for j in _scontrol_jobs() if any(p == root or p.startswith(root + "/") for p in (j.work_dir, j.std_out))]


def cancel_jobs_under(path: Path, timeout: float = 30.0) -> None:
    """scancel every job not yet ended under path, and wait until Slurm has ended them all."""
    live = [j for j in jobs_under(path) if not j.ended]
    if not live:
        return
    subprocess.run(["scancel", *{j.job_id.split("_")[0] for j in live}], check=True, timeout=30)
    for j in live:
        wait_for_job(j.job_id, "ENDED", timeout=timeout)


def release(job_id: str | int) -> None:
    """Let a held job (submitted with --hold) be scheduled."""
    subprocess.run(["scontrol", "release", str(job_id)], check=True, capture_output=True, timeout=30)


def send_signal(job_id: str | int, signal_name: str) -> None:
    """What Slurm sends before a time limit or preemption, sent now: to the job's steps (`scancel --signal`)."""
    subprocess.run(["scancel", f"--signal={signal_name}", str(job_id)], check=True, capture_output=True, timeout=30)


def cancel(job_id: str | int) -> None:
    """scancel the job, as a user or an administrator would from outside."""
    subprocess.run(["scancel", str(job_id)], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def slurm() -> None:
    """Slurm answering here; skips the test saying why where it cannot be installed and started."""
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def slurm_runs_root(slurm, runs_root: Path):
    """runs_root for runs on Slurm; at teardown every job under it is cancelled and waited out."""
    yield runs_root
    cancel_jobs_under(runs_root.parent)
