"""The run page's sidebar controls: settings and actions (and the fork form), with presses kept until they run."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from nnobs.app import run_confirm, widgets
from nnobs.app.entry import EntryError, entry_text, read_entry
from nnobs.app.run_fork import fork_form
from nnobs.app.run_refusals import VIEWERS_REFUSED, new_submit, refusals, show_refusal
from nnobs.launching.lifecycle import active_job, restart_worker, stop_worker, worker_pid
from nnobs.launching.local import ask_to_stop
from nnobs.launching.status import RunStatus
from nnobs.protocol.commands import COMMANDS, Command, check_command, command_words
from nnobs.protocol.control import queue_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import JobRecord
from nnobs.protocol.rundir import RunDir, is_followed
from nnobs.protocol.states import state_of
from nnobs.reading.shared_readers import watcher_for
from nnobs.views.view import current_status
from nnobs.views.wording import as_text

PRESSED_KEY = "pressed"  # session state: presses not yet done, as (run name, action, command, text)


@dataclass(frozen=True)
class Setting:
    """A setting the sidebar offers: its command from the registry, with the field's label, button and help."""

    command: Command  # its name is what is sent; its field reads what is typed
    label: str
    button: str
    help: str


def _setting(command: Command) -> Setting:
    sidebar = command.sidebar
    if sidebar is None or command.field is None:
        raise KeyError(f"{command.name} has no sidebar field")
    return Setting(command, sidebar.label, sidebar.button, sidebar.help)


# The settings the sidebar offers: every command of the registry with sidebar words, in their places.
SETTINGS = tuple(
    _setting(command)
    for command in sorted(COMMANDS.values(), key=lambda c: c.sidebar.place if c.sidebar else 0)
    if command.sidebar is not None
)


def drop_presses() -> None:
    """Forget presses not yet done: pressed before leaving the run page, or before the operator signed out."""
    st.session_state.pop(PRESSED_KEY, None)


def controls(run: RunDir) -> None:
    """Training settings and actions, shown for the run's current state: a fragment of its own, on the timer."""
    pressed = [press[1:] for press in st.session_state.pop(PRESSED_KEY, []) if press[0] == run.name]
    if not widgets.may_steer_here():
        st.rerun()  # the operator password changed since: redraw the whole page as a viewer's
    if confirmed := run_confirm.take_confirmed():
        _act(run, *confirmed)  # said yes to in a dialog, which closed with the rerun that brought us here
    if pressed:
        _do_pressed(run, pressed)
    # The status read now, not the shared view's (up to half a refresh old): a field whose value changes is drawn
    # anew, and a draw from an older status than the one the user typed into would lose what was typed.
    status = current_status(run, watcher_for(str(run.run_file)))
    if is_followed(run):  # its follower trains nothing: there is nothing to set
        st.subheader("Training")
        st.caption(
            "Followed from its own log: nothing here steers it. Shut down ends the following, Restart resumes it."
        )
    else:
        _training_controls(run, status)
    _actions(run, status, drawn_anew=run.config.exists())
    if run.config.exists():  # a script's run is forked by running the script again
        fork_form(run, status)


# -- sending -------------------------------------------------------------------------


def _send(run: RunDir, cmd: str, value: object = None) -> None:
    """Check a command as the worker would, then queue it; a refused value is explained and nothing is sent."""
    if not widgets.may_steer_here():
        refusals()[cmd] = VIEWERS_REFUSED
        return
    try:
        value = check_command(cmd, value)
        queue_command(run, cmd, value, by="page")
    except NnobsError as err:
        refusals()[cmd] = str(err)
        return
    except OSError as err:  # a full disk, a read-only filesystem: a shutdown still gets through, by a signal
        pid = worker_pid(run) if cmd == "shutdown" else None
        if pid and pid > 0:
            st.toast(f"Shutting down: {as_text(ask_to_stop(run, pid, by='page'))}.")
        else:
            refusals()[cmd] = f"not sent: the control file could not be written ({err.strerror or err})"
        return
    st.toast(f"Sent: {command_words(cmd, value)}. Waiting for the worker.")


def _submit(run: RunDir, cmd: str, text: str) -> None:
    """Read what was typed for cmd strictly, then send it; what it cannot mean is refused under its field."""
    try:
        value = read_entry(cmd, text)
    except EntryError as err:
        refusals()[cmd] = str(err)
        return
    _send(run, cmd, value)


def _start(run: RunDir) -> None:
    if not widgets.may_steer_here():
        refusals()["start"] = VIEWERS_REFUSED
        return
    # No spinner: the controls are a fragment on a timer, and a spinner's passing element in one has broken the
    # browser's copy of the sidebar on a loaded server ("Cannot set a node at a delta path"). The toast says it.
    said: list[str] = []
    try:
        started = restart_worker(run, by="page", said=said)
    except (NnobsError, OSError) as err:
        refusals()["start"] = str(err) if isinstance(err, NnobsError) else f"could not start: {err.strerror or err}"
        return
    for how in said:
        st.toast(f"Restarted; stopping the worker before, {how}.")
    started_as = f"Slurm job {started.job_id} submitted" if isinstance(started, JobRecord) else f"pid {started}"
    st.toast(f"Started the worker: {started_as}.")


# -- presses --------------------------------------------------------------------------------


def _press(run: RunDir, action: str, cmd: str | None = None, text_key: str | None = None) -> None:
    """A control's button was pressed: what it asks for (with what its field held) is kept for the controls' next
    run, which does it. A callback, so that no press is lost: a press whose own rerun is folded into a timer's,
    or that ran the page without the controls, is done by the run that draws them next."""
    text = st.session_state.get(text_key, "") if text_key else None
    # A list: two presses whose reruns are folded into one both land here before the controls run.
    st.session_state.setdefault(PRESSED_KEY, []).append((run.name, action, cmd, text))


def _do_pressed(run: RunDir, pressed: list[tuple]) -> None:
    """Do the presses kept by _press, in order: send a setting or a command, or start the worker; then ask about
    an action, last, as asking reruns the page."""
    new_submit()
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
        run_confirm.ask(run, *asks[-1])


def _confirmed_entry(cmd: str, text: str) -> tuple[str, object] | None:
    """(cmd, value) to ask about, when what was typed reads as one; else its refusal, and nothing to ask."""
    try:
        return cmd, read_entry(cmd, text)
    except EntryError as err:
        refusals()[cmd] = str(err)
        return None


def _act(run: RunDir, action: str, value: object) -> None:
    """Do what a confirmation was said yes to."""
    if action == "restart":
        _start(run)
    elif action == "shutdown" and worker_pid(run) is None and (job := active_job(run)) is not None:
        stopped = stop_worker(run, by="page")  # a queued Slurm job has no worker to tell: it is cancelled
        job_id = as_text(job.job_id)  # job.json's, which anyone who may write the run's directory may have written
        st.toast(f"Cancelled Slurm job {job_id}." if stopped else f"Slurm job {job_id} did not end in time.")
    else:
        _send(run, action, value)


# -- the controls drawn ---------------------------------------------------------------------


def _training_controls(run: RunDir, status: RunStatus) -> None:
    st.subheader("Training")
    values = {
        "target": status.target,
        "eta": status.eta,
        "pace": status.pace or 0.0,
        "report_every": status.report_every,
    }
    for setting in SETTINGS:
        cmd = setting.command.name
        with st.form(f"{cmd}_form", border=False, enter_to_submit=False):
            key = _entry_field(cmd, setting.label, setting.help, values[cmd])
            st.form_submit_button(setting.button, on_click=_press, args=(run, "submit", cmd), kwargs={"text_key": key})
            show_refusal(cmd)


def _entry_field(cmd: str, label: str, help_text: str, value: float | None) -> str:
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


def _actions(run: RunDir, status: RunStatus, drawn_anew: bool) -> None:
    """Actions that fit the run's state; those that undo work ask first. Reinitialize only where the net can be
    drawn anew: the built-in worker's (a script draws its own net, and its session refuses)."""
    st.subheader("Actions")
    alive = (state := state_of(status.state)) is not None and state.alive
    queued = status.state == "queued"
    st.button(
        "Snapshot parameters now",
        disabled=not alive,
        on_click=_press,
        args=(run, "send", "tell_state"),
        help="Ask the worker to write every weight and bias of the net to the run file at once, so the "
        "state-vector charts show the parameters as they are now.",
    )
    show_refusal("tell_state")

    _entry_action(
        run,
        "rewind",
        "Rewind to batch",
        "Rewind…",
        alive,
        f"0 to {status.batch:,}",
        "Go back to the newest kept checkpoint at or before this batch, with the eta it had there, and train on "
        "from there as a new generation of the worker. The charts then show that line of training; the run file "
        "keeps the record of everything.",
    )
    if drawn_anew:
        _entry_action(
            run,
            "reinit",
            "Reinitialize with seed",
            "Reinitialize…",
            alive,
            "blank: the run's own seed",
            "Start the net afresh from new random parameters drawn with this seed (blank: the run's own), with the "
            "run's starting eta, as a new generation at the same batch. The history stays: the loss chart shows the "
            "old line beside the new one.",
        )

    st.button(
        "Shut down…",
        disabled=not (alive or queued or status.state == "following"),
        on_click=_press,
        args=(run, "ask", "shutdown"),
        help="Stop the worker cleanly after a final checkpoint (a queued Slurm job is cancelled); asks first.",
    )
    show_refusal("shutdown")
    if alive:
        st.button(
            "Restart…",
            on_click=_press,
            args=(run, "ask", "restart"),
            help="Stop the worker and start a new generation from its checkpoint; asks first.",
        )
    elif queued:
        st.caption(f"Slurm job {as_text(status.job_id)} is queued: {as_text(status.reason or 'waiting')}.")
    else:
        st.button(
            "Start" if status.state in ("stopped", "failed to start") else "Restart",
            type="primary",
            on_click=_press,
            args=(run, "start"),
            help="Start a new generation of the worker; it resumes from the last checkpoint.",
        )
    show_refusal("start")


def _entry_action(
    run: RunDir, cmd: str, label: str, button: str, alive: bool, placeholder: str, help_text: str
) -> None:
    """A field and its button for an action that asks first, once what was typed reads as a value."""
    with st.form(f"{cmd}_form", border=False, enter_to_submit=False):
        st.text_input(label, key=f"entry_{cmd}", disabled=not alive, placeholder=placeholder, help=help_text)
        st.form_submit_button(
            button, disabled=not alive, on_click=_press, args=(run, "ask", cmd), kwargs={"text_key": f"entry_{cmd}"}
        )
        show_refusal(cmd)
