"""What the page shows of a run at one moment: built from the shared watcher, in plain Python."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from nnobs import charts
from nnobs.analytics import decision_surface
from nnobs.control import Command, read_commands
from nnobs.errors import NnobsError
from nnobs.history import Answer, Event, RunWatcher
from nnobs.runs import RunDir, RunStatus, run_status
from nnobs.tasks import TASKS, RunConfig, parameter_names

RECENT_COMMANDS = 6
RECENT_STARTS = 6


@dataclass
class RunView:
    """A snapshot the page can draw without holding the watcher's lock."""

    status: RunStatus
    report_every: int | None
    n_records: int
    recent: list[tuple[Command, Answer | None]]  # newest first, with the worker's answer when it has one
    control_error: str  # why the control file could not be read, if it could not
    rate: float | None  # batches per second over the last seconds
    loss_change: float | None  # relative change of the loss over the same seconds
    loss: pd.DataFrame  # batch, loss: at most the history's max_points rows
    loss_means: pd.DataFrame  # batch, mean: the loss buckets' means, what smoothing works on
    markers: pd.DataFrame  # batch, label, kind: where commands took effect and generations began
    sv_names: tuple[str, ...]  # the parameters in the state-vector charts
    sv_lines: pd.DataFrame | None  # batch, layer, parameter, value
    sv_heat: pd.DataFrame | None  # batch, batch_end, parameter, value
    step_lengths: pd.DataFrame  # batch, value
    step_cosines: pd.DataFrame  # batch, value
    surface: pd.DataFrame | None  # the decision surface and training points, for nets with 2 inputs
    starts: list[Event]  # the newest worker starts, oldest first: who started each generation

    @property
    def seconds_to_target(self) -> float | None:
        status = self.status
        if not self.rate or status.target is None or status.state != "training":
            return None
        return max(0.0, status.target - status.batch) / self.rate


def build_view(run: RunDir, watcher: RunWatcher, config: RunConfig | None) -> RunView:
    """Read what was appended, then copy out what the page draws: bounded however long the run."""
    recent, control_error = _recent_commands(run.control_file)
    names = _names(config.to_json()) if config else []
    with watcher.lock:
        history = watcher.refresh()
        sv_names: tuple[str, ...] = ()
        sv_lines = sv_heat = surface = None
        if history.sv_latest is not None:
            width = len(history.sv_latest)
            full = names if len(names) == width else [f"p{i}" for i in range(width)]
            sv_names = tuple(full[: history.sv_buckets.n_columns])
            sv_lines, sv_heat = charts.sv_frames(history, full)
            if config and len(names) == width and config.sizes[0] == 2:
                surface = _surface(config.to_json(), history.sv_latest.tobytes())
        rate, loss_change = history.rate()
        loss_means = charts.loss_means_frame(history)
        return RunView(
            status=run_status(run, history),
            report_every=history.report_every,
            n_records=history.n_records,
            recent=[(c, history.answers.get(str(c.get("id")))) for c in reversed(recent)],
            control_error=control_error,
            rate=rate,
            loss_change=loss_change,
            loss=charts.loss_frame(history),
            loss_means=loss_means,
            markers=charts.markers_frame(history),
            sv_names=sv_names,
            sv_lines=sv_lines,
            sv_heat=sv_heat,
            step_lengths=charts.steps_frame(history, 0),
            step_cosines=charts.steps_frame(history, 1),
            surface=surface,
            starts=[e for e in history.events if e.kind == "started"][-RECENT_STARTS:],
        )


@lru_cache(maxsize=8)
def _names(config_json: str) -> list[str]:
    """Parameter names, built once per config: a large net has hundreds of thousands."""
    return parameter_names(RunConfig.from_json(config_json))


@lru_cache(maxsize=8)
def _surface(config_json: str, sv: bytes) -> pd.DataFrame:
    """The decision surface and the task's training batch on it, computed once per state vector."""
    config = RunConfig.from_json(config_json)
    facts = TASKS[config.task](config)()
    return charts.surface_frame(*decision_surface(config, np.frombuffer(sv)), facts, config.activation)


def never_ran(watcher: RunWatcher) -> bool:
    """True while the run file is empty: no worker has ever written to it (a notebook's file has records)."""
    with watcher.lock:
        history = watcher.refresh()
        return not history.events and history.n_records == 0


def current_status(run: RunDir, watcher: RunWatcher) -> RunStatus:
    """The run's status alone, for controls that depend on it."""
    with watcher.lock:
        return run_status(run, watcher.refresh())


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


def chart_frames(view: RunView, smoothing: float, log_scale: bool = True) -> dict[str, pd.DataFrame]:
    """The data of every chart the page draws, by chart; what a refresh sends to the browser.

    Every chart over batches also gets two invisible rows at the run's first and latest batch, so
    they all span the same whole run. The loss frame is empty while fewer than two batches have a
    loss to draw: the page shows charts.LOSS_PENDING instead of the chart.
    """
    over_batches = {"sv_lines": view.sv_lines, "sv_heat": view.sv_heat,
                    "step_lengths": view.step_lengths, "step_cosines": view.step_cosines}
    shown = [frame for frame in (view.loss, *over_batches.values()) if frame is not None]
    batches = charts.batch_range(view.status.batch, shown)
    loss = charts.loss_chart_frame(view.loss, view.loss_means, view.markers, smoothing, log_scale, batches)
    frames = {"loss": charts.with_batch_range(loss, batches) if len(loss) else loss}
    for name, frame in over_batches.items():
        if frame is not None:
            frames[name] = charts.with_batch_range(frame, batches)
    if view.surface is not None:
        frames["surface"] = view.surface
    return frames
