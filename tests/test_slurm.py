"""Runs on Slurm: real jobs on the real single-node cluster .ci/slurm-up starts, real workers, real files, the page.

One run is taken through its life on Slurm in order (queued, training, steered, cancelled from outside, restarted,
preempted and requeued, stopped), sharing its jobs between the tests to keep them inside the suite's time budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, FOREVER, events, python, run_together, wait_for
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.views.compare import curves_of_history
from nnobs.protocol.jobs import LauncherSettings, read_job, record_launcher
from nnobs.protocol.states import STALL_AFTER_S
from nnobs.protocol.rundir import RunDir, list_runs
from nnobs.launching.lifecycle import create_run, run_status
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig
from slurm_support import cancel, cancel_jobs_under, job, jobs_under, send_signal, slurm, slurm_runs_root, wait_for_job  # noqa: F401

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
START_S = 30.0  # a released job starts within a second or two; a loaded two-core machine may need more
REQUEUE_S = 60.0  # a requeued job waits cred_expire (10 s here) and a scheduling pass before it runs again


def nnobs(root, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], env=ENV,
                          capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"nnobs {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def status(root, name: str) -> dict:
    return json.loads(nnobs(root, "status", name, "--json").stdout)


def state_is(root, name: str, *states: str):
    def check():
        now = status(root, name)
        return now if now["state"] in states else None
    return check


@pytest.fixture(scope="module")
def life(slurm, tmp_path_factory):
    """A runs root shared by the run-on-Slurm tests, and a held job the run's first job is made to wait for (jobs
    share this node's CPUs, so none waits for room); every job under it is cancelled at the end."""
    root = tmp_path_factory.mktemp("slurm") / "runs"
    root.mkdir()
    before = subprocess.run(["sbatch", "--parsable", "--hold", f"--output={root}/before.out", "--wrap", "true"],
                            capture_output=True, text=True, check=True).stdout.strip()
    yield {"root": root, "before": before}
    cancel_jobs_under(root.parent)


def test_start_on_slurm_is_queued_then_trains(life):
    root = life["root"]
    # Queued (reason Dependency) until the job before it ends: the wait is the scheduler's, and ours to end.
    done = nnobs(root, "start", "life", "--on", "slurm", "--time", "10", "--cpus", "1",
                 f"--sbatch=--dependency=afterany:{life['before']}")
    assert "queued" in done.stdout, done.stdout
    queued = wait_for(state_is(root, "life", "queued"), what="the run to read queued")
    job_id = read_job(RunDir(root / "life").job_file).job_id
    assert queued["job_id"] == job_id and queued["launcher"] == "slurm"
    assert wait_for(lambda: status(root, "life")["reason"] == "Dependency", what="Slurm's reason: the job it waits for")
    assert "slurm job     " + job_id in nnobs(root, "status", "life").stdout
    cancel(life["before"])
    training = wait_for(state_is(root, "life", "training"), timeout=START_S, what="the run to train on Slurm")
    assert training["job_state"] == "RUNNING" and training["generation"] == 1
    assert events(RunDir(root / "life"), "started")[-1]["job"] == job_id


def test_second_start_gives_the_same_job(life):
    root = life["root"]
    first = read_job(RunDir(root / "life").job_file).job_id
    assert f"job {first} " in nnobs(root, "start", "life").stdout
    assert [j.job_id for j in jobs_under(root) if not j.ended] == [first]


def test_steering_from_the_cli_reaches_the_job(life):
    root = life["root"]
    done = nnobs(root, "set", "life", "--target", str(FOREVER), "--eta", "0.2")
    assert done.stdout.count("acknowledged") == 2, done.stdout
    assert "acknowledged" in nnobs(root, "tell-state", "life").stdout
    assert status(root, "life")["eta"] == 0.2


def test_scancel_from_outside_reads_crashed_and_restart_resumes(life):
    root, run = life["root"], RunDir(life["root"] / "life")
    job_id = read_job(run.job_file).job_id
    cancel(job_id)
    wait_for(lambda: (now := status(root, "life"))["state"] == "crashed" and now["error"] == f"job {job_id} was cancelled",
             # The bound, and a poll's own time on top: each poll is a CLI process that asks Slurm.
             timeout=STALL_AFTER_S + 5, what="crashed, with Slurm's reason, within the heartbeat bound")
    saved = load_checkpoint(run.checkpoint).batch
    done = nnobs(root, "restart", "life")
    assert f"resumes from the checkpoint at batch {saved:,}" in done.stdout, done.stdout
    assert read_job(run.job_file).job_id != job_id
    wait_for(state_is(root, "life", "training"), timeout=START_S, what="the restarted run to train")
    started = events(run, "started")[-1]
    assert started["resumed_from"] == saved and status(root, "life")["generation"] == 2


def test_preemption_signal_checkpoints_and_the_requeued_job_resumes(life):
    root, run = life["root"], RunDir(life["root"] / "life")
    job_id = read_job(run.job_file).job_id
    send_signal(job_id, "USR2")  # what Slurm sends signal_delay_s before a time limit or a preemption's kill
    wait_for(lambda: events(run, "preempted"), what="the worker to checkpoint and say preempted")
    preempted = events(run, "preempted")[-1]
    assert load_checkpoint(run.checkpoint).batch == preempted["event"][0]  # a clean checkpoint where it stopped
    wait_for(lambda: job(job_id).restarts >= 1, what="submitit to requeue the job")
    assert status(root, "life")["state"] == "queued"
    wait_for(lambda: len(events(run, "started")) == 3, timeout=REQUEUE_S, what="the requeued job to start again")
    started = events(run, "started")[-1]
    assert started["job"] == job_id and started["by"] == "slurm requeue"
    assert started["resumed_from"] == preempted["event"][0]
    assert wait_for(state_is(root, "life", "training"))["generation"] == 3


def test_stop_shuts_the_job_down_through_the_control_file(life):
    root, run = life["root"], RunDir(life["root"] / "life")
    job_id = read_job(run.job_file).job_id
    done = nnobs(root, "stop", "life")
    assert "stopped at batch" in done.stdout, done.stdout
    assert events(run, "shutdown")
    assert wait_for_job(job_id, "ENDED").state == "COMPLETED"
    assert status(root, "life")["state"] == "stopped"


def test_stop_cancels_a_queued_job(slurm_runs_root):
    root = slurm_runs_root
    # Starts only in a day: queued for all this test's life.
    nnobs(root, "start", "waits", "--on", "slurm", "--sbatch=--begin=now+1day")
    job_id = read_job(RunDir(root / "waits").job_file).job_id
    assert status(root, "waits")["state"] == "queued"
    assert "stopped" in nnobs(root, "stop", "waits").stdout
    assert wait_for_job(job_id, "ENDED").state == "CANCELLED"
    assert status(root, "waits")["state"] == "stopped"


def test_two_simultaneous_starts_give_one_job(slurm_runs_root):
    run = RunDir(slurm_runs_root / "once")
    create_run(run, RunConfig(target=1000))
    record_launcher(run.launcher_file, LauncherSettings(kind="slurm"))
    code = ("import sys; from pathlib import Path; from nnobs.protocol.rundir import RunDir; from nnobs.launching.lifecycle import start_worker\n"
            "print('ready', flush=True); sys.stdin.readline()\n"
            "print(start_worker(RunDir(Path(sys.argv[1]))).job_id)")
    outputs = run_together([python(code, str(run.path)) for _ in range(4)])
    assert len({out.strip() for out in outputs}) == 1
    assert [j.job_id for j in jobs_under(slurm_runs_root)] == [outputs[0].strip()]


def test_a_sweep_of_six_runs_trains_as_one_job_array(slurm_runs_root, monkeypatch):
    root = slurm_runs_root
    done = nnobs(root, "sweep", "sw", "--eta", "0.1,0.5,1", "--seed", "1,2", "--target", "2000", "--on", "slurm")
    names = [f"sw-eta{eta}-seed{seed}" for eta in ("0.1", "0.5", "1") for seed in (1, 2)]
    assert done.stdout.splitlines()[0] == f"6 runs: {', '.join(names)}"
    url = next(line for line in done.stdout.splitlines() if line.startswith("compare them: ")).split(": ", 1)[1]
    assert url.endswith("/compare?" + "&".join(f"runs={name}" for name in names))
    array = {read_job(RunDir(root / name).job_file).job_id.split("_")[0] for name in names}
    assert len(array) == 1  # one job array
    for name in names:
        wait_for(lambda name=name: run_status(RunDir(root / name), read_history(RunDir(root / name))).state == "idle",
                 timeout=60, what=f"{name} to reach its target on Slurm")
    # What the compare page draws for the URL's runs: each is a run it offers, with its curve to the target.
    assert set(names) <= set(list_runs(root))
    for name in names:
        curves = curves_of_history(read_history(RunDir(root / name)))
        assert curves.batch == 2000 and len(curves.loss)
    monkeypatch.setenv("NNOBS_RUNS", str(root))
    page = compare_page_at(names)
    drawn = [set(frame[column].dropna().astype(str)) for frame in chart_frames_of(page) for column in frame.columns
             if frame[column].dtype == object or str(frame[column].dtype) == "category"]
    assert any(set(names) <= values for values in drawn), f"the compare page draws the six runs: {drawn}"


def compare_page_at(names: list[str]):
    """The compare page itself, run by Streamlit's AppTest over $NNOBS_RUNS, at the URL the sweep printed."""
    from streamlit.testing.v1 import AppTest

    def page() -> None:
        from nnobs.app.compare_page import compare_page

        compare_page()

    at = AppTest.from_function(page, default_timeout=60)
    at.query_params["runs"] = names
    at.run()
    assert not at.exception, at.exception
    return at


def chart_frames_of(at) -> list:
    import pyarrow as pa

    return [pa.ipc.open_stream(chart.proto.data.data).read_all().to_pandas()
            for chart in at.get("vega_lite_chart") if chart.proto.data.data]


def test_a_worker_of_another_job_exits_without_writing(new_run):
    run = new_run("taken")
    (run.path / "job.json").write_text(json.dumps({"job_id": "456", "submitted_at": 0}))
    env = {**ENV, "NNOBS_JOB_ID": "123"}
    done = subprocess.run([sys.executable, "-m", "nnobs.training.worker", str(run.path)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    assert not run.run_file.exists() and not run.checkpoint.exists()
    assert "taken is recorded for job 456, and this is job 123" in done.stdout + done.stderr


@pytest.mark.parametrize("args, said", [
    (("--on", "slrum"), "invalid choice: 'slrum'"),
    (("--on", "slurm", "--time", "1:00:0x"), "time limit '1:00:0x' refused"),
    (("--partition", "gpu"), "are for runs on Slurm: add --on slurm"),
    (("--on", "slurm", "--sbatch=-p gpu"), "write each in its long form"),
    (("--on", "slurm", "--sbatch=--output=x"), "--output refused: nnobs sets it itself"),
    (("--on", "slurm", "--cpus", "two"), "expected a whole number, not 'two'"),
    (("--nodes", "2"), "--nodes are for runs on Slurm: add --on slurm"),
    (("--on", "slurm", "--tasks-per-node", "0"), "--tasks-per-node must be a whole number from 1 to 4096, not 0"),
    (("--on", "slurm", "--sbatch=--ntasks-per-node=2"), "--ntasks-per-node refused"),
])
def test_bad_launcher_flags_are_refused_and_nothing_is_made(tmp_path, args, said):
    root = tmp_path / "runs"
    done = nnobs(root, "start", "typo", *args, check=False)
    assert done.returncode == 2 and said in done.stderr, done.stderr
    assert not (root / "typo").exists()


def test_a_job_of_several_tasks_for_a_command_that_is_not_torchrun_is_refused_saying_how(tmp_path):
    root = tmp_path / "runs"
    done = nnobs(root, "run", "plain", "--on", "slurm", "--nodes", "2", "--", sys.executable, "train.py", check=False)
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "--nodes and --tasks-per-node start the run's command once a task, for torchrun to join them" in said
    assert "-- torchrun --nproc_per_node=G train.py" in said and "Traceback" not in said
    assert not list(root.glob("plain/job.json")), "nothing was submitted"


def test_the_page_shows_a_queued_job_cancels_it_then_starts_and_steers_the_run(slurm_runs_root, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from test_page import APP, has_button, metrics, rerun_until, say_yes, state, submit

    root = slurm_runs_root
    before = subprocess.run(["sbatch", "--parsable", "--hold", f"--output={root}/before.out", "--wrap", "true"],
                            capture_output=True, text=True, check=True).stdout.strip()
    nnobs(root, "new", "default", "--target", "1000", "--on", "slurm", f"--sbatch=--dependency=afterany:{before}")
    queued = read_job(RunDir(root / "default").job_file).job_id
    monkeypatch.setenv("NNOBS_RUNS", str(root))
    page = AppTest.from_file(APP, default_timeout=60)
    rerun_until(page, lambda at: state(at) == "QUEUED", "the QUEUED badge of a job waiting for another")
    say_yes(page, "Shut down…", "Yes, shut down")
    rerun_until(page, lambda at: state(at) == "STOPPED" and has_button(at, "Start"), "STOPPED once the job is cancelled")
    assert wait_for_job(queued, "ENDED").state == "CANCELLED"
    cancel(before)  # what the run's jobs wait for is gone: the next one runs at once
    next(b for b in page.sidebar.button if b.label == "Start").click().run()
    rerun_until(page, lambda at: state(at) == "IDLE", "the restarted job's worker to train to its target")
    submit(page, "Target batches", "3,000", "Set target")
    rerun_until(page, lambda at: metrics(at)["Batch"] == "3,000" and state(at) == "IDLE", "batch 3,000 on Slurm")
    say_yes(page, "Shut down…", "Yes, shut down")
    rerun_until(page, lambda at: state(at) == "STOPPED", "STOPPED after a shutdown through the control file")
