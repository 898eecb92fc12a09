"""Every state a run can be in, declared once: what it means, its colours, and whether a live worker serves it."""

from __future__ import annotations

from enum import StrEnum

STALL_AFTER_S = 10.0  # a live worker writes at least once a second: this much silence means it is stuck


class State(StrEnum):
    """A run's state as its badge, the overview, `nnobs status` and sweeps name it; equal to its word ("training")."""

    # word, Streamlit badge colour, text colour on white, a live worker serves it, meaning
    QUEUED = (
        "queued",
        "violet",
        "#803df5",
        False,
        "its Slurm job waits for the scheduler (see the reason), or its worker is starting",
    )
    TRAINING = ("training", "green", "#21a366", True, "the worker is alive and below its target")
    IDLE = ("idle", "blue", "#1c83e1", True, "the worker is alive and at its target")
    STALLED = (
        "stalled",
        "orange",
        "#e07b00",
        True,
        f"the worker is alive but has written nothing for {STALL_AFTER_S:.0f} s or more: stuck; restart ends it",
    )
    STOPPED = ("stopped", "gray", "#808495", False, "shut down cleanly; start resumes from its last checkpoint")
    CRASHED = (
        "crashed",
        "red",
        "#d62728",
        False,
        "the worker died without a shutdown record; start resumes from its last checkpoint",
    )
    FAILED_TO_START = (
        "failed to start",
        "red",
        "#d62728",
        False,
        "its worker or script exited before it began (its error is shown); Start tries again, and nothing else does",
    )
    DIVERGED = (
        "diverged",
        "orange",
        "#e07b00",
        True,
        "the loss is no longer a number; training is paused until eta is lowered (set --eta)",
    )
    LOSS_ROSE = (
        "loss rose",
        "orange",
        "#e07b00",
        True,
        "the loss rose by a large factor after a command (which one is said): lower eta, or rewind to before it",
    )
    NOT_LEARNING = (
        "not learning",
        "yellow",
        "#b59a00",
        True,
        "alive, but the loss stopped moving far above its best",
    )
    CANNOT_WRITE = (
        "cannot write",
        "red",
        "#d62728",
        True,
        "the worker is alive but cannot write its run file (see below); training waits until it can",
    )
    LOW_DISK = (
        "low disk",
        "orange",
        "#e07b00",
        True,
        "the worker is alive and waits: its filesystem has less free space than the run's floor",
    )
    FOLLOWING = (
        "following",
        "blue",
        "#1f77b4",
        False,
        "a log written elsewhere (TensorBoard, CSV), shown as it is written: it cannot be steered",
    )
    IMPORTED = (
        "imported",
        "gray",
        "#808495",
        False,
        "a run file imported from elsewhere: read-only, nothing to start or steer",
    )
    ABSENT = ("absent", "gray", "#808495", False, "no such run")

    def __new__(cls, word: str, badge: str, colour: str, alive: bool, meaning: str) -> State:
        state = str.__new__(cls, word)
        state._value_ = word
        state.badge, state.colour, state.alive, state.meaning = badge, colour, alive, meaning
        return state

    badge: str  # the page's badge colour, a Streamlit colour name
    colour: str  # the overview's text colour, readable on white
    alive: bool  # a live worker serves the run: it can still be told things
    meaning: str  # one line, in the words of the page's badges


_BY_WORD: dict[str, State] = {state.value: state for state in State}


def state_of(word: str) -> State | None:
    """The state a word names ("not learning"), or None for one no state has."""
    return _BY_WORD.get(word)
