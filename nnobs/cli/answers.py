"""Sending commands to a run's worker, and waiting for its answers: acknowledged, rejected or still pending."""

from __future__ import annotations

import time

from nnobs.launching.lifecycle import active_job, worker_pid
from nnobs.protocol.commands import check_command
from nnobs.protocol.control import queue_commands
from nnobs.protocol.records import RecordReader
from nnobs.protocol.rundir import RunDir
from nnobs.reading.history import RunHistory

ANSWER_TIMEOUT_S = 10.0
ANSWER_POLL_S = 0.05  # how often the run file is looked at for answers

# What an acknowledged command did, where the batch alone does not say it.
AFTERWARDS = {
    "rewind": " (the kept checkpoint it went back to; training goes on from there as a new generation)",
    "reinit": " (fresh parameters from there on, as a new generation)",
}


def describe(command: dict) -> str:
    """A command as the user would say it: "pace 100", "eta 0.05", "tell_state"."""
    value = command["value"]
    if value is None:
        return command["cmd"]
    return f"{command['cmd']} {value:g}" if isinstance(value, float) else f"{command['cmd']} {value}"


def send_commands(run: RunDir, commands: list[tuple[str, object]], wait: bool = True) -> int:
    """Queue each (command, value) for the run's worker, after checking them all; with wait, print its answers.

    0 when all were sent (and, with wait, acknowledged); 1 when one was rejected or not answered.
    """
    for cmd, value in commands:
        check_command(cmd, value)  # refuse here, with the worker's own words, before anything is written
    answers = RecordReader.from_end(run.run_file)  # answers come after this
    sent = queue_commands(run, commands, by="cli")
    for command in sent:
        print(f"sent {describe(command)} (command {command['id']})")
    return await_answers(run, answers, sent) if wait else 0


def await_answers(run: RunDir, answers: RecordReader, sent: list[dict], timeout: float = ANSWER_TIMEOUT_S) -> int:
    """Print the worker's answer to each command sent, reading only what is appended; 0 if all were acknowledged.

    Waits up to timeout, or only until no worker is alive: a dead run answers nothing until it is started.
    """
    deadline = time.monotonic() + timeout
    history = RunHistory()
    while True:
        alive = worker_pid(run) is not None  # looked at before reading, so an answer written as it exits is read
        history.add_lines(answers.read_new_lines())
        if all(c["id"] in history.answers for c in sent) or not alive or time.monotonic() > deadline:
            break
        time.sleep(ANSWER_POLL_S)
    code = 0
    for command in sent:
        answer = history.answers.get(command["id"])
        if answer is None:
            print(f"{describe(command)}: pending: {_why_pending(run, alive, timeout)}")
            code = 1
        elif answer.ok:
            print(f"{describe(command)}: acknowledged at batch {answer.batch:,}{AFTERWARDS.get(command['cmd'], '')}")
        else:
            print(f"{describe(command)}: rejected: {answer.reason}")
            code = 1
    return code


def _why_pending(run: RunDir, alive: bool, timeout: float) -> str:
    """Why a command has no answer yet: a slow worker, a queued job, or no worker at all."""
    if alive:
        return f"no answer from the worker within {timeout:.0f} s"
    queued = active_job(run)
    if queued:
        return f"job {queued.job_id} is queued: its worker applies it when it starts"
    return "no worker is alive to answer; the next start applies it"
