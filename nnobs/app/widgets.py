"""What every page shares: who may steer and how to sign in, the refresh choices, and links to the other pages."""

from __future__ import annotations

import time
from secrets import token_hex

import streamlit as st

from nnobs.app.operators import (
    OPEN_WARNING,
    TOKEN_PARAM,
    Access,
    WrongGuesses,
    client_key,
    console_notice,
    may_steer,
    operator_access,
    server_url,
)
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import runs_root

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
    """One count for the whole server, kept per client: opening more sessions does not buy a client more guesses."""
    return WrongGuesses()


def _access() -> Access:
    """Who may steer, read again on every check, so a changed password or credential takes effect at once."""
    return operator_access(st.secrets, runs_root())


def may_steer_here() -> bool:
    """Whether this session may steer: asked on every draw and again by every action, on the server."""
    try:
        access = _access()
    except NnobsError:
        return False  # sign_in says why
    return may_steer(st.session_state.get("operator_entered"), access.password)


# -- what the server's console and every page say -------------------------------------------------------------------


def announce_access() -> None:
    """Make the operator credential if there is none yet, and say once on the console how operators sign in (or that
    anyone may steer, or why no one may)."""
    try:
        notice = console_notice(_access(), _server_url())
    except NnobsError as err:
        notice = f"nnobs: {err}"
    if notice:
        _say_once_on_console(notice)


@st.cache_resource(show_spinner=False, max_entries=100)
def _say_once_on_console(notice: str) -> None:
    """Print notice once per server process: cached for every session. A new credential is a new notice, said too."""
    print(notice, flush=True)


def _server_url() -> str:
    """This server's address as its own machine reaches it, from the options it was started with."""
    return server_url(
        address=st.get_option("server.address") or "",
        port=int(st.get_option("server.port")),
        base_path=st.get_option("server.baseUrlPath") or "",
        tls=bool(st.get_option("server.sslCertFile")),
    )


def warn_if_open() -> None:
    """On a server open to everyone, say so at the top of every page."""
    try:
        open_to_all = _access().password is None
    except NnobsError:
        return  # no one steers: sign_in says why
    if open_to_all:
        # Marked text, not st.warning: an alert is for what just happened, and this is how the server always is.
        st.markdown(f":orange-background[:material/lock_open: **{OPEN_WARNING}**]")


# -- signing in ------------------------------------------------------------------------------------------------------


def sign_in_from_link() -> None:
    """Sign this session in from the sign-in link's ?token=, then take the token out of the address."""
    token = st.query_params.get(TOKEN_PARAM)
    if token is None:
        return
    del st.query_params[TOKEN_PARAM]  # out of the address bar, and so out of every link the page shows
    try:
        password = _access().password
    except NnobsError:
        return  # sign_in says why
    if password is not None and (refused := _try_password(token, password)):
        st.error(f"The sign-in link was refused. {refused}")


def _try_password(entered: str, password: str) -> str | None:
    """Sign this session in with entered if it is the password; else why not. A wrong one counts against the client,
    and while the client has guessed too often no password of it is checked, not even the right one."""
    client = _client_key()
    now = time.monotonic()
    if wait := wrong_guesses().wait_s(client, now):
        return f"Too many wrong passwords from you in the last minute: try again in {wait:.0f} s."
    if not may_steer(entered, password):
        wrong_guesses().add(client, now)
        return "Wrong password."
    st.session_state["operator_entered"] = entered
    return None


def _client_key() -> str:
    """Whom this session's guesses count against: its address, or this session where Streamlit knows none."""
    session = st.session_state.setdefault("client_session", token_hex(8))
    address = st.context.ip_address
    # Only text is an address: a script run with no browser behind it (Streamlit's AppTest) is answered a stand-in.
    return client_key(address if isinstance(address, str) else None, session)


def sign_in(where=None) -> None:
    """Unless the server is open to everyone: a sign-in form for viewers, a sign-out button for operators."""
    where = st.sidebar if where is None else where
    try:
        access = _access()
    except NnobsError as err:
        where.error(str(err))
        return
    if access.password is None:
        return  # open to everyone: the frame says so on every page
    if may_steer_here():
        where.success("Signed in as operator: you can steer this run.")
        if where.button("Sign out"):
            st.session_state.pop("operator_entered", None)
            st.rerun()
        return
    how = "the sign-in link the server printed, or the operator password" if access.kept_in else "the operator password"
    where.info(f"Read-only view. Steering this run needs {how}.")
    with where.form("sign_in", border=False, clear_on_submit=True, enter_to_submit=False):
        entered = st.text_input("Operator password", type="password")
        if st.form_submit_button("Sign in"):
            if refused := _try_password(entered, access.password):
                st.error(refused)
            else:
                st.rerun()
