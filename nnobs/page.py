"""The Streamlit page: the run named in the URL, its live status and charts, and the sidebar that steers it."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import streamlit as st

from nnobs import charts
from nnobs.control import check_command
from nnobs.errors import NnobsError
from nnobs.history import RunWatcher
from nnobs.operators import WrongGuesses, configured_password, may_steer
from nnobs.runs import (
    DEFAULT_RUN,
    STOP_GRACE_S,
    RunDir,
    RunStatus,
    check_run_name,
    create_run,
    list_runs,
    log_tail,
    queue_command,
    restart_worker,
    start_worker,
)
from nnobs.tasks import RunConfig, load_config
from nnobs.view import RunView, build_view, chart_frames, current_status, never_ran

VIEWERS_REFUSED = "Only operators steer this run: sign in with the operator password first."
STATE_COLORS = {"training": "green", "idle": "blue", "stalled": "orange", "stopped": "gray", "crashed": "red",
                "absent": "gray"}
ALIVE = ("training", "idle", "stalled")


@st.cache_resource(show_spinner=False)
def _wrong_guesses() -> WrongGuesses:
    """One count for the whole server: opening more sessions does not buy more guesses."""
    return WrongGuesses()


@st.cache_resource(show_spinner=False)
def _watcher(run_file: str) -> RunWatcher:
    """One reader per run file for the whole server: every session sees the same history, read once."""
    return RunWatcher(run_file)


def _may_steer() -> bool:
    """Whether this session may steer: asked on every draw and again by every action, on the server."""
    try:
        configured = configured_password(st.secrets)
    except NnobsError:
        return False  # _sign_in says why
    return may_steer(st.session_state.get("operator_entered"), configured)


def _open_run(steer: bool) -> RunDir:
    """The run the URL names; operators create it when it does not exist, viewers are told so."""
    name = st.query_params.get("run", DEFAULT_RUN)
    try:
        run = RunDir.named(name)
        if steer:
            create_run(run)
    except NnobsError as err:
        st.error(str(err))
        st.stop()
    if not run.exists():
        _sign_in()
        st.info(f"There is no run named `{run.name}` yet. An operator creates it by opening this address.")
        st.stop()
    return run


def _config(run: RunDir) -> RunConfig | None:
    try:
        return load_config(run.config)
    except (NnobsError, OSError) as err:
        st.error(f"{run.config}: {err}")
        return None


def _send(run: RunDir, cmd: str, value=None) -> None:
    """Check a command as the worker would, then queue it; a refused value is explained and nothing is sent."""
    st.session_state.pop(f"refused_{cmd}", None)
    if not _may_steer():
        st.session_state[f"refused_{cmd}"] = VIEWERS_REFUSED
        return
    try:
        value = check_command(cmd, value)
        command = queue_command(run, cmd, value, by="page")
    except NnobsError as err:
        st.session_state[f"refused_{cmd}"] = str(err)  # shown by its control on every refresh until sent again
        return
    st.toast(f"Sent {cmd.replace('_', ' ')}{'' if value is None else f' {value:,}'}: waiting for the worker")
    st.session_state.setdefault("sent", []).append(command["id"])


# -- sidebar -------------------------------------------------------------------------------


def _run_picker(run: RunDir, steer: bool) -> None:
    bar = st.sidebar
    names = sorted(set(list_runs()) | {run.name})
    choice = bar.selectbox(
        "Run", names, index=names.index(run.name), accept_new_options=steer,
        help="Pick a run" + (", or type a new name to create one" if steer else "") + ". The page's address names the run.",
    )
    if choice and choice != run.name:
        try:
            st.query_params["run"] = check_run_name(choice)
            st.rerun()
        except NnobsError as err:
            bar.error(str(err))
    base = urlsplit(st.context.url or "")
    if base.netloc:
        bar.caption("Share this run (copy button on the right):")
        bar.code(f"{base.scheme}://{base.netloc}{base.path}?run={run.name}", language=None)


def _sign_in() -> None:
    """With an operator password set: a sign-in form for viewers, a sign-out button for operators."""
    bar = st.sidebar
    try:
        configured = configured_password(st.secrets)
    except NnobsError as err:
        bar.error(str(err))
        return
    if configured is None:
        return  # local use: everyone steers
    if _may_steer():
        bar.success("Signed in as operator: you can steer this run.")
        if bar.button("Sign out"):
            st.session_state.pop("operator_entered", None)
            st.rerun()
        return
    bar.info("Read-only view. Steering this run needs the operator password.")
    with bar.form("sign_in", border=False, clear_on_submit=True):
        entered = st.text_input("Operator password", type="password")
        if st.form_submit_button("Sign in"):
            now = time.monotonic()
            if wait := _wrong_guesses().wait_s(now):
                st.error(f"Too many wrong passwords on this server in the last minute: try again in {wait:.0f} s.")
            elif may_steer(entered, configured):
                st.session_state["operator_entered"] = entered
                st.rerun()
            else:
                _wrong_guesses().add(now)
                st.error("Wrong password.")


def _controls(run: RunDir) -> None:
    """Training settings and actions, shown for the run's current state: a fragment of its own, on the timer."""
    if not _may_steer():
        st.rerun()  # the operator password changed since: redraw the whole page as a viewer's
    status = current_status(run, _watcher(str(run.run_file)))
    _training_controls(run, status)
    _actions(run, status)


def _training_controls(run: RunDir, status: RunStatus) -> None:
    st.subheader("Training")
    _setting_form(run, "target", "Target batches", "Set target", int(status.target or 0),
                  "Train until the batch count reaches this, then idle. Raise it to train on.", min_value=0, step=1000)
    _setting_form(run, "eta", "Learning rate (eta)", "Set eta", float(status.eta or 0.1),
                  "Step size of gradient descent; above 0. Too high and the loss diverges.", format="%.6g", step=0.01)
    _setting_form(run, "report_every", "State report every N batches", "Set interval", int(status.report_every or 0),
                  "How often the worker reports the whole state vector; 0 reports only on request.", min_value=0, step=100)


def _setting_form(run: RunDir, cmd: str, label: str, button: str, value, help_text: str, **number_input) -> None:
    """A number and its submit button: typing sends nothing until the button is pressed.

    The input keeps one key and is set through session state when the run's value changes: a
    default that changed would make Streamlit draw a second input beside the first.
    """
    key, shown = f"setting_{cmd}", f"setting_{cmd}_shown"
    if st.session_state.get(shown) != value:  # first draw, or the run's value changed
        st.session_state[key] = st.session_state[shown] = value
    with st.form(f"{cmd}_form", border=False):
        entered = st.number_input(label, key=key, help=help_text, **number_input)
        if st.form_submit_button(button):
            _send(run, cmd, entered)
        _refusal(cmd)


def _refusal(cmd: str) -> None:
    if refused := st.session_state.get(f"refused_{cmd}"):
        st.error(refused)


def _actions(run: RunDir, status: RunStatus) -> None:
    """Actions that fit the run's state."""
    st.subheader("Actions")
    state = status.state
    alive = state in ALIVE
    if st.button("Tell state now", help="Ask the worker for its state vector at once.", disabled=not alive):
        _send(run, "tell_state")
    _refusal("tell_state")
    with st.popover("Shut down…", disabled=not alive, help="Stop the worker cleanly after a final checkpoint."):
        st.write("The worker saves a checkpoint and exits. **Start** brings it back where it stopped.")
        if st.button("Yes, shut down", type="primary"):
            _send(run, "shutdown")
    _refusal("shutdown")
    if alive:
        with st.popover("Restart…", help="Stop the worker and start a new generation from its checkpoint."):
            st.write("The worker stops, then a new generation resumes from the last checkpoint.")
            if st.button("Yes, restart", type="primary"):
                _start(run)
    elif st.button("Start" if state == "stopped" else "Restart", type="primary",
                    help="Start a new worker generation; it resumes from the last checkpoint."):
        _start(run)
    _refusal("start")


def _start(run: RunDir) -> None:
    st.session_state.pop("refused_start", None)
    if not _may_steer():
        st.session_state["refused_start"] = VIEWERS_REFUSED
        return
    with st.spinner("Starting the worker…"):
        try:
            restart_worker(run, by="page")
        except NnobsError as err:
            st.session_state["refused_start"] = str(err)


def _view_controls() -> None:
    bar = st.sidebar
    bar.subheader("View")
    bar.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
               help="Exponential moving average of the loss, bias-corrected like TensorBoard's; 0 is off.")
    bar.toggle("Log-scale loss", value=True, key="log_loss")
    bar.number_input("Refresh every (s)", min_value=0.2, max_value=60.0, value=1.0, step=0.5, key="refresh_s")


def _downloads(run: RunDir) -> None:
    bar = st.sidebar
    bar.subheader("Downloads")
    bar.download_button("Run file (JSON lines)", data=lambda: run.run_file.read_bytes(), file_name=f"{run.name}.jsonl",
                        mime="application/x-ndjson", on_click="ignore")
    bar.download_button("Loss (CSV)", data=lambda: _loss_csv(run), file_name=f"{run.name}-loss.csv", mime="text/csv",
                        on_click="ignore")


def _loss_csv(run: RunDir) -> bytes:
    watcher = _watcher(str(run.run_file))
    with watcher.lock:
        batches, losses = watcher.refresh().loss_series()
        rows = [f"{b},{'' if v != v else repr(float(v))}" for b, v in zip(batches.tolist(), losses.tolist())]
    return ("batch,loss\n" + "\n".join(rows) + "\n").encode()


# -- the live part ---------------------------------------------------------------------------


def _header(run: RunDir, view: RunView) -> None:
    status = view.status
    badge = f":{STATE_COLORS[status.state]}-badge[{status.state.upper()}]"
    if status.diverged:
        badge += " :orange-badge[DIVERGED]"
    st.markdown(f"## nnobs · `{run.name}` {badge}")
    worker = "no worker running" if status.pid is None else f"worker pid {status.pid}"
    st.caption(f"Generation {status.generation or '-'} · {worker} · {run.path}")


def _metrics(view: RunView) -> None:
    status = view.status
    st.html("<style>[data-testid='stMetricValue'] {font-size: 1.45rem;}</style>")  # six figures fit one row
    cols = st.columns(6)
    cols[0].metric("Batch", f"{status.batch:,}")
    rate = view.rate if status.state == "training" else None
    cols[1].metric("Batches/s", "-" if rate is None else f"{rate:,.0f}")
    left = view.seconds_to_target
    cols[2].metric("To target", "-" if left is None else _duration(left))
    loss = "diverged" if status.diverged else "-" if status.loss is None else f"{status.loss:.3g}"
    change = None if view.loss_change is None or status.diverged else f"{100 * view.loss_change:+.1f}%"
    cols[3].metric("Loss", loss, delta=change, delta_color="inverse", help="Change over the last 10 s of training")
    cols[4].metric("Eta", "-" if status.eta is None else f"{status.eta:g}")
    age = status.heartbeat_age_s
    cols[5].metric("Heartbeat", "-" if age is None else f"{age:.1f} s ago", help="Time since the worker's last record")
    if status.target:
        done = min(1.0, status.batch / status.target)
        st.progress(done, text=f"{status.batch:,} of {status.target:,} target batches ({100 * done:.0f}%)")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _problems(run: RunDir, view: RunView) -> None:
    status = view.status
    if status.state == "crashed":
        reason = f": {status.error}" if status.error else " without a shutdown record"
        st.error(f"The worker died{reason}. **Restart** resumes from its last checkpoint. The end of worker.log:")
        st.code(log_tail(run) or "(worker.log is empty)", language=None)
    if status.state == "stalled":
        st.warning(
            f"The worker (pid {status.pid}) holds its lock but has written nothing for "
            f"{status.heartbeat_age_s:.0f} s: it looks stuck. **Restart** asks it to shut down, kills it if it has "
            f"not after {STOP_GRACE_S:.0f} s, and resumes from the last checkpoint."
        )
    if status.diverged:
        st.warning(
            f"The loss diverged (it is no longer a number) at batch {status.batch:,}. Training is paused, back at the "
            "parameters of a recent checkpoint: **lower eta** to train on from there."
        )
    if view.control_error:
        st.warning(view.control_error)


def _commands(view: RunView) -> None:
    """Recent commands from everyone, each pending until the worker answers it, then its outcome."""
    if not view.recent:
        return
    alive = view.status.state in ALIVE
    mine = set(st.session_state.get("sent", []))
    lines = []
    for command, answer in view.recent:
        value = "" if command.get("value") is None else f" = {command.get('value')}"
        who = "you" if command.get("id") in mine else command.get("by") or "someone"
        if answer is None:
            outcome = ":orange[pending]" + ("" if alive else " (waits for the next worker)")
        elif answer.ok:
            outcome = f":green[done at batch {answer.batch:,}]"
        else:
            outcome = f":red[rejected: {answer.reason}]"
        lines.append(f"- `{command.get('cmd')}{value}` by {who}: {outcome}")
    with st.expander("Commands", expanded=True):
        st.markdown("\n".join(lines))


def _charts(view: RunView) -> None:
    """The charts: their specs never change during a run, so the browser only swaps in the new data."""
    log_loss = st.session_state.get("log_loss", True)
    frames = chart_frames(view, st.session_state.get("smoothing", 0.6), log_loss)
    if len(view.loss):
        st.vega_lite_chart(frames["loss"], charts.loss_spec(log_loss), width="stretch", height=420)
    if "sv_lines" in frames:
        tall = max(380, 120 + 14 * min(len(view.sv_names), 80))  # a heatmap row per parameter, readable
        left, right = st.columns(2)
        lines = charts.sv_lines_spec(view.sv_names[: charts.MAX_SV_LINES])
        left.vega_lite_chart(frames["sv_lines"], lines, width="stretch", height=tall)
        right.vega_lite_chart(frames["sv_heat"], charts.sv_heatmap_spec(view.sv_names), width="stretch", height=tall)
        left, right = st.columns(2)
        left.vega_lite_chart(frames["step_lengths"], charts.steps_spec("length"), width="stretch", height=220)
        left.vega_lite_chart(frames["step_cosines"], charts.steps_spec("cosine"), width="stretch", height=220)
        if "surface" in frames:
            right.vega_lite_chart(frames["surface"], charts.surface_spec(), width="stretch", height=440)


def _live(run: RunDir, config: RunConfig | None) -> None:
    """Status, command outcomes and charts, re-read from the run file on every tick."""
    started = time.perf_counter()
    view = build_view(run, _watcher(str(run.run_file)), config)
    _header(run, view)
    _metrics(view)
    _problems(run, view)
    _commands(view)
    _charts(view)
    took = 1000 * (time.perf_counter() - started)
    n = view.status.skipped_lines
    skipped = f" · {n:,} unreadable line{'' if n == 1 else 's'} skipped" if n else ""
    st.caption(f"Updated {time.strftime('%H:%M:%S')} in {took:.0f} ms · {view.n_records:,} records{skipped}")


def main() -> None:
    st.set_page_config(page_title="nnobs", layout="wide")
    steer = _may_steer()
    run = _open_run(steer)
    config = _config(run)
    if never_ran(_watcher(str(run.run_file))):  # a new run starts on an operator's first sight; others wait
        if steer:
            try:
                start_worker(run, by="page")
            except NnobsError as err:
                st.error(str(err))
        else:
            st.info("This run has not started yet: it starts when an operator opens it.")
    _run_picker(run, steer)
    _sign_in()
    refresh_s = st.session_state.get("refresh_s", 1.0)
    if steer:
        with st.sidebar:
            st.fragment(run_every=refresh_s)(_controls)(run)
    _view_controls()
    _downloads(run)
    st.fragment(run_every=refresh_s)(_live)(run, config)
