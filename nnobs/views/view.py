"""What the page shows of a run at one moment: built from the shared watcher, in plain Python."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from nnobs.launching.lifecycle import run_status
from nnobs.launching.status import RunStatus
from nnobs.protocol.control import Command, read_commands
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import Signature, file_signature
from nnobs.protocol.rundir import RunDir, script_description
from nnobs.protocol.schema import SUMMARY, TEST_LOSS, parameter_name, system_names
from nnobs.reading.history import Answer, Event, RunHistory
from nnobs.reading.origin import fork_origin
from nnobs.reading.watcher import RunWatcher
from nnobs.training.builtin.tasks import RunConfig, dataset
from nnobs.training.builtin.tasks import tensors as config_tensors
from nnobs.views import wording
from nnobs.views.frames import (
    batch_range,
    line_columns,
    loss_chart_frame,
    loss_frame,
    loss_means_frame,
    markers_frame,
    metric_frames,
    steps_frame,
    surface_frame,
    sv_frames,
    with_batch_range,
    with_test_loss,
)
from nnobs.views.surface import decision_surface

T = TypeVar("T")
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
    sv_shown: tuple[str, str]  # which parameters the lines and the heatmap draw, in words
    sampled: bool  # the state vector charts show a large net's fixed sample, not its whole vector
    step_lengths: pd.DataFrame  # batch, value
    step_cosines: pd.DataFrame  # batch, value
    surface: pd.DataFrame | None  # the decision surface and training points, for nets with 2 inputs
    starts: list[Event]  # the newest worker starts, oldest first: who started each generation
    metrics: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # a script's metrics by name: (batch, value), (batch, mean)
    test: tuple[pd.DataFrame, pd.DataFrame] | None  # the test loss, (batch, value), (batch, mean): on the loss chart
    metrics_dropped: bool  # more metrics were logged than the history keeps
    system: dict[str, tuple[pd.DataFrame, pd.DataFrame]]  # the worker's machine (system.cpu, ...), as metrics are
    tensors: tuple[str, ...]  # the tensors of a large net's summaries, in state-vector order
    script: dict[str, Any] | None  # run.json: which script serves the run, where; None for a run of the built-in worker
    origin: (
        dict[str, Any] | None
    )  # where the run was forked from ({"run": parent, "batch": N, ...}); None if it was not
    state_batches: np.ndarray  # the batches whose whole state vectors the history keeps (replay, the path): sorted
    config: RunConfig | None  # the built-in net's, for the pictures drawn from a state vector
    watcher: RunWatcher = field(repr=False)  # for parts made only when drawn (made())
    _made: dict[str, Any] = field(default_factory=dict, repr=False)
    _made_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def made(self, name: str, build: Callable[[RunHistory], T]) -> T:
        """build(history) once per view, when first asked for: the parts of views that are not open cost nothing,
        and every session sharing this view shares what was made."""
        with self._made_lock:
            if name not in self._made:
                with self.watcher.lock:
                    self._made[name] = build(self.watcher.history)
            return self._made[name]

    def state_at(self, batch: int) -> tuple[int, np.ndarray] | None:
        """The whole state vector kept at batch (or the nearest kept before it), as the history holds it now."""
        return self.made(
            f"state:{batch}", lambda history: _copied(history.archive.at(batch) if history.archive else None)
        )

    @property
    def seconds_to_target(self) -> float | None:
        status = self.status
        if not self.rate or status.target is None or status.state != "training":
            return None
        return max(0.0, status.target - status.batch) / self.rate


def build_view(run: RunDir, watcher: RunWatcher, config: RunConfig | None) -> RunView:
    """Read what was appended, then copy out what the page draws: bounded however long the run."""
    recent, control_error = _recent_commands(run.control_file)
    script = None if run.config.exists() else script_description(run)
    origin = fork_origin(run)
    with watcher.lock:
        history = watcher.refresh()
        sv_names: tuple[str, ...] = ()
        sv_lines = sv_heat = surface = None
        sv_shown, sampled = ("", ""), False
        latest, buckets = history.sv_latest, history.sv_buckets  # set together, by the first state report
        if latest is not None and buckets is not None:
            state = _state_parts(history, config, len(latest))
            sampled = state.sample is not None
            sv_names = _kept_names(state.tensors, state.sample, buckets.n_columns)
            sv_lines, sv_heat = sv_frames(history, list(sv_names))
            total = state.total or len(latest)
            n_lines = len(line_columns(len(sv_names)))
            # The lines are spread over the kept parameters: over the whole vector for a sampled net, else its start.
            sv_shown = (
                wording.parameters_shown(n_lines, total, spread=True, among=None if sampled else len(sv_names)),
                wording.parameters_shown(len(sv_names), total, spread=sampled),
            )
            if config and state.from_config and config.sizes[0] == 2:
                surface = surface_of(config.to_json(), latest.tobytes())
        tensor_names = _tensor_names(history)
        rate, loss_change = history.rate()
        loss_means = loss_means_frame(history)
        metrics = metric_frames(history)
        test = metrics.pop(TEST_LOSS, None)  # drawn beside the training loss, not as a chart of its own
        system = {name: metrics.pop(name) for name in system_names(metrics)}  # rank 0's charts first
        return RunView(
            status=run_status(run, history),
            report_every=history.report_every,
            n_records=history.n_records,
            recent=[(c, history.answers.get(str(c.get("id")))) for c in reversed(recent)],
            control_error=control_error,
            rate=rate,
            loss_change=loss_change,
            loss=loss_frame(history),
            loss_means=loss_means,
            markers=markers_frame(history),
            sv_names=sv_names,
            sv_lines=sv_lines,
            sv_heat=sv_heat,
            sv_shown=sv_shown,
            sampled=sampled,
            step_lengths=steps_frame(history, 0),
            step_cosines=steps_frame(history, 1),
            surface=surface,
            starts=[e for e in history.events if e.kind == "started"][-RECENT_STARTS:],
            metrics=metrics,
            test=test,
            metrics_dropped=history.metrics_dropped,
            system=system,
            tensors=tensor_names,
            script=script,
            origin=origin,
            state_batches=history.archive.kept()[0].copy() if history.archive is not None else np.empty(0, np.int64),
            config=config,
            watcher=watcher,
        )


def _copied(state: tuple[int, np.ndarray] | None) -> tuple[int, np.ndarray] | None:
    return None if state is None else (state[0], state[1].copy())


@dataclass
class _StateParts:
    """What the history's state vectors are: their tensors, and the sample's indices when they are a sample."""

    tensors: tuple[tuple[str, tuple[int, ...]], ...]  # () when nothing says
    sample: tuple[int, ...] | None
    total: int  # parameters of the whole net; 0 when nothing says
    from_config: bool  # the built-in net config.json describes, whole


def _state_parts(history: RunHistory, config: RunConfig | None, width: int) -> _StateParts:
    """The run file's params record, when it describes the state vectors reported (width parameters each); else
    the config's net (files written before params existed); else nothing."""
    if history.tensors:
        tensors = tuple((name, tuple(shape)) for name, shape in history.tensors)
        total = _count(tensors)
        if history.sample is not None and len(history.sample) == width:
            return _StateParts(tensors, tuple(history.sample), total, False)
        if total == width:
            return _StateParts(tensors, None, total, config is not None and list(tensors) == config_tensors(config))
    if config is not None:
        tensors = tuple(config_tensors(config))
        if _count(tensors) == width:
            return _StateParts(tensors, None, width, True)
    return _StateParts((), None, 0, False)


def _count(tensors) -> int:
    return sum(int(np.prod(shape)) for _, shape in tensors)


@lru_cache(maxsize=8)
def _kept_names(tensors: tuple, sample: tuple[int, ...] | None, kept: int) -> tuple[str, ...]:
    """The names of the parameters whose trajectories the history keeps (its first `kept` columns), built once."""
    indices = sample[:kept] if sample is not None else range(kept)
    if not tensors:
        return tuple(f"p{i}" for i in indices)
    return tuple(parameter_name(list(tensors), i) for i in indices)


def _tensor_names(history: RunHistory) -> tuple[str, ...]:
    """The tensors of the history's summaries by name: the params record's, or their places when it does not fit."""
    if history.layers is None:
        return ()
    n = history.layers.n_columns // len(SUMMARY)
    if history.tensors and len(history.tensors) == n:
        return tuple(name for name, _ in history.tensors)
    return tuple(f"tensor {k}" for k in range(n))


@lru_cache(maxsize=8)
def surface_of(config_json: str, sv: bytes) -> pd.DataFrame:
    """The decision surface and the task's training batch on it, computed once per state vector."""
    config = RunConfig.from_json(config_json)
    data = dataset(config)
    facts = (data.train_x, data.train_y)
    return surface_frame(*decision_surface(config, np.frombuffer(sv)), facts, config.activations[-1])


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
    signature = file_signature(path)
    if signature is None:
        return [], ""
    return _commands_of_version(str(path), signature)


@lru_cache(maxsize=32)
def _commands_of_version(path: str, signature: Signature) -> tuple[list[Command], str]:
    try:
        return read_commands(Path(path))[-RECENT_COMMANDS:], ""
    except NnobsError as err:
        return [], str(err)


def chart_frames(view: RunView, smoothing: float, log_scale: bool = True) -> dict[str, pd.DataFrame]:
    """The data of every chart the page draws, by chart; what a refresh sends to the browser.

    Every chart over batches also gets two invisible rows at the run's first and latest batch, so
    they all span the same whole run. The loss frame is empty while fewer than two batches have a
    loss to draw: the page shows charts.LOSS_PENDING instead of the chart; a metric's ("metric:NAME")
    likewise, and the page says what it has (charts.metric_pending).
    """
    over_batches = {"sv_lines": view.sv_lines, "sv_heat": view.sv_heat}
    if not view.sampled:  # steps of a sample would read as the net's: the Layers view has each tensor's change
        over_batches |= {"step_lengths": view.step_lengths, "step_cosines": view.step_cosines}
    tests = [view.test[0]] if view.test is not None else []
    shown = [
        frame
        for frame in (view.loss, *tests, *(points for points, _ in view.metrics.values()), *over_batches.values())
        if frame is not None
    ]
    batches = batch_range(view.status.batch, shown)
    loss = loss_chart_frame(view.loss, view.loss_means, view.markers, smoothing, log_scale, batches)
    if view.test is not None:
        loss = with_test_loss(loss, *view.test, view.markers, smoothing, log_scale, batches)
    frames = {"loss": with_batch_range(loss, batches) if len(loss) else loss}
    for name, (points, means) in (view.metrics | view.system).items():
        metric = loss_chart_frame(points, means, view.markers, smoothing, False, batches)
        frames[f"metric:{name}"] = with_batch_range(metric, batches) if len(metric) else metric
    for name, frame in over_batches.items():
        if frame is not None:
            frames[name] = with_batch_range(frame, batches)
    if view.surface is not None:
        frames["surface"] = view.surface
    return frames


class SharedViews:
    """Every session's view of a run and its chart data, built once per refresh by the first session to ask.

    Ten people watching one run would otherwise each fold the run file, build the frames and turn
    them into Arrow tables on every tick. Here the first session past the view's age builds it,
    the others wait on its lock and take the same objects, so each chart gets the very same table,
    its message hashes the same when nothing changed, and Streamlit sends a browser that has it a
    reference instead of the data (its forward-message cache, for messages of 10 kB or more).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, _SharedEntry] = {}

    def view(self, run: RunDir, watcher: RunWatcher, config: RunConfig | None, max_age_s: float) -> RunView:
        """The run's view, built anew only when the one held is older than max_age_s."""
        entry = self._entry(str(run.path))
        with entry.lock:
            now = time.monotonic()
            if entry.view is None or now - entry.built_at > max_age_s:
                entry.view, entry.built_at, entry.tables = build_view(run, watcher, config), now, {}
            return entry.view

    def tables(self, run: RunDir, view: RunView, smoothing: float, log_scale: bool) -> dict[str, pa.Table]:
        """chart_frames(view, ...) as Arrow tables, made once per view and settings; what the charts are handed."""
        entry = self._entry(str(run.path))
        with entry.lock:
            if entry.view is not view:  # a view built since: this session's is not the one held
                return as_tables(chart_frames(view, smoothing, log_scale))
            key = (smoothing, log_scale)
            if key not in entry.tables:
                if len(entry.tables) >= MAX_SETTINGS_HELD:
                    entry.tables.clear()
                entry.tables[key] = as_tables(chart_frames(view, smoothing, log_scale))
            return entry.tables[key]

    def _entry(self, path: str) -> _SharedEntry:
        with self._lock:
            now = time.monotonic()  # views nobody drew for as long as an idle reader is kept go with it
            for stale in [p for p, e in self._entries.items() if e.view is not None and now - e.built_at > VIEW_KEPT_S]:
                del self._entries[stale]
            return self._entries.setdefault(path, _SharedEntry())


VIEW_KEPT_S = 120.0  # as watchers.RELEASE_AFTER_S
MAX_SETTINGS_HELD = 8  # (smoothing, log scale) pairs whose tables a view keeps: sessions mostly share one or two


@dataclass
class _SharedEntry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    view: RunView | None = None
    built_at: float = 0.0  # time.monotonic() when view was built
    tables: dict[tuple[float, bool], dict[str, pa.Table]] = field(default_factory=dict)


def as_tables(frames: dict[str, pd.DataFrame]) -> dict[str, pa.Table]:
    """Frames as the Arrow tables Streamlit would make of them on every call, made here once."""
    return {name: pa.Table.from_pandas(frame, preserve_index=False) for name, frame in frames.items()}
