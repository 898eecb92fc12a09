"""The top of the run page: the run's header and badge, its metrics, its problems, and the commands sent to it."""

from __future__ import annotations

import streamlit as st

from nnobs.app import widgets
from nnobs.launching.base import STOP_GRACE_S
from nnobs.launching.status import scheduled_lr
from nnobs.protocol.commands import command_words
from nnobs.protocol.population import population_of
from nnobs.protocol.rundir import RunDir, log_tail
from nnobs.protocol.states import state_of
from nnobs.reading.series import RECENT_BATCHES
from nnobs.views import wording
from nnobs.views.view import RunView

METRIC_HEIGHT_PX = 96  # label, value and a change under it: a change that comes and goes moves nothing below


def header(run: RunDir, view: RunView) -> None:
    status = view.status
    label = status.label
    st.markdown(
        f"## nnobs · `{run.name}` :{state.badge if (state := state_of(label)) else 'gray'}-badge[{label.upper()}]"
    )
    parts = []
    if status.generation:
        parts.append(f"Generation {status.generation} (each start, restart, rewind or reinitialize begins the next)")
    elif status.state != "failed to start":  # the badge says it: "not started yet" beside it would read as waiting
        parts.append("Not started yet")
    kind = (view.script or {}).get("kind")
    serves = "follower" if kind == "followed" else "script" if view.script is not None else "worker"
    parts.append(f"no {serves} running" if status.pid is None else f"{serves} pid {status.pid}")
    if status.job_id:
        # Why it waits, as Slurm says.
        reason = f": {wording.as_text(status.reason)}" if status.reason and status.state == "queued" else ""
        job, job_state = wording.as_text(status.job_id), wording.as_text((status.job_state or "unknown").lower())
        parts.append(f"Slurm job {job} ({job_state}{reason})")
    if status.pace:
        parts.append(f"paced at most {status.pace:,g} batches a second")
    st.caption(" · ".join(parts + [wording.as_text(run.path)]))
    if served := wording.served_by(view.script):
        st.caption(f"Served by {wording.as_text(served)}")
    if (population := population_of(run)) is not None:
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.caption(
            f"A member of the population {wording.as_text(population.name)}: every {population.interval:,} batches its "
            f"bottom {population.quantile:.0%} by {wording.as_text(population.metric)} take a top member's checkpoint "
            "and a perturbed eta (population-based training)."
        )
        right.page_link(
            widgets.page_named("compare"),
            label="Its family tree",
            icon=":material/account_tree:",
            query_params={"runs": population.members},
        )
    if view.origin:
        parent = str(view.origin.get("run", "?"))
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.caption(wording.fork_origin(view.origin))
        right.page_link(
            widgets.page_named("compare"),
            label=f"Compare with {wording.as_text(parent)}",
            icon=":material/compare_arrows:",
            query_params={"runs": [parent, run.name]},
        )


def metrics(view: RunView) -> None:
    status = view.status
    cols = [column.container(height=METRIC_HEIGHT_PX, border=False) for column in st.columns(6)]
    cols[0].metric(
        "Batch",
        f"{status.batch:,}",
        help="Batches trained so far: each is one step of gradient descent on a batch of training data.",
    )
    rate = view.rate if status.state == "training" else None
    pace = f"at most {status.pace:,g}" if status.pace else None
    cols[1].metric(
        "Batches/s",
        "-" if rate is None else f"{rate:,.0f}",
        delta=pace,
        delta_color="off",
        delta_arrow="off",
        help="Training speed over the last 10 s; under it, the pace when one is set.",
    )
    left = view.seconds_to_target
    cols[2].metric(
        "To target",
        "-" if left is None else wording.duration(left),
        help="Time until the batch count reaches the target, at the current speed.",
    )
    loss = "diverged" if status.diverged else "-" if status.loss is None else f"{status.loss:.3g}"
    change = wording.loss_change(view.loss_change) if status.state == "training" and not status.diverged else None
    cols[3].metric(
        "Loss",
        loss,
        delta=change,
        delta_color="inverse",
        help=f"The training loss's mean over the newest {RECENT_BATCHES} batches or more (whole report windows), "
        "so one lucky minibatch does not move it. Under it, its change over the last 10 s: in percent, or in "
        "decades (factors of 10) past a factor of 2; nothing when it barely moved.",
    )
    in_use = scheduled_lr(status.eta, status.lr)
    cols[4].metric(
        "Eta",
        "-" if status.eta is None else f"{status.eta:g}",
        delta=None if in_use is None else f"in use {in_use:.3g}",
        delta_color="off",
        delta_arrow="off",
        help="The base learning rate: what Eta sets. Where the run's schedule scales it (warmup, decay), the "
        "learning rate the optimizer steps with now is under it, charted as lr.",
    )
    age = status.heartbeat_age_s
    gone = {"stopped": "worker stopped", "crashed": "worker died", "stalled": "worker stuck?"}.get(status.state)
    cols[5].metric(
        "Last record",
        "-" if age is None else wording.ago(age),
        delta=gone,
        delta_color="red" if status.state in ("crashed", "stalled") else "off",
        delta_arrow="off",
        help="When the worker last wrote to the run file. A live worker writes at least once a second, so "
        "a number that keeps growing means it is stuck; a stopped or dead one writes nothing more.",
    )
    if status.target is not None:
        done, text = wording.progress(status.batch, status.target)
        st.progress(done, text=text)


def problems(run: RunDir, view: RunView) -> None:
    status = view.status
    if status.unsafe:
        st.error(
            f"Not followed: {wording.as_text(status.unsafe)}. nnobs never reads or writes a run's files through a link, "
            "nor a file of another kind, so this run shows only what its other files hold, and does not start. "
            "Whoever keeps the runs root should look at it and move it away."
        )
    if status.state == "crashed":
        reason = f": {wording.as_text(status.error)}" if status.error else " without a shutdown record"
        st.error(f"The worker died{reason}. **Restart** resumes from its last checkpoint. The end of worker.log:")
        st.code(log_tail(run) or "(worker.log is empty)", language=None)
    if status.state == "failed to start":
        serves = "script" if view.script is not None or run.launch.exists() else "worker"
        st.error(
            f"The {serves} exited before it began, so the run never started. Fix what it says below, then start it "
            "again from the sidebar (nothing starts it until then):"
        )
        st.code(status.error, language=None, wrap_lines=True)  # shown as typed, its lines kept: no Markdown here
    if status.state == "stalled":
        st.warning(
            f"The worker (pid {status.pid}) holds its lock but has written nothing for "
            f"{status.heartbeat_age_s:.0f} s: it looks stuck. **Restart** asks it to shut down, kills it if it has "
            f"not after {STOP_GRACE_S:.0f} s, and resumes from the last checkpoint."
        )
    if status.write_error:
        st.error(
            f"The worker lives but {wording.as_text(status.write_error)}: nothing it does reaches the run file. "
            "Free some space; it goes on by itself once it can write."
        )
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
        at_loss = "" if status.loss is None else f" at {status.loss:.3g}"  # no mean where a window's is null
        rose = f" ({wording.as_text(status.rose)})" if status.rose else ""
        st.warning(
            f"The net is not learning: the loss stopped moving{at_loss}{best}{rose}. **Lower eta** to let "
            "it settle, or **rewind** to a batch before it went wrong (the loss chart shows where)."
        )
    elif status.rose:
        st.warning(
            f"Something went wrong: {wording.as_text(status.rose)}. **Lower eta** (or undo the command) to train "
            "on from here, or **rewind** to a batch before it (the loss chart marks where it took effect)."
        )
    if view.control_error:
        st.warning(wording.as_text(view.control_error))


def commands(view: RunView) -> None:
    """Recent commands and starts from everyone, newest first; each command pending until the worker answers it."""
    alive = (state := state_of(view.status.state)) is not None and state.alive
    entries: list[tuple[float, str]] = []  # (when, Markdown line)
    pending = 0
    for command, answer in view.recent:
        if answer is None:
            pending += 1
            outcome = ":orange[pending]" + ("" if alive else " (waits for the next worker)")
        elif answer.ok:
            outcome = f":green[done at batch {answer.batch:,}]"
        else:
            outcome = f":red[rejected: {wording.as_text(answer.reason)}]"
        what = wording.as_text(command_words(command.get("cmd"), command.get("value")))
        entries.append((_when(command.get("t")), _line(what, str(command.get("by") or ""), outcome)))
    for event in view.starts:
        where = wording.as_text(event.detail) if event.detail else f"at batch {event.batch:,}"
        entries.append((_when(event.t), _line(f"Worker started (generation {event.gen or '-'})", event.by, where)))
    if not entries:
        return
    entries.sort(key=lambda entry: entry[0], reverse=True)
    title = f"Commands and starts · {pending} pending" if pending else "Commands and starts · none pending"
    with st.expander(title, expanded=False, key="commands_open"):
        st.markdown("\n".join(line for _, line in entries[: len(view.recent) + len(view.starts)]))


def _when(t: object) -> float:
    return float(t) if isinstance(t, (int, float)) else 0.0


def _line(what: str, by: str, outcome: str) -> str:
    who = wording.sender(by)
    return f"- **{what}**{' ' + who if who else ''}: {outcome}"
