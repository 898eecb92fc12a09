"""Real detached workers: one per run, steered by the control file, reporting to the run file, restartable."""

from __future__ import annotations

import fcntl
import os
import signal
import time

import numpy as np
import pytest

from conftest import (
    FOREVER,
    acks_of,
    answered,
    batch_passes,
    events,
    kill_worker,
    process_gone,
    python,
    records_with,
    run_together,
    wait_for,
    wait_started,
)
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol import control as control_module
from nnobs.protocol.control import read_commands, send_command
from nnobs.protocol.records import read_all
from nnobs.protocol.states import STALL_AFTER_S
from nnobs.protocol.control import queue_command
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import restart_worker, run_status, start_worker, stop_worker, worker_pid
from nnobs.training.builtin.tasks import RunConfig, build

START_AND_EXIT = """
import sys
from pathlib import Path
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import start_worker
print(start_worker(RunDir(Path(sys.argv[1]))))
"""

START_WHEN_TOLD = """
import sys
from pathlib import Path
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import start_worker
run = RunDir(Path(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print(start_worker(run))
"""


def state_of(run) -> str:
    return run_status(run, read_history(run)).state


def test_worker_started_by_a_child_process_outlives_it_and_keeps_training(new_run):
    run = new_run(target=FOREVER)
    starter = python(START_AND_EXIT, str(run.path))
    out, err = starter.communicate(timeout=60)
    assert starter.returncode == 0, err
    pid = int(out)

    assert process_gone(starter.pid)
    seen = batch_passes(run, 0)
    batch_passes(run, seen, what="training to go on after the starting process exited")
    assert worker_pid(run) == pid
    assert state_of(run) == "training"


def test_five_simultaneous_starts_give_exactly_one_worker(new_run):
    run = new_run(target=FOREVER)
    pids = {int(out) for out in run_together([python(START_WHEN_TOLD, str(run.path)) for _ in range(5)])}

    assert len(pids) == 1
    assert pids == {worker_pid(run)}
    batch_passes(run, 0)
    assert len(events(run, "started")) == 1


def test_start_worker_returns_the_live_workers_pid_without_starting_another(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    assert start_worker(run) == pid
    batch_passes(run, 0)
    assert len(events(run, "started")) == 1


def test_target_is_acknowledged_and_training_idles_at_it_with_falling_loss(new_run):
    run = new_run(target=0)
    start_worker(run)
    wait_started(run)
    assert state_of(run) == "idle"

    command = send_command(run.control_file, "target", 3000)

    answer = answered(run, command)
    assert answer.ok and answer.batch == 0  # idle at batch 0, so it took effect there
    history = wait_for(lambda: (h := read_history(run)).batch >= 3000 and h, what="training to reach batch 3000")
    status = run_status(run, history)
    assert (status.state, status.batch, status.target) == ("idle", 3000, 3000)
    assert [e.batch for e in history.events if e.kind == "target_reached"] == [3000]
    losses = history.loss_series()[1]
    assert losses[-1] < losses[0]


def test_eta_set_while_training_is_acknowledged_at_the_batch_where_it_took_effect(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    batch_passes(run, 0)

    command = send_command(run.control_file, "eta", 0.2)

    answer = answered(run, command)
    assert answer.ok and answer.batch > 0
    ack = acks_of(run, command)[0]
    assert ack["ack"][0] == answer.batch and ack["eta"] == [answer.batch, 0.2]
    assert read_history(run).eta == 0.2


def test_bad_eta_is_rejected_with_a_reason_and_training_goes_on(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    wait_started(run)

    bad = [send_command(run.control_file, "eta", value) for value in (-1, "fast")]  # send_command does not check

    answers = [answered(run, command) for command in bad]
    assert [a.ok for a in answers] == [False, False]
    assert all("eta must be a number above 0" in a.reason for a in answers)
    batch_passes(run, max(a.batch for a in answers), what="training to go on after the rejections")
    assert read_history(run).eta == 0.1
    assert state_of(run) == "training"


def test_shutdown_is_acknowledged_recorded_last_and_the_process_exits(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    batch_passes(run, 0)

    command = send_command(run.control_file, "shutdown", by="test")

    wait_for(lambda: worker_pid(run) is None, what="the worker to release worker.lock")
    wait_for(lambda: process_gone(pid), what=f"worker process {pid} to exit")
    history = read_history(run)
    assert history.answers[command["id"]].ok
    last = read_all(run.run_file)[-1]
    assert last["event"] == [history.batch, "shutdown"]
    assert state_of(run) == "stopped"


def test_sigterm_shuts_the_worker_down_cleanly(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    batch_passes(run, 0)

    os.kill(pid, signal.SIGTERM)

    wait_for(lambda: worker_pid(run) is None, what="the worker to exit after SIGTERM")
    assert read_all(run.run_file)[-1]["event"][1] == "shutdown"
    assert state_of(run) == "stopped"


def test_start_after_a_stop_trains_on_and_does_not_obey_the_old_shutdown(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    batch_passes(run, 0)
    assert stop_worker(run)
    stopped_at = read_history(run).batch

    start_worker(run)

    assert wait_started(run, 2)["resumed_from"] == stopped_at
    batch_passes(run, stopped_at, what="the second generation to train on")
    assert len(events(run, "shutdown")) == 1
    assert state_of(run) == "training"


def test_restart_after_kill_9_resumes_from_last_checkpoint(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    first = wait_started(run)
    batch_passes(run, 0)
    setting = send_command(run.control_file, "report_every", 0)  # the worker checkpoints after answering
    answered(run, setting)
    wait_for(lambda: load_checkpoint(run.checkpoint).last_seq == setting["seq"], what="a checkpoint after the answer")

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_pid(run) is None, what="the killed worker's lock to drop")
    assert state_of(run) == "crashed"
    ckpt = load_checkpoint(run.checkpoint)
    assert ckpt.batch >= read_history(run).answers[setting["id"]].batch

    new_pid = restart_worker(run)

    assert new_pid != pid
    second = wait_started(run, 2)
    assert second["gen"] == first["gen"] + 1
    assert second["resumed_from"] >= ckpt.batch
    assert second["event"][0] == second["resumed_from"]
    np.testing.assert_array_equal(second["sv"][1], ckpt.sv)
    batch_passes(run, second["resumed_from"], what="the new generation to train on")
    new_losses = [r["loss"][0] for r in records_with(run, "loss") if r["gen"] == second["gen"]]
    assert new_losses == sorted(new_losses) and new_losses[0] == second["resumed_from"]
    assert len(acks_of(run, setting)) == 1  # not re-answered


def crash_before_checkpointing(run, cmd: str, value) -> dict:
    """Send a command, then kill -9 the worker as if between answering it and checkpointing after it.

    The real kill lands after that checkpoint; putting back the checkpoint from before the command
    leaves the run as the narrow window would have.
    """
    before = run.checkpoint.read_bytes()
    command = send_command(run.control_file, cmd, value)
    answered(run, command)
    kill_worker(run)
    run.checkpoint.with_suffix(".old").write_bytes(before)
    os.replace(run.checkpoint.with_suffix(".old"), run.checkpoint)
    assert load_checkpoint(run.checkpoint).last_seq < command["seq"]
    return command


def test_setting_answered_but_not_checkpointed_before_a_crash_is_reapplied_not_reanswered(new_run):
    run = new_run(target=FOREVER, report_every=0)
    start_worker(run)
    batch_passes(run, 0)
    setting = crash_before_checkpointing(run, "eta", 0.3)

    restart_worker(run)

    batch_passes(run, wait_started(run, 2)["resumed_from"], what="the new generation to train on")
    tell = send_command(run.control_file, "tell_state")
    answered(run, tell)
    ack = acks_of(run, tell)[0]
    assert ack["eta"][1] == 0.3  # the worker trains with the re-applied eta
    assert len(acks_of(run, setting)) == 1


def test_setting_reapplied_after_a_crash_shows_in_the_run_file(new_run):
    run = new_run(target=FOREVER, report_every=0)
    start_worker(run)
    batch_passes(run, 0)
    crash_before_checkpointing(run, "eta", 0.3)

    restart_worker(run)

    batch_passes(run, wait_started(run, 2)["resumed_from"], what="the new generation to train on")
    assert read_history(run).eta == 0.3


def test_state_reports_come_densely_at_first_then_every_n_and_match_training_here(new_run):
    run = new_run(target=200, report_every=100)
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="the target 200 to be reached")

    reports = {r["sv"][0]: r["sv"][1] for r in records_with(run, "sv")}
    # Each batch of the first decade, then 28 a decade, and every 100th batch as well.
    assert sorted(reports) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 18, 20, 22, 24, 27, 30, 33, 36,
                               40, 44, 48, 53, 58, 63, 69, 75, 82, 90, 98, 100, 109, 119, 130, 142, 155, 169,
                               184, 200]
    net, next_batch = build(RunConfig())  # the worker's default net, trained here step by step
    for batch in range(201):
        if batch in reports:
            np.testing.assert_allclose(reports[batch], net.state_vector(), rtol=0, atol=1e-12)
        net.learn_one(*next_batch())


def test_tell_state_and_a_new_report_every_produce_state_vectors(new_run):
    run = new_run(target=200, report_every=0)
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="the target 200 to be reached")
    assert [r["sv"][0] for r in records_with(run, "sv")] == [0]  # only the start's report

    tell = send_command(run.control_file, "tell_state")
    answered(run, tell)
    ack = acks_of(run, tell)[0]
    assert ack["sv"][0] == 200 and len(ack["sv"][1]) == 9

    every = send_command(run.control_file, "report_every", 50)
    target = send_command(run.control_file, "target", 300)
    wait_for(lambda: len(events(run, "target_reached")) == 2, what="the target 300 to be reached")
    assert answered(run, every).ok and answered(run, target).ok
    # From batch 200, 28 a decade and every 50th batch as well.
    assert [r["sv"][0] for r in records_with(run, "sv")] == [0, 200, 218, 237, 250, 272, 296, 300]


def test_commands_sent_before_the_worker_starts_are_applied_at_start(new_run):
    run = new_run(target=0)
    target = send_command(run.control_file, "target", 500)
    eta = send_command(run.control_file, "eta", 0.2)

    start_worker(run)

    history = wait_for(lambda: (h := read_history(run)).batch == 500 and h, what="training to reach batch 500")
    assert (history.answers[target["id"]].ok, history.answers[target["id"]].batch) == (True, 0)
    assert (history.answers[eta["id"]].ok, history.answers[eta["id"]].batch) == (True, 0)
    assert history.eta == 0.2 and state_of(run) == "idle"


def test_idle_worker_keeps_a_heartbeat(new_run):
    run = new_run(target=0)
    start_worker(run)
    started_t = wait_started(run)["t"]
    wait_for(
        lambda: any(r["t"] > started_t for r in records_with(run, "loss")),
        what="a heartbeat loss record after the start",
    )
    assert state_of(run) == "idle"


def test_worker_pid_does_not_report_a_dead_workers_pid_while_the_next_one_starts(new_run):
    """A new worker takes worker.lock before it overwrites the pid the last one left there."""
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: worker_pid(run) is None, what="the killed worker's lock to drop")
    assert run.worker_lock.read_text().strip() == str(pid)  # what kill -9 leaves behind

    # Be the next worker at the moment it holds the lock and has not yet written its pid.
    fd = os.open(run.worker_lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert worker_pid(run) != pid
    finally:
        os.close(fd)


def test_a_worker_whose_run_directory_is_replaced_exits_without_writing(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    batch_passes(run, 0)
    old = run.path.rename(run.path.with_name("old-copy"))
    run.path.mkdir()

    wait_for(lambda: process_gone(pid), what="the orphaned worker to exit")
    assert list(run.path.iterdir()) == [], "it wrote nothing into the new directory"
    assert "deleted or replaced" in (old / "worker.log").read_text()


START_STOP_AND_LOOK_FOR_CHILDREN = """
import os, sys, time
from pathlib import Path
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import start_worker, stop_worker
run = RunDir(Path(sys.argv[1]))
for _ in range(3):
    start_worker(run)
    stop_worker(run)
try:
    print(os.waitpid(-1, os.WNOHANG))
except ChildProcessError:
    print("no children")
"""


def test_workers_do_not_stay_zombie_children_of_a_long_lived_starter(new_run):
    run = new_run(target=0)
    starter = python(START_STOP_AND_LOOK_FOR_CHILDREN, str(run.path))
    out, err = starter.communicate(timeout=120)
    assert starter.returncode == 0, err
    assert out.strip() == "no children", "three workers started and stopped; none is left a child of the starter"


def test_a_shutdown_sent_while_no_worker_runs_does_not_stop_the_next_one(new_run):
    run = new_run(target=0)
    start_worker(run)
    assert answered(run, send_command(run.control_file, "shutdown")).ok
    wait_for(lambda: worker_pid(run) is None, what="the first worker to stop")
    second = send_command(run.control_file, "shutdown")  # a teammate's late click, or a script's

    start_worker(run)

    assert not answered(run, second).ok and "before this worker started" in answered(run, second).reason
    assert worker_pid(run) is not None and run_status(run, read_history(run)).state == "idle"


def test_a_control_file_made_anew_is_obeyed_from_its_first_command(new_run):
    run = new_run(target=0)
    start_worker(run)
    for value in (0.2, 0.3, 0.4):
        answered(run, send_command(run.control_file, "eta", value))
    run.control_file.unlink()  # cleaned up by hand: numbering starts over at seq 1

    again = send_command(run.control_file, "eta", 0.5)

    assert again["seq"] == 1 and answered(run, again).ok and read_history(run).eta == 0.5


def test_a_worker_whose_run_directory_is_replaced_while_the_loss_still_falls_exits(new_run):
    run = new_run(target=FOREVER, eta=0.0001)  # learns so slowly that every loss report differs
    pid = start_worker(run)
    batch_passes(run, 0)
    run.path.rename(run.path.with_name("old-copy"))
    run.path.mkdir()

    wait_for(lambda: process_gone(pid), what="the orphaned worker to exit")
    assert list(run.path.iterdir()) == [], "no checkpoint or record landed in the new directory"


def test_a_diverging_run_pauses_at_finite_parameters_and_trains_on_when_eta_is_lowered(new_run):
    run = new_run(activation="identity", eta=0.05, target=FOREVER)  # a linear net: a large eta blows it up
    start_worker(run)
    batch_passes(run, 2000)
    wait_for(lambda: (c := load_checkpoint(run.checkpoint)) and c.batch > 0, what="a checkpoint after batch 0")

    answered(run, send_command(run.control_file, "eta", 5.0))
    diverged = wait_for(lambda: events(run, "diverged"), what="the worker to report the divergence")[0]
    assert "parameters back to those of batch" in diverged["error"]
    raw = run.run_file.read_bytes()
    assert b"NaN" not in raw and b"Infinity" not in raw  # strict JSON: null and "diverged": true instead
    status = run_status(run, read_history(run))
    assert status.diverged and status.state == "idle" and status.loss is None
    paused_at = status.batch
    heartbeats = len(records_with(run, "loss"))
    wait_for(lambda: len(records_with(run, "loss")) >= heartbeats + 2, what="two more heartbeats")
    assert read_history(run).batch == paused_at  # paused, not training on NaN
    answered(run, send_command(run.control_file, "tell_state"))  # an answer is followed by a checkpoint
    paused = wait_for(lambda: (c := load_checkpoint(run.checkpoint)).batch == paused_at and c, what="its checkpoint")
    assert np.isfinite(paused.sv).all(), "the paused worker holds finite parameters"

    answered(run, send_command(run.control_file, "eta", 0.05))
    batch_passes(run, paused_at + 1000, what="training to go on after eta was lowered")
    status = run_status(run, read_history(run))
    assert not status.diverged and status.state == "training" and np.isfinite(status.loss)
    assert worker_pid(run) is not None


def test_a_stuck_worker_reads_stalled_and_stop_kills_it_after_the_grace_time(new_run):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    os.kill(pid, signal.SIGSTOP)  # alive and holding its lock, but silent: as a worker stuck in a long call is
    try:
        later = time.time() + STALL_AFTER_S + 1  # the status as it reads once that much silence has passed
        assert run_status(run, read_history(run), now=later).state == "stalled"
        assert run_status(run, read_history(run)).state == "training", "a second of silence is not a stall"

        assert stop_worker(run, grace=0.5), "a worker that cannot obey the shutdown is killed"
    finally:
        if not process_gone(pid):
            os.kill(pid, signal.SIGCONT)
    assert process_gone(pid) and worker_pid(run) is None
    assert state_of(run) == "crashed", "no shutdown record: it ended as a crash ends"
    assert wait_started(run, 1) and restart_worker(run) and wait_started(run, 2)["resumed_from"] is not None


@pytest.mark.parametrize("umask, others_read", [(0o022, 0o044), (0o077, 0)])
def test_every_file_of_a_run_is_as_readable_as_the_umask_allows(new_run, umask, others_read):
    """Others who watch the run can read all of it; a umask that asks for privacy gets it for all of it."""
    old = os.umask(umask)  # the worker inherits it through its launcher
    try:
        run = new_run(target=100)
        start_worker(run)
        answered(run, send_command(run.control_file, "tell_state"))
        assert stop_worker(run)
    finally:
        os.umask(old)
    for path in (run.config, run.control_file, run.checkpoint, run.run_file, run.worker_lock):
        assert path.stat().st_mode & 0o077 == others_read, f"{path.name} is {oct(path.stat().st_mode)}"


def test_a_control_file_made_anew_while_no_worker_runs_is_obeyed_by_the_next_one(new_run):
    run = new_run(target=0)
    start_worker(run)
    for value in (10, 20):
        answered(run, send_command(run.control_file, "target", value))
    assert stop_worker(run)
    run.control_file.unlink()  # the next file's seqs 1 and 2 are not the ones the checkpoint remembers
    fresh = [send_command(run.control_file, "target", value) for value in (30, 40)]

    start_worker(run)
    assert [answered(run, command).ok for command in fresh] == [True, True]
    wait_for(lambda: read_history(run).target == 40, what="the new file's last target to hold")


def test_control_file_forgets_only_what_a_checkpoint_says_was_applied_and_nothing_is_answered_twice(
    new_run, monkeypatch
):
    monkeypatch.setattr(control_module, "COMMANDS_KEPT", 5)  # the bound, small enough to cross a few times here
    run = new_run(target=0)
    start_worker(run)
    applied = [queue_command(run, "target", 100 + k) for k in range(23)]
    for command in applied:
        answered(run, command)
    assert stop_worker(run)
    queued = [queue_command(run, "target", 200 + k) for k in range(12)]  # no worker: none of these is applied

    kept = read_commands(run.control_file)
    assert len(kept) < len(applied) + len(queued), "applied commands were forgotten"
    assert [c["id"] for c in kept][-len(queued):] == [c["id"] for c in queued], "no unapplied command is dropped"

    start_worker(run)
    for command in queued:
        assert answered(run, command).ok
    wait_for(lambda: read_history(run).target == 211, what="the last queued target to hold")
    answers = [r["ack"][1]["id"] for r in records_with(run, "ack")]
    assert sorted(answers) == sorted({*answers}) and {c["id"] for c in applied + queued} <= {*answers}
