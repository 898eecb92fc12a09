"""The run page's views under the loss chart: a replay slider, and tabs for the parameters, the layers, the
neurons and the path through parameter space.

Only the open tab's code runs (the tabs track their state, in the URL as ?view=...), so views nobody
looks at cost nothing; what a view draws is made once per shared view (RunView.made) or once per state
vector (lru caches), for every session alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import streamlit as st

from nnobs.protocol.schema import FULL_STATE_MAX_PARAMS, SYSTEM_METRIC
from nnobs.training.builtin.tasks import tensors as config_tensors
from nnobs.views import charts, layer_charts, neurons, trajectory, wording
from nnobs.views.frames import MAX_SV_LINES, layer_of, spread_sv_frames, with_batch_range, with_replay_mark
from nnobs.views.vegalite import LOG_BATCHES_SPAN, log_batches_by_default, with_batch_scale
from nnobs.views.view import RunView, as_tables, surface_of
from nnobs.views.wording import as_text

LIVE = "live"
NEWEST = 2**62  # a batch past any run's: the newest state kept


def draw(view: RunView, frames: dict[str, pa.Table]) -> None:
    """The replay control, then the tabs, each drawn only while open."""
    replay_at = replay_control(view)
    shown = {
        "Parameters": draw_parameters,
        "Layers": draw_layers,
        "Neurons": draw_neurons,
        "Trajectory": draw_trajectory,
    }
    if neurons.drawable(view.config):
        del shown["Neurons"]  # only a small built-in net with 2 inputs has unit maps to draw
    if view.system:
        shown["System"] = draw_system
    for tab, draw_tab in zip(st.tabs(list(shown), key="view", bind="query-params"), shown.values()):
        if tab.open:
            with tab:
                draw_tab(view, frames, replay_at)


BATCH_AXES = ("auto", "log", "linear")


def batch_axis_control(view: RunView) -> bool:
    """The one control of the batch axis of every chart over batches: auto, log or linear; whether it is log now."""
    st.radio(
        "Batch axis (every chart over batches)",
        BATCH_AXES,
        horizontal=True,
        key="batch_axis",
        help=f"auto: log once the latest batch is over {LOG_BATCHES_SPAN:,} times the first plotted after 0, else "
        "linear. A log axis has no batch 0: it starts at batch 1.",
    )
    return log_batches(view)


def log_batches(view: RunView) -> bool:
    """Whether the charts over batches are on a log batch axis, as batch_axis_control sets it. Auto is log once the
    run spans decades of batches, so that a fast run's first seconds, where it learns, are not a vertical line at
    the axis's left edge."""
    chosen = st.session_state.get("batch_axis", "auto")
    if chosen == "auto":
        return log_batches_by_default(view.loss["batch"].to_numpy(), view.status.batch)
    return chosen == "log"


def replay_control(view: RunView) -> int | None:
    """A slider over the batches whose states are kept, "live" at its right end; the batch replayed, or None.

    The slider's own value is what is replayed, live by default, so that a slider that lost its value falls back to
    the newest state and never to the run's first. The server never pushes a value into it: the browser's runs
    (the timer's among them) that started before the push would carry the old value back. When the server must
    move it (the Live button, a replayed state thinned away as the run grew) it makes a fresh slider under a new
    key (_reset_replay), and whatever the browser still holds for the old one is dropped.
    """
    batches = view.state_batches.tolist()
    if len(batches) < 2:
        return None
    at = st.session_state.get(_replay_key(), LIVE)
    if at != LIVE and at not in set(batches):  # thinned away as the run grew: the nearest state before it
        earlier = [b for b in batches if b <= at]
        at = earlier[-1] if earlier else batches[0]
        _reset_replay(at)
    left, right = st.columns([6, 1], vertical_alignment="bottom")
    left.select_slider(
        "Replay",
        [*batches, LIVE],
        value=LIVE,
        key=_replay_key(),
        format_func=lambda b: "live" if b == LIVE else f"batch {b:,}",
        help="Show the decision surface, the neuron maps and the marks on the parameters' lines and the path as they "
        f"were at a past state report ({len(batches):,} kept, spread over the run); live follows the newest.",
    )
    right.button("Live", on_click=_reset_replay, disabled=at == LIVE, width="stretch")
    # Said live or not, so that the page keeps its shape while the slider moves: elements that come and go under
    # quick reruns can leave the browser's page out of step with the server's.
    if at == LIVE:
        st.caption(
            f"Live: the views show the newest state, at batch {batches[-1]:,}. Move the slider to see an earlier one."
        )
        return None
    st.caption(
        f"Replaying the state reported at batch {at:,} (the newest is at batch {batches[-1]:,}): the surface, the "
        "neuron maps, the red line on the state vector's lines and the ringed point on the path show it."
    )
    return at


def _replay_key() -> str:
    return f"replay-{st.session_state.get('replay_resets', 0)}"


def _reset_replay(at: int | None = None) -> None:
    """A fresh replay slider from this run on: live, or at the batch given."""
    st.session_state["replay_resets"] = st.session_state.get("replay_resets", 0) + 1
    if at is not None:
        st.session_state[_replay_key()] = at


def _shown_state(view: RunView, replay_at: int | None) -> tuple[int, np.ndarray] | None:
    return view.state_at(NEWEST if replay_at is None else replay_at)


def draw_parameters(view: RunView, frames: dict[str, pa.Table], replay_at: int | None) -> None:
    """Every parameter's trajectory (lines and a heatmap), and the decision surface of a 2-input net."""
    if "sv_lines" not in frames:
        st.caption("No state report yet: the parameters appear with the first one.")
        return
    shown = parameters_shown(view, frames)
    if not shown.names:  # a script's run given no state: empty charts with a legend of zeros would read as broken
        st.caption(
            "This run reports no parameters: its script gives nnobs.Run no state. `nnobs.torch.attach(model, "
            "optimizer)`, `state=...`, or `wandb.watch(model)` in a W&B script, shows them here."
        )
        return
    if shown.caption:
        st.caption(shown.caption)
    reported = view.sv_lines["batch"].unique() if view.sv_lines is not None else []
    if len(reported) == 1:  # one point per parameter draws no line: the frame alone would read as a broken chart
        st.caption(
            f"One state report so far, at batch {int(reported[0]):,}: the parameters' lines start with the second."
        )
    tall = max(380, 120 + 14 * min(len(shown.names), 80))  # a heatmap row per parameter, readable
    lines = with_batch_scale(charts.sv_lines_spec(shown.names[:MAX_SV_LINES], shown.lines_said), log_batches(view))
    heat = with_batch_scale(charts.sv_heatmap_spec(shown.names, shown.heat_said), log_batches(view))
    lines_data = shown.lines if replay_at is None else with_replay_mark(shown.lines, replay_at)
    left, right = st.columns(2)
    left.vega_lite_chart(lines_data, lines, width="stretch", height=tall)
    right.vega_lite_chart(shown.heat, heat, width="stretch", height=tall)
    if "surface" not in frames:
        return
    surface, said = frames["surface"], "The net's output over the input plane, at its latest state."
    state = _shown_state(view, replay_at) if replay_at is not None else None
    if state is not None and view.config is not None:  # a surface is drawn of a built-in net's config alone
        surface = as_tables({"surface": surface_of(view.config.to_json(), state[1].tobytes())})["surface"]  # as the
        # latest one is: the same columns, so the browser swaps the data instead of drawing the chart anew
        said = f"The net's output over the input plane, at batch {state[0]:,} (replayed)."
    left, _ = st.columns(2)
    # One title whatever the state shown: a chart whose spec changes is drawn anew, and a redraw can fail under the
    # quick reruns of a moving slider.
    left.vega_lite_chart(surface, charts.surface_spec("Decision surface"), width="stretch", height=440)
    left.caption(said)


@dataclass
class ParametersShown:
    """What the parameter charts draw: their tables, the parameters, and what the charts and a caption say of them."""

    lines: pa.Table  # batch, layer, parameter, value: MAX_SV_LINES parameters at most
    heat: pa.Table  # batch, batch_end, parameter, value
    names: tuple[str, ...]  # the heatmap's parameters, in state-vector order
    lines_said: str  # which parameters the lines are, in words: the lines chart's subtitle
    heat_said: str  # the heatmap's
    caption: str  # what the charts leave out or how they chose, in words; "" when they show every parameter


def parameters_shown(view: RunView, frames: dict[str, pa.Table]) -> ParametersShown:
    """The history's parameter trajectories; or, for a net whose trajectories kept leave layers out (its first
    SV_KEPT parameters), as many parameters spread over every tensor, drawn from the states kept for replay."""
    as_kept = ParametersShown(frames["sv_lines"], frames["sv_heat"], view.sv_names, *view.sv_shown, "")
    if view.sampled:
        as_kept.caption = (
            f"Nets of more than {FULL_STATE_MAX_PARAMS:,} parameters report {view.sv_shown[1]}, spread over every "
            "tensor and the same at every state report; their names say where each sits (tensor[row,column])."
        )
        return as_kept
    drawn, left_out = _tensors_drawn(view)
    if not left_out:
        return as_kept
    spread = view.made("sv_spread", lambda history: _spread_parameters(history, view, frames["sv_lines"]))
    if spread is None:  # no whole states kept: say what is left out
        as_kept.caption = (
            f"The charts draw the first {len(view.sv_names):,} parameters in the net's order, tensors "
            f"{as_text(', '.join(drawn))}; not {as_text(', '.join(left_out))}. The Layers view shows every tensor."
        )
        return as_kept
    return spread


def _tensors_drawn(view: RunView) -> tuple[list[str], list[str]]:
    """The net's tensors the history's trajectories draw (its first SV_KEPT parameters) and those they leave out."""
    drawn = list(dict.fromkeys(layer_of(name) for name in view.sv_names))
    known = config_tensors(view.config) if view.config is not None else []  # a run file without summaries yet
    tensors = view.tensors or tuple(name for name, _ in known)
    return drawn, [tensor for tensor in tensors if tensor not in drawn]


def _spread_parameters(history, view: RunView, kept_lines: pa.Table) -> ParametersShown | None:
    """Parameters spread over every tensor, from the states kept for replay (spread_sv_frames); None without them.
    Made once per view, for every session."""
    tensors = history.tensors or (config_tensors(view.config) if view.config is not None else None)
    if history.archive is None or not tensors:
        return None
    batches, vectors = history.archive.kept()
    if vectors.shape[1] != sum(int(np.prod(shape)) for _, shape in tensors):
        return None
    lines, heat, names = spread_sv_frames(batches, vectors, [(name, tuple(shape)) for name, shape in tensors])
    low, high = (int(v.as_py()) for v in pc.min_max(kept_lines["batch"]).values())  # the run's, its extent rows
    tables = as_tables({"lines": with_batch_range(lines, (low, high)), "heat": with_batch_range(heat, (low, high))})
    total, n_lines = vectors.shape[1], len(lines["parameter"].cat.categories)
    return ParametersShown(
        tables["lines"],
        tables["heat"],
        tuple(names),
        f"{n_lines} of {total:,} parameters, spread over every tensor",
        f"{len(names)} of {total:,} parameters, spread over every tensor",
        f"This net has {total:,} parameters: the charts draw {len(names)} of them, spread over every tensor (the "
        f"lines {n_lines} of those), at the states kept for replay; their names say where each sits "
        "(tensor[row,column]).",
    )


def draw_layers(view: RunView, frames: dict[str, pa.Table], replay_at: int | None) -> None:
    """Per tensor: its norm, its update-to-weight ratio per step, the distribution of its values; dead relu units."""
    relu = layer_charts.relu_layers(view.config)
    made = view.made("layers", lambda history: as_tables(layer_charts.layer_frames(history, view.tensors, relu)))
    if not made:
        st.caption(
            "No state report yet: the layers appear with the first one (a run file without its params record, "
            "written before they were reported, has none)."
        )
        return
    st.caption(
        "Each tensor of the net at every state report. A step that moves a tensor by far more than a thousandth "
        "of its norm is large (the rule of thumb: about 1e-3), far less and that tensor barely learns."
    )
    left, right = st.columns(2)
    if "norm" in made:
        norm = with_batch_scale(layer_charts.norm_spec(view.tensors), log_batches(view))
        left.vega_lite_chart(made["norm"], norm, width="stretch", height=340)
    if "update" in made:
        update = with_batch_scale(layer_charts.update_spec(view.tensors), log_batches(view))
        right.vega_lite_chart(made["update"], update, width="stretch", height=340)
    else:
        right.caption("The update-to-weight ratio comes with the next state report the batch schedule asks for.")
    if "dead" in made and view.config is not None:  # dead units are counted in a built-in net's relu layers alone
        widest = max(view.config.sizes[1:])
        dead = with_batch_scale(layer_charts.dead_spec(relu, widest), log_batches(view))
        st.vega_lite_chart(made["dead"], dead, width="stretch", height=240)
    if "bands" in made:
        drawn = view.tensors[: layer_charts.MAX_BAND_TENSORS]
        if len(drawn) < len(view.tensors):
            st.caption(f"The distributions of the first {len(drawn)} of {len(view.tensors)} tensors.")
        st.vega_lite_chart(
            made["bands"], with_batch_scale(layer_charts.bands_spec(drawn), log_batches(view)), width="content"
        )


def draw_neurons(view: RunView, frames: dict[str, pa.Table], replay_at: int | None) -> None:
    """Each unit's output over the input plane, as the net's diagram; the unit under the pointer drawn large."""
    state, config = _shown_state(view, replay_at), view.config
    if state is None or config is None:  # no config, no Neurons tab (draw): only a built-in net has unit maps
        st.caption("No state report yet: the neurons appear with the first one.")
        return
    at = "replayed" if replay_at is not None else "latest"
    st.caption(
        f"What each unit computes over the input plane, at batch {state[0]:,} (the {at} state): blue below 0, red "
        "above, white 0; links drawn by weight, wider for larger, red positive, blue negative. Point at a unit to "
        "see its map large (the net's output until then)."
    )
    table = neurons.neurons_table(config.to_json(), state[1].tobytes())
    st.vega_lite_chart(table, neurons.neurons_spec(config), width="content")


def metric_charts(
    metrics: dict[str, tuple], frames: dict[str, pa.Table], log_batches: bool, ranked: bool = False
) -> None:
    """Each metric its own chart, two to a row; one logged at a single batch says its value. ranked: the machine's
    figures of several ranks, rank 0's titled as such."""
    for row in range(0, len(metrics), 2):
        for column, name in zip(st.columns(2), list(metrics)[row : row + 2]):
            frame, title = frames[f"metric:{name}"], wording.metric_title(name, ranked)
            if len(frame):
                spec = with_batch_scale(charts.metric_spec(name, title, wording.metric_axis_title(name)), log_batches)
                column.vega_lite_chart(frame, spec, width="stretch", height=260)
            else:
                column.caption(charts.metric_pending(title, metrics[name][0]))


def draw_system(view: RunView, frames: dict[str, pa.Table], replay_at: int | None) -> None:
    """The worker's machine over the run: its CPU use and memory, and each GPU's utilisation, memory and
    temperature, sampled about once a second."""
    ranked = any(name.startswith(f"{SYSTEM_METRIC}rank") for name in view.system)  # a job's ranks, rank 0 first
    whose = "Each rank's process (rank 0's first)" if ranked else "The worker's process"
    st.caption(
        f"{whose}, sampled about once a second: its CPU use (100 % is one core busy), its resident memory, and for "
        "each GPU it trains on, utilisation, memory used and temperature (NVIDIA's NVML)."
    )
    metric_charts(view.system, frames, log_batches(view), ranked)


def draw_trajectory(view: RunView, frames: dict[str, pa.Table], replay_at: int | None) -> None:
    """The states projected onto their two principal directions, the loss along them, and the steps between reports."""
    path = view.made("path", _path_parts)
    if path is None:
        st.caption("The path needs two state reports or more.")
    else:
        projection, losses = path
        which = (
            f"the {view.sv_shown[1].split(' of ')[0].removeprefix('a sample of ')} sampled parameters"
            if view.sampled
            else "every parameter"
        )
        st.caption(
            f"The {len(projection.batches):,} kept states of {which}, projected onto the two directions along "
            "which they vary most (PCA); coloured by batch, the ringed point is the state shown."
        )
        frame = trajectory.path_frame(projection, losses, replay_at)
        left, right = st.columns([3, 2])
        spans = int(projection.batches[0]), int(projection.batches[-1])
        left.vega_lite_chart(frame, trajectory.path_spec(projection.explained, spans), width="stretch", height=420)
        right.vega_lite_chart(frame, trajectory.loss_along_spec(), width="stretch", height=200)
    if "step_lengths" in frames:
        left, right = st.columns(2)
        lengths, cosines = (
            with_batch_scale(charts.steps_spec(figure), log_batches(view)) for figure in ("length", "cosine")
        )
        left.vega_lite_chart(frames["step_lengths"], lengths, width="stretch", height=220)
        right.vega_lite_chart(frames["step_cosines"], cosines, width="stretch", height=220)


def _path_parts(history) -> tuple[trajectory.Projection, np.ndarray] | None:
    """The principal path of the kept states and the loss at each: made once per new state, for every session."""
    archive = history.archive
    if archive is None:
        return None
    if "path" not in archive.derived:
        projection = trajectory.principal_path(*archive.kept())
        losses = (
            None
            if projection is None
            else trajectory.losses_at(projection.batches, history.loss_batches.values(), history.loss_values.values())
        )
        archive.derived["path"] = None if projection is None else (projection, losses)
    return archive.derived["path"]
