"""The Streamlit page: the run named in the URL, its live status and charts, and the sidebar that steers it."""

from __future__ import annotations

import time

import streamlit as st

from nnobs import charts
from nnobs.control import check_command, send_command
from nnobs.errors import NnobsError
from nnobs.history import RunWatcher
from nnobs.runs import DEFAULT_RUN, RunDir, RunStatus, create_run, log_tail, restart_worker, start_worker
from nnobs.tasks import load_config, parameter_names
from nnobs.view import RunView, build_view

STATE_COLORS = {"training": "green", "idle": "blue", "stopped": "gray", "crashed": "red", "absent": "gray"}


@st.cache_resource(show_spinner=False)
def _watcher(run_file: str) -> RunWatcher:
    """One reader per run file for the whole server: every session sees the same history, read once."""
    return RunWatcher(run_file)


def _open_run() -> RunDir:
    name = st.query_params.get("run", DEFAULT_RUN)
    try:
        run = RunDir.named(name)
        create_run(run)
    except NnobsError as err:
        st.error(str(err))
        st.stop()
    return run


def _send(run: RunDir, cmd: str, value=None) -> None:
    """Check a command as the worker would, then queue it; a refused value is explained and nothing is sent."""
    try:
        value = check_command(cmd, value)
        command = send_command(run.control_file, cmd, value, by="page")
    except NnobsError as err:
        st.sidebar.error(str(err))
        return
    st.toast(f"Sent {cmd}{'' if value is None else f' = {value:,}'}: waiting for the worker")
    st.session_state.setdefault("sent", []).append(command["id"])


def _sidebar(run: RunDir, view: RunView) -> None:
    bar = st.sidebar
    bar.header("Training")
    with bar.form("target_form", border=False):
        target = st.number_input(
            "Target batches", min_value=0, step=1000, value=int(view.status.target or 0),
            help="Train until the batch count reaches this, then idle.",
        )
        if st.form_submit_button("Set target"):
            _send(run, "target", int(target))
    with bar.form("eta_form", border=False):
        eta = st.number_input(
            "Learning rate (eta)", value=float(view.status.eta or 0.1), format="%.6g", step=0.01,
            help="Step size of gradient descent; must be above 0.",
        )
        if st.form_submit_button("Set eta"):
            _send(run, "eta", float(eta))
    with bar.form("report_form", border=False):
        every = st.number_input(
            "State report every N batches", min_value=0, step=100, value=int(view.report_every or 0),
            help="How often the worker reports the full state vector; 0 reports only on request.",
        )
        if st.form_submit_button("Set interval"):
            _send(run, "report_every", int(every))

    bar.header("Actions")
    if bar.button("Tell state now", help="Ask the worker for its state vector at once."):
        _send(run, "tell_state")
    if bar.button("Shut down", help="Stop the worker cleanly after a final checkpoint; Start brings it back."):
        if view.status.state in ("training", "idle"):
            _send(run, "shutdown")
        else:
            bar.info(f"No worker is running ({view.status.state}): nothing to shut down.")
    if bar.button("Start / restart", help="Start the worker, or stop and restart it; it resumes from its last checkpoint."):
        with st.spinner("Starting the worker…"):
            try:
                restart_worker(run)
            except NnobsError as err:
                bar.error(str(err))

    bar.header("View")
    bar.number_input("Refresh every (s)", min_value=0.2, max_value=60.0, value=1.0, step=0.5, key="refresh_s")
    bar.toggle("Log-scale loss", value=True, key="log_loss")


def _status_row(status: RunStatus) -> None:
    st.html("<style>[data-testid='stMetricValue'] {font-size: 1.5rem;}</style>")  # six figures fit one row
    st.badge(status.state.upper() + (" · DIVERGED" if status.diverged else ""), color=STATE_COLORS[status.state])
    cols = st.columns(6)
    cols[0].metric("Batch", f"{status.batch:,}")
    cols[1].metric("Target", "-" if status.target is None else f"{status.target:,}")
    cols[2].metric("Loss", "diverged" if status.diverged else "-" if status.loss is None else f"{status.loss:.3g}")
    cols[3].metric("Eta", "-" if status.eta is None else f"{status.eta:g}")
    cols[4].metric("Generation", "-" if status.generation is None else status.generation)
    age = status.heartbeat_age_s
    cols[5].metric("Last heartbeat", "-" if age is None else f"{age:.1f} s")


def _commands(view: RunView) -> None:
    """Recent commands from everyone, each pending until the worker answers it, then its outcome."""
    if view.control_error:
        st.warning(view.control_error)
    if not view.recent:
        return
    alive = view.status.state in ("training", "idle")
    mine = set(st.session_state.get("sent", []))
    lines = []
    for command, answer in view.recent:
        value = "" if command.get("value") is None else f" = {command.get('value')}"
        who = "you" if command.get("id") in mine else command.get("by") or "someone"
        if answer is None:
            outcome = "⏳ pending" + ("" if alive else " (starts with the next worker)")
        elif answer.ok:
            outcome = f"✅ done at batch {answer.batch:,}"
        else:
            outcome = f"❌ rejected: {answer.reason}"
        lines.append(f"- `{command.get('cmd')}{value}` by {who}: {outcome}")
    with st.expander("Commands", expanded=True):
        st.markdown("\n".join(lines))


def _charts(view: RunView, log_loss: bool) -> None:
    """The charts: their specs never change during a run, so the browser only swaps in the new data."""
    if len(view.loss):
        st.vega_lite_chart(view.loss, charts.loss_spec(log_loss), width="stretch")
    if view.sv_lines is not None:
        left, right = st.columns(2)
        left.vega_lite_chart(view.sv_lines, charts.sv_lines_spec(view.sv_names[: charts.MAX_SV_LINES]), width="stretch")
        right.vega_lite_chart(view.sv_heat, charts.sv_heatmap_spec(view.sv_names), width="stretch")


def _live(run: RunDir, names: list[str]) -> None:
    """Status, command outcomes and charts, re-read from the run file on every tick."""
    view = build_view(run, _watcher(str(run.run_file)), names)
    _status_row(view.status)
    if view.status.state == "crashed":
        reason = f": {view.status.error}" if view.status.error else " without a shutdown record"
        st.error(f"The worker died{reason}. Start / restart resumes from its last checkpoint.")
        st.code(log_tail(run) or "(worker.log is empty)", language=None)
    _commands(view)
    _charts(view, st.session_state.get("log_loss", True))
    st.caption(f"Updated {time.strftime('%H:%M:%S')} · {view.n_records:,} records · {run.run_file}")


def main() -> None:
    st.set_page_config(page_title="nnobs", layout="wide")
    run = _open_run()
    try:
        names = parameter_names(load_config(run.config))
    except (NnobsError, OSError) as err:
        st.error(f"{run.config}: {err}")
        names = []
    view = build_view(run, _watcher(str(run.run_file)), names)
    if view.never_ran:  # a new run starts on first sight; a stopped or crashed one waits for a person to start it
        try:
            start_worker(run)
            view = build_view(run, _watcher(str(run.run_file)), names)
        except NnobsError as err:
            st.error(str(err))
    st.title(f"nnobs · {run.name}")
    _sidebar(run, view)
    st.fragment(run_every=st.session_state.get("refresh_s", 1.0))(_live)(run, names)
