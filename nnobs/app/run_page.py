"""The run page: opens the run named in the URL, lays out its live part and the sidebar that picks and steers it."""

from __future__ import annotations

from urllib.parse import urlsplit

import streamlit as st

from nnobs.app import run_confirm, run_controls, run_live, widgets
from nnobs.launching.lifecycle import create_run, start_worker
from nnobs.launching.status import start_failure
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import is_regular, read_bytes
from nnobs.protocol.rundir import DEFAULT_RUN, RunDir, check_run_name, list_runs
from nnobs.reading.shared_readers import watcher_for
from nnobs.training.builtin.tasks import RunConfig, load_config
from nnobs.views import wording
from nnobs.views.view import never_ran


def run_page() -> None:
    """The run the URL names (?run=NAME, else the default run): live status and charts, steered from the sidebar."""
    steer = widgets.may_steer_here()
    run = _open_run(steer)
    config = _config(run)
    # A new run starts on an operator's first sight; others wait. One on Slurm is submitted once: a job cancelled
    # before its worker wrote anything must not be submitted again by the next rerun; nor is a start that failed
    # tried again by a page opened after it: only Start does that.
    watcher = watcher_for(str(run.run_file))
    if never_ran(watcher) and not run.job_file.exists() and not start_failure(run, watcher.history):
        if steer:
            try:
                start_worker(run, by="page")
            except NnobsError as err:
                if not start_failure(run, watcher.history):  # a failed start is the run's state: its problem says it
                    st.error(wording.as_text(err, one_line=False))
        else:
            st.info("This run has not started yet: it starts when an operator opens it.")
    _run_picker(run, steer)
    widgets.sign_in()
    refresh_s = st.session_state.get("refresh_s", 1.0)
    if steer:
        with st.sidebar:
            st.fragment(run_every=refresh_s)(run_controls.controls)(run)
    _view_controls()
    _downloads(run)
    st.fragment(run_every=refresh_s)(run_live.live)(run, config)
    if steer:
        run_confirm.draw_asked(run)
    else:
        run_controls.drop_presses()  # pressed before the operator signed out: not to be done at sign-in


def _open_run(steer: bool) -> RunDir:
    """The run the URL names; one that does not exist is offered to operators to create, never made by the address
    alone (a link preview or a typo would start a worker). The one exception is the default run in a runs root
    that holds no run yet: the first page an operator opens on a fresh machine starts it."""
    if "run" not in st.query_params:
        st.query_params["run"] = DEFAULT_RUN  # the address says which run this is, so it can be shared
    name = st.query_params.get("run", DEFAULT_RUN)
    try:
        run = RunDir.named(name)
    except NnobsError as err:
        st.error(wording.as_text(err))  # it quotes the name in the address, which anyone may have written
        st.stop()
    if not run.exists() and steer and run.name == DEFAULT_RUN and not list_runs():
        _create_and_start(run)  # a fresh runs root: the page starts the default run, as `streamlit run app.py` says
    if not run.exists():
        _offer_to_create(run, steer)
        st.stop()
    return run


def _create_and_start(run: RunDir) -> bool:
    """Make run as a run of the built-in worker and start it; False, with the error shown, when that fails."""
    try:
        create_run(run)  # never a config.json in a script's run: this is only reached when nothing is there
        start_worker(run, by="page")
    except NnobsError as err:
        st.error(wording.as_text(err, one_line=False))
        return False
    return True


def _offer_to_create(run: RunDir, steer: bool) -> None:
    """A run the address names but that does not exist: a button for operators, the sign-in for others."""
    st.markdown(f"## nnobs · `{run.name}`")  # a checked run name: nothing in it acts in a code span
    if not steer:
        st.info(
            f"There is no run named `{run.name}` yet. Only an operator can create it: sign in below with the "
            "operator password, and this page then offers to create it."
        )
        widgets.sign_in(st.container())
        return
    st.info(
        f"There is no run named `{run.name}` yet. **Create and start it** makes it as a run of the built-in worker "
        "(the default net and task; the New run page chooses others) and starts its worker."
    )
    if st.button(f"Create and start {run.name}", key="create_named_run", type="primary") and _create_and_start(run):
        st.rerun()


def _config(run: RunDir) -> RunConfig | None:
    """The built-in worker's config; None for a script's run, which has none."""
    if not run.config.exists():
        return None
    try:
        return load_config(run.config)
    except (NnobsError, OSError) as err:
        st.error(wording.as_text(f"{run.config}: {err}", one_line=False))  # it may quote config.json
        return None


def _run_picker(run: RunDir, steer: bool) -> None:
    bar = st.sidebar
    names = sorted(set(list_runs()) | {run.name})
    choice = bar.selectbox(
        "Run",
        names,
        index=names.index(run.name),
        accept_new_options=steer,
        help="Pick a run"
        + (", or type a new name: its page offers to create it" if steer else "")
        + ". The page's address names the run.",
    )
    if choice and choice != run.name:
        try:
            st.query_params["run"] = check_run_name(choice)
            st.rerun()
        except NnobsError as err:
            bar.error(wording.as_text(err))
    base = urlsplit(st.context.url or "")
    if base.netloc:
        with bar.container(key="share_link"):
            st.caption("Link to this run, for teammates (copy button at its top right):")
            st.code(f"{base.scheme}://{base.netloc}{base.path}?run={run.name}", language=None, wrap_lines=True)


def _view_controls() -> None:
    bar = st.sidebar
    bar.subheader("View")
    bar.slider(
        "Smoothing",
        0.0,
        0.99,
        0.6,
        0.01,
        key="smoothing",
        help="Exponential moving average of the loss, bias-corrected like TensorBoard's; 0 is off.",
    )
    bar.toggle("Log-scale loss", value=True, key="log_loss")
    bar.selectbox(
        "Refresh every",
        widgets.REFRESH_CHOICES,
        index=widgets.REFRESH_CHOICES.index(1.0),
        key="refresh_s",
        format_func=lambda s: f"{s:g} s",
        help="How often the page reads the run file and redraws.",
    )


def _downloads(run: RunDir) -> None:
    bar = st.sidebar
    bar.subheader("Downloads")
    bar.download_button(
        "Run file (JSON lines)",
        data=lambda: read_bytes(run.run_file),
        file_name=f"{run.name}.jsonl",
        mime="application/x-ndjson",
        on_click="ignore",
        disabled=not is_regular(run.run_file),  # none yet, or a link: never followed
    )
    bar.download_button(
        "Loss (CSV)", data=lambda: _loss_csv(run), file_name=f"{run.name}-loss.csv", mime="text/csv", on_click="ignore"
    )


def _loss_csv(run: RunDir) -> bytes:
    watcher = watcher_for(str(run.run_file))
    with watcher.lock:
        batches, losses = watcher.refresh().loss_series()
        rows = [f"{b},{'' if v != v else repr(float(v))}" for b, v in zip(batches.tolist(), losses.tolist())]
    return ("batch,loss\n" + "\n".join(rows) + "\n").encode()
