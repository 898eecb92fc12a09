"""What every part of a session reads and sets: where training is, its settings, and where it writes."""

from __future__ import annotations

from nnobs.protocol.records import BackgroundWriter
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.slot import StatusSlot
from nnobs.training.pacer import Pacer
from nnobs.training.trainer import Trainer
from nnobs.training.window import Window


class RunState:
    """The fields a session's parts share; the Session is one, and hands itself to each part.

    Plain attributes of the session itself, not of an object beside it: the loop sets batch once a batch, and an
    attribute lookup more would cost it.
    """

    run_dir: RunDir
    trainer: Trainer
    out: BackgroundWriter  # the run file
    slot: StatusSlot  # where the worker speaks when the run file cannot grow
    batch: int  # batches trained so far (the one being trained counts)
    loss: float | None  # the latest loss, None before any is known
    target: int
    report_every: int
    gen: int  # the generation: stamped on every record
    paused: bool  # the loss diverged: no training until eta changes
    done: bool  # the loop ends at its next stop
    window: Window  # the losses since the last loss report
    pacer: Pacer
    eta_schedule: list | None  # [[batch, eta], ...] as the run was given it
    eta_steps: list[tuple[int, float]]  # its steps still to come, the next first
