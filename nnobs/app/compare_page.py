"""The compare page: runs picked in the URL (?runs=a&runs=b), their curves overlaid in fixed colours, what differs."""

from __future__ import annotations

import dataclasses
import html
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import streamlit as st

from nnobs.app import widgets
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import SETTINGS_MOST_BYTES, read_text
from nnobs.protocol.population import Journal, load_population, population_names
from nnobs.protocol.population import folder_of as population_folder
from nnobs.protocol.rundir import RunDir, list_runs, script_description
from nnobs.reading.origin import created_at, fork_origin
from nnobs.reading.series import RECENT_BATCHES
from nnobs.reading.shared_readers import curves_for
from nnobs.training.builtin.tasks import load_config
from nnobs.views import charts, wording
from nnobs.views.compare import (
    AXES,
    Curves,
    curve_frame,
    curves_of_history,
    differing_settings,
    figures_frame,
    settings_of,
)
from nnobs.views.family_tree import family_tree, jumps, lineage_line, member_lines, replay_command, schedule_frame
from nnobs.views.palette import assign
from nnobs.views.vegalite import log_batches_by_default, with_batch_scale
from nnobs.views.view import surface_of

SHARED_FOR_S = 0.5  # every session's comparison of the same runs is read at most this often
SURFACES_PER_ROW = 4


def compare_page() -> None:
    st.markdown("## nnobs · compare runs")
    names = list_runs()
    picked = st.multiselect(
        "Runs",
        names,
        key="runs",
        bind="query-params",
        placeholder="Pick two or more runs",
        help="The page's address names the runs picked: share it and a teammate sees the same comparison.",
    )
    left, middle, right = st.columns([2, 3, 2])
    axis = left.segmented_control(
        "x axis",
        list(AXES),
        format_func=lambda axis: AXES[axis],
        default="auto",
        key="compare_x",
        bind="query-params",
        required=True,
    )
    smoothing = middle.slider(
        "Smoothing",
        0.0,
        0.99,
        0.6,
        0.01,
        key="compare_smoothing",
        help="Exponential moving average, as on the run page; 0 is off.",
    )
    log_scale = right.toggle("Log-scale loss", value=True, key="compare_log")
    if len(picked) < 1:
        st.info(
            "Pick runs above to compare their loss and test loss; the runs' page has a link for a fork and its parent."
        )
        return
    refresh_s = st.session_state.get("refresh_s", 1.0)
    if refresh_s not in widgets.REFRESH_CHOICES:
        refresh_s = 1.0
    st.fragment(run_every=refresh_s)(_live)(tuple(picked), axis or "auto", smoothing, log_scale)


def _live(picked: tuple[str, ...], axis: str, smoothing: float, log_scale: bool) -> None:
    colours = assign(picked, lambda name: created_at(RunDir.named(name)))
    ordered = tuple(colours)  # in the order the runs were created: the legend's and the table's order
    tick = int(time.monotonic() / SHARED_FOR_S)
    curves = _shared_curves(ordered, tick)
    spec_colours = tuple(colours[name][0] for name in ordered)
    dashes = tuple(colours[name][1] for name in ordered)
    if axis == "time" and any(c.times is None for c in curves.values()):
        st.caption(
            "Wall time is not known for "
            + ", ".join(f"`{n}`" for n, c in curves.items() if c.times is None)
            + ": they are left out of the time axis."
        )
    frames = _shared_frames(ordered, smoothing, log_scale, tick)
    plotted = frames["loss"].column("batch").to_numpy() if len(frames["loss"]) else np.empty(0, np.int64)
    latest = max((c.batch for c in curves.values()), default=0)
    log_batches = axis == "log" or (axis == "auto" and log_batches_by_default(plotted, latest))
    for name in population_names():
        _family_tree(name, ordered, curves, colours)
    left, right = st.columns(2)
    for column, series, title in ((left, "loss", "Training loss"), (right, "test", "Test loss")):
        frame = frames[series]
        if not len(frame):
            column.caption(f"**{title}**: none of these runs has reported one yet.")
            continue
        missing = [name for name in ordered if not len(getattr(curves[name], series))]
        column.vega_lite_chart(
            frame,
            with_batch_scale(
                charts.compare_spec(
                    title, "time" if axis == "time" else "batch", log_scale, ordered, spec_colours, dashes
                ),
                log_batches and axis != "time",
            ),
            width="stretch",
            height=380,
        )
        if missing:
            column.caption(f"No {title.lower()} yet from " + ", ".join(f"`{n}`" for n in missing) + ".")
    _figures_table(curves, colours)
    _settings_table(ordered, colours)
    _surfaces(ordered, colours)


@st.cache_resource(show_spinner=False, max_entries=8)
def _shared_curves(ordered: tuple[str, ...], tick: int) -> dict[str, Curves]:
    """The runs' curves, read once per tick for every session comparing the same runs."""
    return {name: _curves(RunDir.named(name)) for name in ordered}


@st.cache_resource(show_spinner=False, max_entries=8)
def _shared_frames(ordered: tuple[str, ...], smoothing: float, log_scale: bool, tick: int) -> dict[str, pa.Table]:
    """Both charts' data as Arrow tables, made once per tick for every session with the same runs and settings."""
    curves = _shared_curves(ordered, tick)
    return {
        series: pa.Table.from_pandas(curve_frame(curves, series, smoothing, log_scale), preserve_index=False)
        for series in ("loss", "test")
    }


def _curves(run: RunDir) -> Curves:
    return curves_of_history(curves_for(run.run_file))


def _family_tree(name: str, ordered: tuple[str, ...], curves: dict[str, Curves], colours: dict) -> None:
    """A population two or more of whose members are compared, as one picture: its family tree."""
    folder = population_folder(None, name)
    try:
        population = load_population(folder)
    except NnobsError:
        return
    shown = tuple(member for member in ordered if member in population.members)
    if len(shown) < 2:
        return
    journal = Journal(folder / "decisions.jsonl")
    members = {member: curves[member] for member in shown}
    tree = family_tree(population, journal, max(c.batch for c in members.values()))
    series, title = ("test", "Test loss") if population.metric == "test_loss" else ("loss", "Training loss")
    lines = member_lines(members, series)
    frame = pd.concat(
        [
            lines.assign(layer="member"),
            jumps(journal).assign(layer="jump"),
            lineage_line(tree, lines).assign(layer="lineage"),
        ],
        ignore_index=True,
    )
    st.subheader(f"Population {name}")
    exploited = sum(len(journal.exploits(index)) for index in journal.decided)
    rounds = len(population.round_ends()) - 1
    state = (
        f"Done: {exploited} exploits in {rounds} rounds."
        if tree.done
        else (f"{tree.rounds} of {rounds} rounds decided, {exploited} exploits so far.")
    )
    st.caption(
        f"{len(population.members)} members, etas drawn from {population.eta_range[0]:g} to {population.eta_range[1]:g}; "
        f"every {population.interval:,} batches the bottom {population.quantile:.0%} by {population.metric} take a "
        f"top member's checkpoint and a perturbed eta. {state}" + (f" Best: **{tree.best}**." if tree.best else "")
    )
    left, right = st.columns([3, 2])
    left.vega_lite_chart(
        frame,
        charts.family_tree_spec(title, shown, tuple(colours[m][0] for m in shown), tree.best),
        width="stretch",
        height=360,
    )
    schedule = schedule_frame(tree)
    if len(schedule):
        right.vega_lite_chart(schedule, charts.schedule_spec(), width="stretch", height=360)
        right.caption("Replay this schedule as an ordinary run:")
        try:
            config = load_config(RunDir.named(shown[0]).config)
        except (NnobsError, OSError):
            return
        command = replay_command(f"{name[:57]}-replay", dataclasses.replace(config, target=population.target), tree)
        right.code(command, language="bash", wrap_lines=True)


def _config_text(run: RunDir) -> str | None:
    """The run's config.json; None for a script's run, or a file that is not one (its status names it)."""
    try:
        return read_text(run.config, SETTINGS_MOST_BYTES)
    except (OSError, UnicodeDecodeError):
        return None


def _figures_table(curves: dict[str, Curves], colours: dict) -> None:
    """Each run's figures, to compare by number: the loss as the mean of its newest batches, and when it was tested."""
    table = figures_frame(curves)
    table.insert(0, "colour", ["■"] * len(table))
    styled = table.style.apply(lambda _: [f"color: {colours[name][0]}" for name in table.index], subset=["colour"])
    st.dataframe(
        styled,
        width="stretch",
        column_config={
            "colour": st.column_config.TextColumn("", width=30),
            "batch": st.column_config.NumberColumn("batch", format="localized"),
            "loss": st.column_config.NumberColumn(
                "loss", format="%.3g", help=f"The mean over the newest {RECENT_BATCHES} batches or more."
            ),
            "best loss": st.column_config.NumberColumn(
                "best loss", format="%.3g", help="The lowest that mean has been."
            ),
            "test loss": st.column_config.NumberColumn("test loss", format="%.3g"),
            "tested at": st.column_config.NumberColumn(
                "tested at", format="localized", help="The batch the test loss was measured at."
            ),
        },
    )


def _settings_table(ordered: tuple[str, ...], colours: dict) -> None:
    settings = {}
    for name in ordered:
        run = RunDir.named(name)
        config = _config_text(run)
        script = wording.served_by(script_description(run)) if config is None else None
        settings[name] = settings_of(config, fork_origin(run), script)
    table = differing_settings(settings)
    st.subheader("Settings that differ")
    if not len(table.columns):
        st.caption("These runs were started with the same settings.")
        return
    table.insert(0, "colour", ["■"] * len(table))
    styled = table.style.apply(lambda _: [f"color: {colours[name][0]}" for name in table.index], subset=["colour"])
    st.dataframe(styled, width="stretch", column_config={"colour": st.column_config.TextColumn("", width=30)})


@st.cache_resource(show_spinner=False, max_entries=64)
def _surface_at(path: str, stamp: int) -> tuple[int, object] | None:
    """(batch, surface frame) of a run's checkpoint as it was at stamp (its mtime), for nets with 2 inputs."""
    run = RunDir(Path(path))
    try:
        config = load_config(run.config)
        if config.sizes[0] != 2:  # asked before the checkpoint is read: a large net's is megabytes
            return None
        checkpoint = load_checkpoint(run.checkpoint, most_state_bytes=config.n_params * 8)  # float64s
    except (NnobsError, OSError):
        return None
    if checkpoint is None or checkpoint.sv is None:
        return None
    return checkpoint.batch, surface_of(config.to_json(), checkpoint.sv.tobytes())


def _surfaces(ordered: tuple[str, ...], colours: dict) -> None:
    """The decision surfaces of the runs with 2 inputs, side by side, from each one's latest checkpoint."""
    shown = []
    for name in ordered:
        run = RunDir.named(name)
        try:
            stamp = os.lstat(run.checkpoint).st_mtime_ns
        except OSError:
            continue  # no checkpoint yet, or a script's run
        if batch_and_surface := _surface_at(str(run.path), stamp):
            shown.append((name, *batch_and_surface))
    if not shown:
        return
    st.subheader("Decision surfaces")
    st.caption("Each net's output over the input plane at its latest checkpoint, with the task's points on top.")
    for row in range(0, len(shown), SURFACES_PER_ROW):
        for column, (name, batch, surface) in zip(st.columns(SURFACES_PER_ROW), shown[row : row + SURFACES_PER_ROW]):
            colour = colours[name][0]
            column.html(f'<span style="color:{colour}">■</span> <b>{html.escape(name)}</b> at batch {batch:,}')
            column.vega_lite_chart(surface, charts.surface_spec(""), width="stretch", height=260)
