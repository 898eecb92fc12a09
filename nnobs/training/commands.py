"""The command table: what the worker does for each command of the registry (nnobs.protocol.commands).

A handler applies an already checked value and returns the records that ride with its answer; CommandError rejects
the command. Whether a command is an action (done once) or a setting (applied again on resume) is the registry's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from nnobs.protocol.commands import COMMANDS
from nnobs.protocol.records import RecordReader
from nnobs.reading.history import RunHistory
from nnobs.training.disk_guard import DiskGuard
from nnobs.training.pacer import Pacer
from nnobs.training.recovery import Recovery
from nnobs.training.reporter import Reporter
from nnobs.training.schedule import next_state_report
from nnobs.training.trainer import Trainer


class Steerable(Protocol):
    """What the handlers change: a Session."""

    trainer: Trainer
    batch: int
    loss: float | None
    target: int
    report_every: int
    paused: bool
    done: bool
    pacer: Pacer
    reporter: Reporter
    disk: DiskGuard
    recovery: Recovery


Handler = Callable[[Steerable, Any], dict]


def set_target(session: Steerable, value: int) -> dict:
    session.target = value
    return {"target": [session.batch, value]}


def set_eta(session: Steerable, value: float) -> dict:
    session.trainer.eta = value
    if session.paused:  # train on from the finite parameters, with the new step size
        session.paused = False
        session.loss = session.trainer.loss_now()
    return {"eta": [session.batch, value]}


def set_report_every(session: Steerable, value: int) -> dict:
    session.report_every = value
    session.reporter.next_state_at = next_state_report(session.batch, value, session.reporter.n_params)
    return {"report_every": [session.batch, value]}


def set_pace(session: Steerable, value: float) -> dict:
    session.pacer.pace = value
    session.pacer.restart(session.batch, time.monotonic())
    return {"pace": [session.batch, value]}


def set_min_free(session: Steerable, value: float) -> dict:
    session.disk.min_free_mb = value
    session.disk.next_check = 0.0  # at once: a lowered floor lets a paused run go on
    return {"min_free": [session.batch, value]}


def tell_state(session: Steerable, value: None) -> dict:
    return session.reporter.state_report()


def rewind(session: Steerable, value: int) -> dict:
    return session.recovery.rewind(value)  # answered at the batch the run goes on from


def reinit(session: Steerable, value: int | None) -> dict:
    return session.recovery.reinit(value)  # answered at the batch the run goes on from


def exploit(session: Steerable, value: dict) -> dict:
    return session.recovery.exploit(value["from"], value["batch"], value["eta"])  # answered at the batch it goes on


def shutdown(session: Steerable, value: None) -> dict:
    session.done = True
    return {}


HANDLERS: dict[str, Handler] = {
    "target": set_target,
    "eta": set_eta,
    "report_every": set_report_every,
    "pace": set_pace,
    "min_free": set_min_free,
    "tell_state": tell_state,
    "rewind": rewind,
    "reinit": reinit,
    "exploit": exploit,
    "shutdown": shutdown,
}
if HANDLERS.keys() != COMMANDS.keys():  # a command the worker would take and not know what to do with
    raise RuntimeError(f"the command table and the registry differ: {sorted(HANDLERS.keys() ^ COMMANDS.keys())}")


def answered_since(run_file: Path, offset: int) -> set[str]:
    """Ids of commands answered in the run file after offset."""
    reader = RecordReader(run_file)
    reader.offset = offset
    history = RunHistory()
    history.add_lines(reader.read_new_lines())
    return set(history.answers)
