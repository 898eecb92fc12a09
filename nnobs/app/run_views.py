"""The run page's views under the loss chart: a replay slider, and tabs for the parameters, the layers, the
neurons and the path through parameter space.

Only the open tab's code runs (the tabs track their state, in the URL as ?view=...), so views nobody
looks at cost nothing; what a view draws is made once per shared view (RunView.made) or once per state
vector (lru caches), for every session alike.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import streamlit as st

from nnobs.protocol.schema import FULL_STATE_MAX_PARAMS
from nnobs.views import charts, layer_charts, neurons, trajectory
from nnobs.views.frames import MAX_SV_LINES, with_replay_mark
from nnobs.views.view import RunView, as_tables, surface_of

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
    for tab, draw_tab in zip(st.tabs(list(shown), key="view", bind="query-params"), shown.values()):
        if tab.open:
            with tab:
                draw_tab(view, frames, replay_at)


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
    lines_shown, heat_shown = view.sv_shown
    if view.sampled:
        st.caption(
            f"Nets of more than {FULL_STATE_MAX_PARAMS:,} parameters report {heat_shown}, spread over every tensor "
            "and the same at every state report; their names say where each sits (tensor[row,column])."
        )
    reported = view.sv_lines["batch"].unique() if view.sv_lines is not None else []
    if len(reported) == 1:  # one point per parameter draws no line: the frame alone would read as a broken chart
        st.caption(
            f"One state report so far, at batch {int(reported[0]):,}: the parameters' lines start with the second."
        )
    tall = max(380, 120 + 14 * min(len(view.sv_names), 80))  # a heatmap row per parameter, readable
    lines = charts.sv_lines_spec(view.sv_names[:MAX_SV_LINES], lines_shown)
    heat = charts.sv_heatmap_spec(view.sv_names, heat_shown)
    lines_data = frames["sv_lines"] if replay_at is None else with_replay_mark(frames["sv_lines"], replay_at)
    left, right = st.columns(2)
    left.vega_lite_chart(lines_data, lines, width="stretch", height=tall)
    right.vega_lite_chart(frames["sv_heat"], heat, width="stretch", height=tall)
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
        left.vega_lite_chart(made["norm"], layer_charts.norm_spec(view.tensors), width="stretch", height=340)
    if "update" in made:
        right.vega_lite_chart(made["update"], layer_charts.update_spec(view.tensors), width="stretch", height=340)
    else:
        right.caption("The update-to-weight ratio comes with the next state report the batch schedule asks for.")
    if "dead" in made and view.config is not None:  # dead units are counted in a built-in net's relu layers alone
        widest = max(view.config.sizes[1:])
        st.vega_lite_chart(made["dead"], layer_charts.dead_spec(relu, widest), width="stretch", height=240)
    if "bands" in made:
        drawn = view.tensors[: layer_charts.MAX_BAND_TENSORS]
        if len(drawn) < len(view.tensors):
            st.caption(f"The distributions of the first {len(drawn)} of {len(view.tensors)} tensors.")
        st.vega_lite_chart(made["bands"], layer_charts.bands_spec(drawn), width="content")


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
        left.vega_lite_chart(frames["step_lengths"], charts.steps_spec("length"), width="stretch", height=220)
        right.vega_lite_chart(frames["step_cosines"], charts.steps_spec("cosine"), width="stretch", height=220)


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
