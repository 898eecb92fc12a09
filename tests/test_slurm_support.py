"""The Slurm the tests use: .ci/slurm-up leaves a running one alone, a held job waits with its reason and runs once
released, and what is left under a directory is cancelled."""

from __future__ import annotations

import subprocess

from conftest import wait_for
from slurm_support import SLURM_UP, cancel_jobs_under, jobs_under, release, slurm, wait_for_job  # noqa: F401 (fixture)


def test_a_held_job_waits_then_runs_once_released_and_is_cancelled_with_its_directory(slurm, tmp_path):
    out = tmp_path / "job.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--hold", f"--chdir={tmp_path}", f"--output={out}",
         "--wrap", "echo running in $SLURM_JOB_ID; exec sleep 600"],
        capture_output=True, text=True, check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]

    held = wait_for_job(job_id, "PENDING")
    assert held.reason == "JobHeldUser"
    release(job_id)
    wait_for_job(job_id, "RUNNING")
    # Slurm says RUNNING before the batch script has run its first line: what it printed is awaited, not assumed.
    wait_for(lambda: out.exists() and f"running in {job_id}" in out.read_text(), what="the job's script to run")
    assert [j.job_id for j in jobs_under(tmp_path)] == [job_id]

    cancel_jobs_under(tmp_path)
    assert wait_for_job(job_id, "ENDED").state == "CANCELLED"


def test_slurm_up_does_nothing_when_slurm_answers(slurm):
    done = subprocess.run(["bash", str(SLURM_UP)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
