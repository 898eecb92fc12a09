"""Why a control's latest submit was refused, kept in the session and shown under the control it belongs to."""

from __future__ import annotations

import streamlit as st

from nnobs.views.wording import as_text

VIEWERS_REFUSED = "Only operators steer this run: sign in with the operator password first."
REFUSALS_KEY = "refusals"  # session state: refusals by the control they are under


def refusals() -> dict[str, str]:
    """Why the latest submit was refused, by the control it belongs under; kept across refreshes until the next one."""
    return st.session_state.setdefault(REFUSALS_KEY, {})


def new_submit() -> None:
    """Every submit starts afresh: a refusal of an older one no longer applies."""
    refusals().clear()


def show_refusal(place: str) -> None:
    """The refusal kept for the control at place, if any, as an error under it: as text, since a refusal may quote
    a run's files (a start refused names the command and folder run.json gives)."""
    if refused := refusals().get(place):
        st.error(as_text(refused))
