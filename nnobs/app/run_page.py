"""The Streamlit page: the run named in the URL, its live status and charts, and the sidebar that steers it."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import streamlit as st

from nnobs.app import widgets
from nnobs.app.entry import EntryError, entry_text, read_entry
from nnobs.lab import create as lab
from nnobs.launching.base import STOP_GRACE_S
from nnobs.launching.lifecycle import active_job, create_run, restart_worker, start_worker, stop_worker, worker_pid
from nnobs.launching.local import ask_to_stop
from nnobs.launching.status import RunStatus
from nnobs.protocol.checkpoint import kept_batches
from nnobs.protocol.commands import check_command, command_words
from nnobs.protocol.control import queue_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import JobRecord
from nnobs.protocol.rundir import DEFAULT_RUN, RunDir, check_run_name, list_runs, log_tail
from nnobs.protocol.states import State, state_of
from nnobs.reading.history import MAX_METRICS
from nnobs.reading.shared_readers import watcher_for
from nnobs.reading.watcher import RunWatcher
from nnobs.training.builtin.tasks import RunConfig, load_config
from nnobs.views import charts, run_views, wording
from nnobs.views.view import RunView, SharedViews, current_status, never_ran

VIEWERS_REFUSED = "Only operators steer this run: sign in with the operator password first."
METRIC_HEIGHT_PX = 96  # label, value and a change under it: a change that comes and goes moves nothing below
# Sent once per script run, before any fragment: a fragment's rerun would drop and re-add it, and the sizes jump.

# The settings the sidebar offers: command, field label, button, what it does.
SETTINGS = (
    ("target", "Target batches", "Set target",
     "Train until the batch count reaches this, then wait. Raise it to train on, lower it to stop early. "
     "A whole number: 5000, 5,000 and 1e6 all work."),
    ("eta", "Learning rate (eta)", "Set eta",
     "How large a step gradient descent takes on each batch; above 0. Too high and the loss blows up (diverges): "
     "lower it to recover."),
    ("pace", "Pace (batches a second)", "Set pace",
     "At most this many batches a second, to watch training in slow motion; 0 = flat out."),
    ("report_every", "Parameter snapshot every N batches", "Set interval",
     "How often the worker writes every weight and bias of the net to the run file, for the state-vector charts; "
     "0 writes them only when asked (Snapshot parameters now). Large nets write a lot: raise it for long runs."),
)


def _watcher(run_file: str) -> RunWatcher:
    """One reader per run file for the whole server: every session sees the same history, read once."""
    return watcher_for(run_file)


@st.cache_resource(show_spinner=False)
def _shared_views() -> SharedViews:
    """One view of each run per refresh for the whole server, handed to every session watching it."""
    return SharedViews()


def _view(run: RunDir, config: RunConfig | None) -> RunView:
    """The run's view as every session shares it: at most half a refresh old."""
    max_age = min(float(st.session_state.get("refresh_s", 1.0)), 1.0) / 2
    return _shared_views().view(run, _watcher(str(run.run_file)), config, max_age)


def _open_run(steer: bool) -> RunDir:
    """The run the URL names; operators create it when it does not exist, viewers are told how."""
    name = st.query_params.get("run", DEFAULT_RUN)
    try:
        run = RunDir.named(name)
        if steer and not run.exists():  # never a config.json in a script's run: that would make it the built-in's
            create_run(run)
    except NnobsError as err:
        st.error(str(err))
        st.stop()
    if not run.exists():
        st.info(f"There is no run named `{run.name}` yet. Only an operator can create it: sign in below with the "
                "operator password, and this address then creates the run and starts it.")
        widgets.sign_in(st.container())
        st.stop()
    return run


def _config(run: RunDir) -> RunConfig | None:
    """The built-in worker's config; None for a script's run, which has none."""
    if not run.config.exists():
        return None
    try:
        return load_config(run.config)
    except (NnobsError, OSError) as err:
        st.error(f"{run.config}: {err}")
        return None


# -- refusals and sending -------------------------------------------------------------------


def _refusals() -> dict[str, str]:
    """Why the latest submit was refused, by the control it belongs under; kept across refreshes until the next one."""
    return st.session_state.setdefault("refusals", {})


def _new_submit() -> None:
    """Every submit starts afresh: a refusal of an older one no longer applies."""
    _refusals().clear()


def _refusal(place: str) -> None:
    if refused := _refusals().get(place):
        st.error(refused)


def _send(run: RunDir, cmd: str, value=None) -> None:
    """Check a command as the worker would, then queue it; a refused value is explained and nothing is sent."""
    if not widgets.may_steer_here():
        _refusals()[cmd] = VIEWERS_REFUSED
        return
    try:
        value = check_command(cmd, value)
        queue_command(run, cmd, value, by="page")
    except NnobsError as err:
        _refusals()[cmd] = str(err)
        return
    except OSError as err:  # a full disk, a read-only filesystem: a shutdown still gets through, by a signal
        pid = worker_pid(run) if cmd == "shutdown" else None
        if pid and pid > 0:
            st.toast(f"Shutting down: {ask_to_stop(run, pid, by='page')}.")
        else:
            _refusals()[cmd] = f"not sent: the control file could not be written ({err.strerror or err})"
        return
    st.toast(f"Sent: {command_words(cmd, value)}. Waiting for the worker.")


def _submit(run: RunDir, cmd: str, text: str) -> None:
    """Read what was typed for cmd strictly, then send it; what it cannot mean is refused under its field."""
    try:
        value = read_entry(cmd, text)
    except EntryError as err:
        _refusals()[cmd] = str(err)
        return
    _send(run, cmd, value)


def _start(run: RunDir) -> None:
    if not widgets.may_steer_here():
        _refusals()["start"] = VIEWERS_REFUSED
        return
    # No spinner: the controls are a fragment on a timer, and a spinner's passing element in one has broken the
    # browser's copy of the sidebar on a loaded server ("Cannot set a node at a delta path"). The toast says it.
    said: list[str] = []
    try:
        started = restart_worker(run, by="page", said=said)
    except (NnobsError, OSError) as err:
        _refusals()["start"] = str(err) if isinstance(err, NnobsError) else f"could not start: {err.strerror or err}"
        return
    for how in said:
        st.toast(f"Restarted; stopping the worker before, {how}.")
    started_as = f"Slurm job {started.job_id} submitted" if isinstance(started, JobRecord) else f"pid {started}"
    st.toast(f"Started the worker: {started_as}.")


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
        with bar.container(key="share_link"):
            st.caption("Link to this run, for teammates (copy button at its top right):")
            st.code(f"{base.scheme}://{base.netloc}{base.path}?run={run.name}", language=None, wrap_lines=True)


def _controls(run: RunDir) -> None:
    """Training settings and actions, shown for the run's current state: a fragment of its own, on the timer."""
    pressed = [press[1:] for press in st.session_state.pop("pressed", []) if press[0] == run.name]
    if not widgets.may_steer_here():
        st.rerun()  # the operator password changed since: redraw the whole page as a viewer's
    if confirmed := st.session_state.pop("confirmed", None):
        _act(run, *confirmed)  # said yes to in a dialog, which closed with the rerun that brought us here
    if pressed:
        _do_pressed(run, pressed)
    # The status read now, not the shared view's (up to half a refresh old): a field whose value changes is drawn
    # anew, and a draw from an older status than the one the user typed into would lose what was typed.
    status = current_status(run, _watcher(str(run.run_file)))
    _training_controls(run, status)
    _actions(run, status, drawn_anew=run.config.exists())
    if run.config.exists():  # a script's run is forked by running the script again
        _fork_form(run, status)


def _training_controls(run: RunDir, status: RunStatus) -> None:
    st.subheader("Training")
    values = {"target": status.target, "eta": status.eta, "pace": status.pace or 0.0,
              "report_every": status.report_every}
    for cmd, label, button, help_text in SETTINGS:
        with st.form(f"{cmd}_form", border=False, enter_to_submit=False):
            key = _entry_field(cmd, label, help_text, values[cmd])
            st.form_submit_button(button, on_click=_press, args=(run, "submit", cmd), kwargs={"text_key": key})
            _refusal(cmd)


def _entry_field(cmd: str, label: str, help_text: str, value) -> str:
    """A text field showing the run's value, drawn anew when that value changes; its key, under which what is
    typed is read on submit.

    The value is part of the field's key: a field kept across a change of the run's value would go on showing
    the old one, and a browser that never sent the field back would leave it blank. (Its text set through the
    session under one key is not shown by the browser in a form.) For a moment after a change the old field
    lingers beside the new one, moving the controls below it.
    """
    text = entry_text(cmd, value)
    key = f"entry_{cmd}:{text}"
    st.text_input(label, value=text, key=key, help=help_text)
    return key


def _press(run: RunDir, action: str, cmd: str | None = None, text_key: str | None = None) -> None:
    """A control's button was pressed: what it asks for (with what its field held) is kept for the controls' next
    run, which does it. A callback, so that no press is lost: a press whose own rerun is folded into a timer's,
    or that ran the page without the controls, is done by the run that draws them next."""
    text = st.session_state.get(text_key, "") if text_key else None
    # A list: two presses whose reruns are folded into one both land here before the controls run.
    st.session_state.setdefault("pressed", []).append((run.name, action, cmd, text))


def _do_pressed(run: RunDir, pressed: list[tuple]) -> None:
    """Do the presses kept by _press, in order: send a setting or a command, or start the worker; then ask about
    an action, last, as asking reruns the page."""
    _new_submit()
    asks = []
    for action, cmd, text in pressed:
        if action == "submit":
            _submit(run, cmd, text)
        elif action == "send":
            _send(run, cmd)
        elif action == "start":
            _start(run)
        elif action == "ask" and (ask := (cmd, None) if text is None else _confirmed_entry(cmd, text)):
            asks.append(ask)
    if asks:
        _ask(run, *asks[-1])


def _actions(run: RunDir, status: RunStatus, drawn_anew: bool) -> None:
    """Actions that fit the run's state; those that undo work ask first. Reinitialize only where the net can be
    drawn anew: the built-in worker's (a script draws its own net, and its session refuses)."""
    st.subheader("Actions")
    alive = State(status.state).alive
    queued = status.state == "queued"
    st.button("Snapshot parameters now", disabled=not alive, on_click=_press, args=(run, "send", "tell_state"),
              help="Ask the worker to write every weight and bias of the net to the run file at once, so the "
                   "state-vector charts show the parameters as they are now.")
    _refusal("tell_state")

    _entry_action(
        run, "rewind", "Rewind to batch", "Rewind…", alive, f"0 to {status.batch:,}",
        "Go back to the newest kept checkpoint at or before this batch, with the eta it had there, and train on "
        "from there as a new generation of the worker. The charts then show that line of training; the run file "
        "keeps the record of everything.",
    )
    if drawn_anew:
        _entry_action(
            run, "reinit", "Reinitialize with seed", "Reinitialize…", alive, "blank: the run's own seed",
            "Start the net afresh from new random parameters drawn with this seed (blank: the run's own), with the "
            "run's starting eta, as a new generation at the same batch. The history stays: the loss chart shows the "
            "old line beside the new one.",
        )

    st.button("Shut down…", disabled=not (alive or queued), on_click=_press, args=(run, "ask", "shutdown"),
              help="Stop the worker cleanly after a final checkpoint (a queued Slurm job is cancelled); asks first.")
    _refusal("shutdown")
    if alive:
        st.button("Restart…", on_click=_press, args=(run, "ask", "restart"),
                  help="Stop the worker and start a new generation from its checkpoint; asks first.")
    elif queued:
        st.caption(f"Slurm job {status.job_id} is queued: {status.reason or 'waiting'}.")
    else:
        st.button("Start" if status.state == "stopped" else "Restart", type="primary", on_click=_press,
                  args=(run, "start"), help="Start a new generation of the worker; it resumes from the last checkpoint.")
    _refusal("start")


def _fork_form(run: RunDir, status: RunStatus) -> None:
    """Fork: a new run from this one's latest checkpoint (or a kept one), with eta or target changed."""
    st.subheader("Fork")
    with st.form("fork_form", border=False, enter_to_submit=False, clear_on_submit=False):
        name = st.text_input("New run's name", key="fork_name", placeholder=f"{run.name}-fork",
                             help="The fork is a run of its own, under this name, trained on by a worker of its own.")
        eta = st.text_input("Its eta", key="fork_eta", placeholder=f"blank: {status.eta:g}" if status.eta else "blank: the same",
                            help="The learning rate the fork trains with from the start; blank keeps this run's.")
        target = st.text_input("Its target batches", key="fork_target",
                               placeholder=f"blank: {status.target:,}" if status.target is not None else "blank: the same",
                               help="The batch the fork trains to; blank keeps this run's.")
        at = st.text_input("From the checkpoint kept at or before batch", key="fork_at", placeholder="blank: the latest",
                           help="Fork from an older kept checkpoint (as a rewind would land) instead of the latest.")
        if st.form_submit_button("Fork this run"):
            _new_submit()
            _fork(run, name or f"{run.name}-fork", eta, target, at)
        _refusal("fork")


def read_fork(name: str, eta: str, target: str, at: str) -> tuple[str, float | None, int | None, int | None]:
    """The fork form's entries read strictly: (new name, eta, target, batch); blanks are None. Raises NnobsError."""
    values = []
    for cmd, text in (("eta", eta), ("target", target), ("rewind", at)):
        values.append(read_entry(cmd, text) if text.strip() else None)
    return check_run_name(name.strip()), *values


def _fork(run: RunDir, name: str, eta: str, target: str, at: str) -> None:
    """Fork the run as the form says and open the fork; what cannot be done is refused under the form."""
    if not widgets.may_steer_here():
        _refusals()["fork"] = VIEWERS_REFUSED
        return
    try:
        new_name, new_eta, new_target, new_at = read_fork(name, eta, target, at)
        new = RunDir.named(new_name)
        if new.exists():
            raise NnobsError(f"a run named {new_name} exists already: pick another name for the fork")
        lab.fork_run(run, new, eta=new_eta, target=new_target, at=new_at, by="page")  # no spinner: see _start
    except (NnobsError, EntryError) as err:
        _refusals()["fork"] = str(err)
        return
    except OSError as err:
        _refusals()["fork"] = f"could not fork: {err.strerror or err}"
        return
    st.switch_page(widgets.page_named("run"), query_params={"run": new_name})


def _entry_action(run: RunDir, cmd: str, label: str, button: str, alive: bool, placeholder: str, help_text: str) -> None:
    """A field and its button for an action that asks first, once what was typed reads as a value."""
    with st.form(f"{cmd}_form", border=False, enter_to_submit=False):
        st.text_input(label, key=f"entry_{cmd}", disabled=not alive, placeholder=placeholder, help=help_text)
        st.form_submit_button(button, disabled=not alive, on_click=_press, args=(run, "ask", cmd),
                              kwargs={"text_key": f"entry_{cmd}"})
        _refusal(cmd)


def _confirmed_entry(cmd: str, text: str) -> tuple[str, object] | None:
    """(cmd, value) to ask about, when what was typed reads as one; else its refusal, and nothing to ask."""
    try:
        return cmd, read_entry(cmd, text)
    except EntryError as err:
        _refusals()[cmd] = str(err)
        return None


def _ask(run: RunDir, action: str, value) -> None:
    """Open the confirmation of an action: asked by the whole page, on a rerun of it.

    The dialog is the page's, not the timed controls'. One opened inside a fragment on a timer is that fragment's
    child, and on a loaded server two things went wrong: a click in it that arrived with the fragment's next tick
    was dropped (the parent's run is taken to redraw the child, which it does not), leaving the dialog open and
    deaf; and the browser's copy of the sidebar could break on the tick after the dialog opened ("'setIn' cannot
    be called on an ElementNode"), leaving the page disconnected for good.
    """
    st.session_state["asking"] = (run.name, action, value)
    st.rerun()


def _asked(run: RunDir) -> None:
    """The confirmation asked for on this run, if any: drawn on every whole-page run until it is answered."""
    asking = st.session_state.get("asking")
    if asking is None or asking[0] != run.name:
        return
    _confirm(run, current_status(run, _watcher(str(run.run_file))), *asking[1:])


def _confirm(run: RunDir, status: RunStatus, action: str, value) -> None:
    """A dialog asking to confirm an action. Yes, Cancel or a dismissal answers it; Yes and Cancel rerun the whole
    page, which closes it. Yes is done by the controls on that rerun."""
    pid = f" (pid {status.pid})" if status.pid else ""
    seed = "the run's own seed" if value is None else f"seed {value}"
    title, question, yes = {
        "shutdown": ("Shut down the worker?",
                     f"The worker of `{run.name}`{pid} saves a checkpoint and exits. Training stops until someone "
                     "presses **Start**, which resumes from that checkpoint.", "Yes, shut down"),
        "restart": ("Restart the worker?",
                    f"The worker of `{run.name}`{pid} is asked to stop (and killed if it has not after "
                    f"{STOP_GRACE_S:.0f} s), then a new generation resumes from the last checkpoint: the last few "
                    "seconds of training are done again.", "Yes, restart"),
        "rewind": (f"Rewind to batch {value or 0:,}?",
                   f"The worker goes back to {_kept_at_or_before(run, value or 0)}, with the eta it had there, and "
                   "trains on from there as a new generation. What the net learnt after that checkpoint is dropped; "
                   "the run file keeps the record of it.", "Yes, rewind"),
        "reinit": ("Start the net afresh?",
                   f"The net's parameters are replaced by new random ones drawn with {seed}, and eta goes back to "
                   "the run's starting eta: what the net has learnt is lost to it. The run's history stays, and the "
                   "loss chart shows the old line beside the new one.", "Yes, reinitialize"),
    }[action]

    def ask() -> None:
        st.markdown(question)
        left, right = st.columns(2)
        if left.button(yes, type="primary", on_click=_answer, args=((action, value),)):
            st.rerun()
        if right.button("Cancel", on_click=_answer):
            st.rerun()

    st.dialog(title, on_dismiss=_answer)(ask)()


def _kept_at_or_before(run: RunDir, batch: int) -> str:
    """Where a rewind to batch lands, in words: the newest kept checkpoint at or before it."""
    kept = [b for b in kept_batches(run.checkpoint) if b <= batch]
    if not kept:
        return f"the newest kept checkpoint at or before batch {batch:,} (there is none yet: the worker will refuse)"
    landing = f"the checkpoint kept at batch **{kept[-1]:,}**, the newest at or before batch {batch:,}"
    return landing + (f", {batch - kept[-1]:,} batches earlier" if batch - kept[-1] else "")


def _answer(confirmed: tuple[str, object] | None = None) -> None:
    """The confirmation answered: yes (the action and its value, done by the controls on the rerun that follows),
    or no. In a callback, so the answer is kept even when the click's own rerun is folded into another."""
    st.session_state.pop("asking", None)
    if confirmed is not None:
        st.session_state["confirmed"] = confirmed


def _act(run: RunDir, action: str, value) -> None:
    """Do what a confirmation was said yes to."""
    if action == "restart":
        _start(run)
    elif action == "shutdown" and worker_pid(run) is None and (job := active_job(run)) is not None:
        stopped = stop_worker(run, by="page")  # a queued Slurm job has no worker to tell: it is cancelled
        st.toast(f"Cancelled Slurm job {job.job_id}." if stopped else f"Slurm job {job.job_id} did not end in time.")
    else:
        _send(run, action, value)


def _view_controls() -> None:
    bar = st.sidebar
    bar.subheader("View")
    bar.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
               help="Exponential moving average of the loss, bias-corrected like TensorBoard's; 0 is off.")
    bar.toggle("Log-scale loss", value=True, key="log_loss")
    bar.selectbox("Refresh every", widgets.REFRESH_CHOICES, index=widgets.REFRESH_CHOICES.index(1.0), key="refresh_s",
                  format_func=lambda s: f"{s:g} s", help="How often the page reads the run file and redraws.")


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
    label = status.label
    st.markdown(f"## nnobs · `{run.name}` :{state.badge if (state := state_of(label)) else 'gray'}-badge[{label.upper()}]")
    parts = []
    if status.generation:
        parts.append(f"Generation {status.generation} (each start, restart, rewind or reinitialize begins the next)")
    else:
        parts.append("Not started yet")
    serves = "script" if view.script is not None else "worker"
    parts.append(f"no {serves} running" if status.pid is None else f"{serves} pid {status.pid}")
    if status.job_id:
        reason = f": {status.reason}" if status.reason and status.state == "queued" else ""  # why it waits, as Slurm says
        parts.append(f"Slurm job {status.job_id} ({(status.job_state or 'unknown').lower()}{reason})")
    if status.pace:
        parts.append(f"paced at most {status.pace:,g} batches a second")
    st.caption(" · ".join(parts + [str(run.path)]))
    if served := wording.served_by(view.script):
        st.caption(f"Served by {served}")
    if view.origin:
        parent = str(view.origin.get("run", "?"))
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.caption(wording.fork_origin(view.origin))
        right.page_link(widgets.page_named("compare"), label=f"Compare with {parent}", icon=":material/compare_arrows:",
                        query_params={"runs": [parent, run.name]})


def _metrics(view: RunView) -> None:
    status = view.status
    cols = [column.container(height=METRIC_HEIGHT_PX, border=False) for column in st.columns(6)]
    cols[0].metric("Batch", f"{status.batch:,}",
                   help="Batches trained so far: each is one step of gradient descent on a batch of training data.")
    rate = view.rate if status.state == "training" else None
    pace = f"at most {status.pace:,g}" if status.pace else None
    cols[1].metric("Batches/s", "-" if rate is None else f"{rate:,.0f}", delta=pace, delta_color="off",
                   delta_arrow="off", help="Training speed over the last 10 s; under it, the pace when one is set.")
    left = view.seconds_to_target
    cols[2].metric("To target", "-" if left is None else wording.duration(left),
                   help="Time until the batch count reaches the target, at the current speed.")
    loss = "diverged" if status.diverged else "-" if status.loss is None else f"{status.loss:.3g}"
    change = wording.loss_change(view.loss_change) if status.state == "training" and not status.diverged else None
    cols[3].metric("Loss", loss, delta=change, delta_color="inverse",
                   help="The loss of the latest batch. Under it, its change over the last 10 s: in percent, or in "
                        "decades (factors of 10) past a factor of 2; nothing when it barely moved.")
    cols[4].metric("Eta", "-" if status.eta is None else f"{status.eta:g}", help="The learning rate in use.")
    age = status.heartbeat_age_s
    gone = {"stopped": "worker stopped", "crashed": "worker died", "stalled": "worker stuck?"}.get(status.state)
    cols[5].metric("Last record", "-" if age is None else wording.ago(age), delta=gone,
                   delta_color="red" if status.state in ("crashed", "stalled") else "off", delta_arrow="off",
                   help="When the worker last wrote to the run file. A live worker writes at least once a second, so "
                        "a number that keeps growing means it is stuck; a stopped or dead one writes nothing more.")
    if status.target is not None:
        done, text = wording.progress(status.batch, status.target)
        st.progress(done, text=text)


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
    if status.write_error:
        st.error(f"The worker lives but {status.write_error}: nothing it does reaches the run file. Free some space; "
                 "it goes on by itself once it can write.")
    elif status.state == "low disk":
        free = "" if status.free_bytes is None else f" ({status.free_bytes / 1e6:,.0f} MB free)"
        st.warning(f"Training is paused: the disk holding the run is nearly full{free}. It goes on once there is room.")
    if status.diverged:
        st.warning(
            f"The loss diverged (it is no longer a number) at batch {status.batch:,}. Training is paused, back at the "
            "parameters of a recent checkpoint: **lower eta** to train on from there, or **rewind** to a batch "
            "before it went wrong."
        )
    elif status.not_learning:
        best = "" if status.best_loss is None else f", far above its best of {status.best_loss:.3g}"
        st.warning(
            f"The net is not learning: the loss stopped moving at {status.loss:.3g}{best}. **Lower eta** to let it "
            "settle, or **rewind** to a batch before it went wrong (the loss chart shows where)."
        )
    if view.control_error:
        st.warning(view.control_error)


def _commands(run: RunDir, view: RunView) -> None:
    """Recent commands and starts from everyone, newest first; each command pending until the worker answers it."""
    alive = State(view.status.state).alive
    entries: list[tuple[float, str]] = []  # (when, Markdown line)
    pending = 0
    for command, answer in view.recent:
        if answer is None:
            pending += 1
            outcome = ":orange[pending]" + ("" if alive else " (waits for the next worker)")
        elif answer.ok:
            outcome = f":green[done at batch {answer.batch:,}]"
        else:
            outcome = f":red[rejected: {answer.reason}]"
        what = command_words(command.get("cmd"), command.get("value"))
        entries.append((_when(command.get("t")), _line(what, str(command.get("by") or ""), outcome)))
    for event in view.starts:
        where = event.detail or f"at batch {event.batch:,}"
        entries.append((_when(event.t), _line(f"Worker started (generation {event.gen or '-'})", event.by, where)))
    if not entries:
        return
    entries.sort(key=lambda entry: entry[0], reverse=True)
    title = f"Commands and starts · {pending} pending" if pending else "Commands and starts · none pending"
    with st.expander(title, expanded=False, key="commands_open"):
        st.markdown("\n".join(line for _, line in entries[: len(view.recent) + len(view.starts)]))


def _when(t) -> float:
    return float(t) if isinstance(t, (int, float)) else 0.0


def _line(what: str, by: str, outcome: str) -> str:
    who = wording.sender(by)
    return f"- **{what}**{' ' + who if who else ''}: {outcome}"


def _charts(run: RunDir, view: RunView) -> None:
    """The charts: their specs never change during a run, so the browser only swaps in the new data. Their data
    is the shared view's, as Arrow tables made once for every session with the same settings."""
    log_loss = st.session_state.get("log_loss", True)
    frames = _shared_views().tables(run, view, st.session_state.get("smoothing", 0.6), log_loss)
    if len(frames["loss"]):
        spec = charts.loss_spec(log_loss, view.test is not None)
        st.vega_lite_chart(frames["loss"], spec, width="stretch", height=420)
    elif len(view.loss):
        st.caption(charts.LOSS_PENDING)
    _metric_charts(view, frames)
    run_views.draw(view, frames)


def _metric_charts(view: RunView, frames: dict) -> None:
    """Each metric the script logs, its own chart, two to a row; one logged at a single batch says its value."""
    for row in range(0, len(view.metrics), 2):
        for column, name in zip(st.columns(2), list(view.metrics)[row : row + 2]):
            frame = frames[f"metric:{name}"]
            if len(frame):
                column.vega_lite_chart(frame, charts.metric_spec(name), width="stretch", height=260)
            else:
                column.caption(charts.metric_pending(name, view.metrics[name][0]))
    if view.metrics_dropped:
        st.caption(f"More metrics are logged than the first {MAX_METRICS} shown here; the run file holds them all.")


def _live(run: RunDir, config: RunConfig | None) -> None:
    """Status, command outcomes and charts, re-read from the run file on every tick."""
    started = time.perf_counter()
    view = _view(run, config)
    _header(run, view)
    _metrics(view)
    _problems(run, view)
    _commands(run, view)
    _charts(run, view)
    took = 1000 * (time.perf_counter() - started)
    n = view.status.skipped_lines
    skipped = f" · {n:,} unreadable line{'' if n == 1 else 's'} skipped" if n else ""
    st.caption(f"Updated {time.strftime('%H:%M:%S')} in {took:.0f} ms · {view.n_records:,} records{skipped}")


def run_page() -> None:
    """The run the URL names (?run=NAME, else the default run): live status and charts, steered from the sidebar."""
    steer = widgets.may_steer_here()
    run = _open_run(steer)
    config = _config(run)
    # A new run starts on an operator's first sight; others wait. One on Slurm is submitted once: a job cancelled
    # before its worker wrote anything must not be submitted again by the next rerun.
    if never_ran(_watcher(str(run.run_file))) and not run.job_file.exists():
        if steer:
            try:
                start_worker(run, by="page")
            except NnobsError as err:
                st.error(str(err))
        else:
            st.info("This run has not started yet: it starts when an operator opens it.")
    _run_picker(run, steer)
    widgets.sign_in()
    refresh_s = st.session_state.get("refresh_s", 1.0)
    if steer:
        with st.sidebar:
            st.fragment(run_every=refresh_s)(_controls)(run)
    _view_controls()
    _downloads(run)
    st.fragment(run_every=refresh_s)(_live)(run, config)
    if steer:
        _asked(run)
    else:
        st.session_state.pop("pressed", None)  # pressed before the operator signed out: not to be done at sign-in
