"""What the page shows of a run at one moment: built from the shared watcher, in plain Python."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from nnobs import charts
from nnobs.control import Command, read_commands
from nnobs.errors import NnobsError
from nnobs.history import Answer, RunWatcher
from nnobs.runs import RunDir, RunStatus, run_status

RECENT_COMMANDS = 6


@dataclass
class RunView:
    """A snapshot the page can draw without holding the watcher's lock."""

    status: RunStatus
    never_ran: bool  # no worker has ever announced itself in the run file
    report_every: int | None
    n_records: int
    recent: list[tuple[Command, Answer | None]]  # newest first, with the worker's answer when it has one
    control_error: str  # why the control file could not be read, if it could not
    loss: pd.DataFrame  # batch, loss: at most the history's max_points rows
    sv_names: tuple[str, ...]  # the parameters in the state-vector charts
    sv_lines: pd.DataFrame | None  # batch, parameter, value
    sv_heat: pd.DataFrame | None  # batch, batch_end, parameter, value


def build_view(run: RunDir, watcher: RunWatcher, names: list[str]) -> RunView:
    """Read what was appended, then copy out what the page draws: bounded however long the run."""
    recent, control_error = _recent_commands(run.control_file)
    with watcher.lock:
        history = watcher.refresh()
        sv_names: tuple[str, ...] = ()
        sv_lines = sv_heat = None
        if history.sv_latest is not None:
            width = len(history.sv_latest)
            full = names if len(names) == width else [f"p{i}" for i in range(width)]
            sv_names = tuple(full[: history.sv_buckets.n_columns])
            sv_lines, sv_heat = charts.sv_frames(history, full)
        return RunView(
            status=run_status(run, history),
            never_ran=not history.events,
            report_every=history.report_every,
            n_records=history.n_records,
            recent=[(c, history.answers.get(str(c.get("id")))) for c in reversed(recent)],
            control_error=control_error,
            loss=charts.loss_frame(history),
            sv_names=sv_names,
            sv_lines=sv_lines,
            sv_heat=sv_heat,
        )


def _recent_commands(path: Path) -> tuple[list[Command], str]:
    """The newest commands, re-read only when the control file changed."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return [], ""
    return _commands_of_version(str(path), (stat.st_ino, stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=32)
def _commands_of_version(path: str, signature: tuple[int, int, int]) -> tuple[list[Command], str]:
    try:
        return read_commands(Path(path))[-RECENT_COMMANDS:], ""
    except NnobsError as err:
        return [], str(err)
