"""The run page's confirmations: an action that undoes work is asked about in a dialog before it is done."""

from __future__ import annotations

import streamlit as st

from nnobs.lab.create import landing_of
from nnobs.launching.base import STOP_GRACE_S
from nnobs.launching.status import RunStatus
from nnobs.protocol.rundir import RunDir
from nnobs.reading.shared_readers import watcher_for
from nnobs.views.view import current_status

# Session-state keys: the question open on a run (run name, action, value), and the answer yes, kept for the controls.
ASKING_KEY = "asking"
CONFIRMED_KEY = "confirmed"


def ask(run: RunDir, action: str, value: object) -> None:
    """Open the confirmation of an action: asked by the whole page, on a rerun of it.

    The dialog is the page's, not the timed controls'. One opened inside a fragment on a timer is that fragment's
    child, and on a loaded server two things went wrong: a click in it that arrived with the fragment's next tick
    was dropped (the parent's run is taken to redraw the child, which it does not), leaving the dialog open and
    deaf; and the browser's copy of the sidebar could break on the tick after the dialog opened ("'setIn' cannot
    be called on an ElementNode"), leaving the page disconnected for good.
    """
    st.session_state[ASKING_KEY] = (run.name, action, value)
    st.rerun()


def take_confirmed() -> tuple[str, object] | None:
    """The action and value said yes to since the controls last ran, once: taking it forgets it."""
    return st.session_state.pop(CONFIRMED_KEY, None)


def draw_asked(run: RunDir) -> None:
    """The confirmation asked for on this run, if any: drawn on every whole-page run until it is answered."""
    asking = st.session_state.get(ASKING_KEY)
    if asking is None or asking[0] != run.name:
        return
    _confirm(run, current_status(run, watcher_for(str(run.run_file))), *asking[1:])


def _answer(confirmed: tuple[str, object] | None = None) -> None:
    """The confirmation answered: yes (the action and its value, done by the controls on the rerun that follows),
    or no. In a callback, so the answer is kept even when the click's own rerun is folded into another."""
    st.session_state.pop(ASKING_KEY, None)
    if confirmed is not None:
        st.session_state[CONFIRMED_KEY] = confirmed


def _confirm(run: RunDir, status: RunStatus, action: str, value: int | None) -> None:
    """A dialog asking to confirm an action. Yes, Cancel or a dismissal answers it; Yes and Cancel rerun the whole
    page, which closes it. Yes is done by the controls on that rerun."""
    pid = f" (pid {status.pid})" if status.pid else ""
    seed = "the run's own seed" if value is None else f"seed {value}"
    title, question, yes = {
        "shutdown": (
            "Shut down the worker?",
            f"The worker of `{run.name}`{pid} saves a checkpoint and exits. Training stops until someone "
            "presses **Start**, which resumes from that checkpoint.",
            "Yes, shut down",
        ),
        "restart": (
            "Restart the worker?",
            f"The worker of `{run.name}`{pid} is asked to stop (and killed if it has not after "
            f"{STOP_GRACE_S:.0f} s), then a new generation resumes from the last checkpoint: the last few "
            "seconds of training are done again.",
            "Yes, restart",
        ),
        "rewind": (
            f"Rewind to batch {value or 0:,}?",
            f"The worker goes back to {_kept_at_or_before(run, value or 0, status.batch)}, with the eta it had "
            "there, and trains on from there as a new generation. What the net learnt after that checkpoint is "
            "dropped; the run file keeps the record of it.",
            "Yes, rewind",
        ),
        "reinit": (
            "Start the net afresh?",
            f"The net's parameters are replaced by new random ones drawn with {seed}, and eta goes back to "
            "the run's starting eta: what the net has learnt is lost to it. The run's history stays, and the "
            "loss chart shows the old line beside the new one.",
            "Yes, reinitialize",
        ),
    }[action]

    def ask_in_dialog() -> None:
        st.markdown(question)
        left, right = st.columns(2)
        if left.button(yes, type="primary", on_click=_answer, args=((action, value),)):
            st.rerun()
        if right.button("Cancel", on_click=_answer):
            st.rerun()

    st.dialog(title, on_dismiss=_answer)(ask_in_dialog)()


def _kept_at_or_before(run: RunDir, batch: int, now: int) -> str:
    """Where a rewind to batch lands, in words, and a warning when it throws away more than half of the run."""
    where = landing_of(run, batch, now)
    if where.landed is None:
        return f"the newest kept checkpoint at or before batch {batch:,} (there is none yet: the worker will refuse)"
    earlier = batch - where.landed
    landing = f"the checkpoint kept at batch **{where.landed:,}**, the newest at or before batch {batch:,} now"
    landing += f", {earlier:,} batches earlier" if earlier else ""
    if where.drops_most:
        landing += f" (**this throws away {now - where.landed:,} of the run's {now:,} batches, more than half**)"
    return landing
