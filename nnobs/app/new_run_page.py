"""The new run page: a form that creates a run of a built-in task, starts its worker and opens its page."""

from __future__ import annotations

import streamlit as st

from nnobs.app import widgets
from nnobs.app.new_run_form import NUMBERS, FormErrors, defaults, free_name, read_form
from nnobs.lab.create import new_run
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import list_runs
from nnobs.training.builtin.tasks import describe_task, task_names
from nnobs.views.wording import as_text

HELP = {
    "net": "Layer widths from the input, each but the first with its activation: t tanh, r relu, s sin, g sigmoid, "
    "no letter identity. 2x8tx8tx1t is 2 inputs, two hidden layers of 8 with tanh, 1 tanh output.",
    "eta": "The step gradient descent takes on each batch; above 0.",
    "batch_size": "Training examples in each batch.",
    "noise": "How far the task's points are scattered, from 0 to 0.5.",
    "seed": "Draws the net's first parameters and the task's points: the same seed, the same run.",
    "target": "Batches to train, then wait: raise it later from the run's page to train on.",
}


def new_run_page() -> None:
    st.markdown("## nnobs · new run")
    if not widgets.may_steer_here():
        st.info("Only operators start runs: sign in with the operator password in the sidebar first.")
        widgets.sign_in()
        return
    widgets.sign_in()
    names = task_names()
    task = st.selectbox(
        "Task",
        names,
        index=names.index("spiral") if "spiral" in names else 0,
        key="new_task",
        format_func=lambda name: f"{name}: {describe_task(name)}",
        help="What the net learns: the notebook's XOR, a 2-D classification or a regression.",
    )
    default = defaults(task)
    with st.form("new_run", border=True, enter_to_submit=False):
        left, right = st.columns(2)
        name = left.text_input(
            "Name",
            value=free_name(task, set(list_runs())),
            key=f"new_name:{task}",
            help="The run's directory under the runs root, and its page's address (?run=NAME).",
        )
        net = right.text_input("Net", key="new_net", placeholder=f"blank: {default.net}", help=HELP["net"])
        typed: dict[str, str] = {}
        columns = st.columns(len(NUMBERS))
        for column, (field, label, _) in zip(columns, NUMBERS):
            shown = getattr(default, field)
            placeholder = f"blank: {shown:,}" if isinstance(shown, int) else f"blank: {shown:g}"
            typed[field] = column.text_input(label, key=f"new_{field}", placeholder=placeholder, help=HELP[field])
        submitted = st.form_submit_button("Create and start", type="primary")
    if submitted:
        _create(name, task, net, typed)
    if refused := st.session_state.get("new_run_refused"):
        st.error("\n\n".join(map(as_text, refused)))  # each quotes what was typed; every one at once


def _create(name: str, task: str, net: str, typed: dict[str, str]) -> None:
    """Create the run and start it, then open its page; a refusal creates nothing and is shown under the form."""
    st.session_state.pop("new_run_refused", None)
    if not widgets.may_steer_here():
        st.session_state["new_run_refused"] = ["Only operators start runs: sign in first."]
        return
    try:
        run, config = read_form(name, task, net, typed)
        with st.spinner(f"Starting {run.name}…"):
            new_run(run, config, by="page")
    except FormErrors as err:
        st.session_state["new_run_refused"] = err.errors
        return
    except NnobsError as err:
        st.session_state["new_run_refused"] = [str(err)]
        return
    st.switch_page(widgets.page_named("run"), query_params={"run": run.name})
