"""What every page shares: who may steer and the sign-in form, the refresh choices, and links to the other pages."""

from __future__ import annotations

import time

import streamlit as st

from nnobs.app.operators import WrongGuesses, configured_password, may_steer
from nnobs.protocol.errors import NnobsError

REFRESH_CHOICES = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # seconds; a list, so no field shows typing instructions

# The pages by name, as the frame registers them before any page runs: a page links to another through this table,
# so pages never import each other (nor the frame, which imports them all).
_PAGES: dict[str, st.Page] = {}


def register_pages(pages: dict[str, st.Page]) -> None:
    _PAGES.update(pages)


def page_named(name: str) -> st.Page:
    """The page registered as name ("run", "overview", "compare", "new"), for st.switch_page and st.page_link."""
    return _PAGES[name]


@st.cache_resource(show_spinner=False)
def wrong_guesses() -> WrongGuesses:
    """One count for the whole server: opening more sessions does not buy more guesses."""
    return WrongGuesses()


def may_steer_here() -> bool:
    """Whether this session may steer: asked on every draw and again by every action, on the server."""
    try:
        configured = configured_password(st.secrets)
    except NnobsError:
        return False  # sign_in says why
    return may_steer(st.session_state.get("operator_entered"), configured)


def sign_in(where=None) -> None:
    """With an operator password set: a sign-in form for viewers, a sign-out button for operators."""
    where = st.sidebar if where is None else where
    try:
        configured = configured_password(st.secrets)
    except NnobsError as err:
        where.error(str(err))
        return
    if configured is None:
        return  # local use: everyone steers
    if may_steer_here():
        where.success("Signed in as operator: you can steer this run.")
        if where.button("Sign out"):
            st.session_state.pop("operator_entered", None)
            st.rerun()
        return
    where.info("Read-only view. Steering this run needs the operator password.")
    with where.form("sign_in", border=False, clear_on_submit=True, enter_to_submit=False):
        entered = st.text_input("Operator password", type="password")
        if st.form_submit_button("Sign in"):
            now = time.monotonic()
            if wait := wrong_guesses().wait_s(now):
                st.error(f"Too many wrong passwords on this server in the last minute: try again in {wait:.0f} s.")
            elif may_steer(entered, configured):
                st.session_state["operator_entered"] = entered
                st.rerun()
            else:
                wrong_guesses().add(now)
                st.error("Wrong password.")
