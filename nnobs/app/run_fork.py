"""The run page's fork form: a new run from this one's checkpoint, with eta, target or the batch changed."""

from __future__ import annotations

import streamlit as st

from nnobs.app import widgets
from nnobs.app.entry import EntryError, read_entry
from nnobs.app.run_refusals import VIEWERS_REFUSED, new_submit, refusals, show_refusal
from nnobs.lab import create as lab
from nnobs.launching.status import RunStatus
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir, check_run_name


def fork_form(run: RunDir, status: RunStatus) -> None:
    """Fork: a new run from this one's latest checkpoint (or a kept one), with eta or target changed."""
    st.subheader("Fork")
    with st.form("fork_form", border=False, enter_to_submit=False, clear_on_submit=False):
        name = st.text_input(
            "New run's name",
            key=_form_key("fork_name", run),
            placeholder=f"{run.name}-fork",
            help="The fork is a run of its own, under this name, trained on by a worker of its own.",
        )
        eta = st.text_input(
            "Its eta",
            key=_form_key("fork_eta", run),
            placeholder=f"blank: {status.eta:g}" if status.eta else "blank: the same",
            help="The learning rate the fork trains with from the start; blank keeps this run's.",
        )
        target = st.text_input(
            "Its target batches",
            key=_form_key("fork_target", run),
            placeholder=f"blank: {status.target:,}" if status.target is not None else "blank: the same",
            help="The batch the fork trains to; blank keeps this run's.",
        )
        at = st.text_input(
            "From the checkpoint kept at or before batch",
            key=_form_key("fork_at", run),
            placeholder="blank: the latest",
            help="Fork from an older kept checkpoint (as a rewind would land) instead of the latest. Past batch 100 "
            "the kept ones lie at most 1.21 times apart while they fit their budgets (160 files and 256 MB on "
            "disk, 1 % of the training time), so the fork starts within a factor of 1.25 of the batch asked; a "
            "large net keeps fewer. The form says where before it forks.",
        )
        if st.form_submit_button("Fork this run"):
            new_submit()
            _fork(run, name or f"{run.name}-fork", eta, target, at, status.batch)
        show_refusal("fork")
        said = st.session_state.get(LANDING_SAID_KEY)
        if said and said[0] == run.name and not refusals().get("fork"):
            st.warning(said[3])  # numbers only: Markdown of its own, nothing from the run's files


def read_fork(name: str, eta: str, target: str, at: str) -> tuple[str, float | None, int | None, int | None]:
    """The fork form's entries read strictly: (new name, eta, target, batch); blanks are None. Raises NnobsError."""
    new_eta = read_entry("eta", eta) if eta.strip() else None
    new_target = read_entry("target", target) if target.strip() else None
    new_at = read_entry("rewind", at) if at.strip() else None
    # The registry's checks make these: eta a float, target and the batch whole numbers.
    return (
        check_run_name(name.strip()),
        None if new_eta is None else float(new_eta),
        None if new_target is None else int(new_target),
        None if new_at is None else int(new_at),
    )


FORM_FIELDS = ("fork_name", "fork_eta", "fork_target", "fork_at")  # the form's entries, forgotten once it has forked
# (run, batch asked, batch landed on, the words) said under the form, awaiting a second press to fork from there
LANDING_SAID_KEY = "fork_landing_said"


def _form_key(field: str, run: RunDir) -> str:
    """A form entry's key, one per run: the fork's page opens with an empty form, not with the entries that made it
    (the browser sends a widget's value back under its key, even once the key is forgotten here)."""
    return f"{field}:{run.name}"


def _fork(run: RunDir, name: str, eta: str, target: str, at: str, now: int) -> None:
    """Fork the run as the form says and open the fork; what cannot be done is refused under the form. A fork from a
    batch first says where it lands, and forks on the second press with the same batch."""
    if not widgets.may_steer_here():
        refusals()["fork"] = VIEWERS_REFUSED
        return
    try:
        new_name, new_eta, new_target, new_at = read_fork(name, eta, target, at)
        new = RunDir.named(new_name)
        if new.exists():
            raise NnobsError(f"a run named {new_name} exists already: pick another name for the fork")
        if new_at is not None and not _landing_said(run, new_at, now):
            return
        lab.fork_run(run, new, eta=new_eta, target=new_target, at=new_at, by="page")  # no spinner: see run_controls
    except (NnobsError, EntryError) as err:
        refusals()["fork"] = str(err)
        return
    except OSError as err:
        refusals()["fork"] = f"could not fork: {err.strerror or err}"
        return
    for key in (*(_form_key(field, run) for field in FORM_FIELDS), LANDING_SAID_KEY):  # back here, an empty form
        st.session_state.pop(key, None)
    st.switch_page(widgets.page_named("run"), query_params={"run": new_name})


def _landing_said(run: RunDir, asked: int, now: int) -> bool:
    """Whether where a fork from batch asked lands was said under the form, and the form pressed again since: said
    now (with a warning when it starts under half of the batch asked) when it was not."""
    where = lab.landing_of(run, asked, now)
    if where.landed is None:
        raise NnobsError(f"{run.name} keeps no checkpoint at or before batch {asked:,}")
    said = st.session_state.get(LANDING_SAID_KEY)
    if said and said[:3] == (run.name, asked, where.landed):
        return True
    warning = " **It starts under half of the batch asked.**" if where.far_below_asked else ""
    words = f"The fork from {where.words()}.{warning} Press **Fork this run** again to fork from there."
    st.session_state[LANDING_SAID_KEY] = (run.name, asked, where.landed, words)
    return False
