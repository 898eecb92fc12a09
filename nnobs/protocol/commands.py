"""Every command a run takes, declared once: its check, its wording, its chart marker and how a text field reads it.

Adding a command is one entry here and one handler in the worker's command table (nnobs.training.commands).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nnobs.protocol.errors import CommandError
from nnobs.protocol.numbers import is_int, is_number
from nnobs.protocol.rundir import RUN_NAME

MAX_TARGET = 10**12  # far beyond any run here; larger is a typo
MAX_ETA = 1e6
MAX_PACE = 1e6  # batches a second; more is no slow motion at all
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds up to this
DEFAULT_MIN_FREE_MB = 100.0  # a run pauses while its filesystem has less free: it must never be what fills a disk
MAX_MIN_FREE_MB = 1e9


@dataclass(frozen=True)
class Field:
    """How a text field on the page reads the command's value: strictly, naming what is allowed."""

    sets: str  # what the field sets: "The target"
    takes: str  # what it takes: "a whole number of batches from 0 to 1,000,000,000,000"
    whole: bool  # whole numbers only ("1e6" is one, "1.5" is not)
    blank_is_none: bool = False  # a blank field means no value (reinit: the run's own seed)


@dataclass(frozen=True)
class Flag:
    """How `nnobs set` takes the setting: --NAME (report_every's is --report-every) with this type and help."""

    kind: type[int] | type[float]
    metavar: str
    help: str


@dataclass(frozen=True)
class Sidebar:
    """How the run page's sidebar offers the setting: a field with this label, a button, and what it does."""

    place: int  # its place among the sidebar's settings, from the top
    label: str
    button: str
    help: str


@dataclass(frozen=True)
class Command:
    """One command: what it may carry, how it reads to a person and on a chart, and how a field spells it."""

    name: str  # as control.json and the run file spell it
    check: Callable[[Any], Any]  # the value the worker applies, or CommandError saying what is allowed
    words: Callable[[Any], str]  # as the page lists it: "Target 5,000 batches"
    marker: Callable[[Any, dict], str] | None  # a chart's label where it took effect (value, ack record); None: none
    field: Field | None = None  # None: no text field sets it
    action: bool = False  # an action is done once; a setting is applied again when a generation resumes before it
    flag: Flag | None = None  # a setting `nnobs set` changes
    sidebar: Sidebar | None = None  # a setting the run page's sidebar changes (it needs a field)


def _whole_in_range(what: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not is_int(value) or not 0 <= value <= MAX_TARGET:
            raise CommandError(f"{what} from 0 to {MAX_TARGET:,}, not {value!r}")
        return value

    return check


def _number_in(low: float, high: float, low_open: bool, message: str) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if (
            not is_number(value)
            or not math.isfinite(value)
            or not (low < value if low_open else low <= value)
            or value > high
        ):
            raise CommandError(f"{message}, not {value!r}")
        return float(value)

    return check


def _seed_or_none(value: Any) -> int | None:
    if value is not None and (not is_int(value) or not 0 <= value <= MAX_SEED):
        raise CommandError(f"reinit takes no seed (the run's own) or a seed from 0 to {MAX_SEED:,}, not {value!r}")
    return value


def _exploit(value: Any) -> dict:
    """{"from": RUN, "batch": N, "eta": X}: take run's checkpoint at batch N in place, with eta X."""
    if (
        not isinstance(value, dict)
        or set(value) != {"from", "batch", "eta"}
        or not isinstance(value["from"], str)
        or not RUN_NAME.fullmatch(value["from"])
        or not is_int(value["batch"])
        or not 0 <= value["batch"] <= MAX_TARGET
    ):
        raise CommandError(
            f'exploit takes {{"from": RUN, "batch": N, "eta": X}}: a run\'s name, a batch and an eta, not {value!r}'
        )
    eta = _number_in(0, MAX_ETA, True, f"exploit's eta must be a number above 0 and at most {MAX_ETA:g}")(value["eta"])
    return {**value, "eta": eta}


def _exploit_marker(value: Any, record: dict) -> str:
    return f"exploit: {value['from']}'s batch {value['batch']:,}, eta {value['eta']:.3g}"


def _nothing(value: Any) -> None:
    return None


def _label(form: str) -> Callable[[Any, dict], str]:
    return lambda value, record: form.format(value) if value is not None else form


def _rewind_marker(value: Any, record: dict) -> str:
    went_from = record.get("rewound_from")
    return f"rewind from {went_from:,}" if is_int(went_from) else "rewind"


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "target",
            _whole_in_range("target must be a whole number of batches"),
            lambda v: f"Target {v:,} batches",
            _label("target {:,}"),
            Field("The target", f"a whole number of batches from 0 to {MAX_TARGET:,}", True),
            flag=Flag(int, "N", "train until batch N, then idle (a script: end)"),
            sidebar=Sidebar(
                0,
                "Target batches",
                "Set target",
                "Train until the batch count reaches this, then wait (a script ends there, unless it waits). Raise it to "
                "train on, lower it to stop early. "
                "A whole number: 5000, 5,000 and 1e6 all work.",
            ),
        ),
        Command(
            "eta",
            _number_in(0, MAX_ETA, True, f"eta must be a number above 0 and at most {MAX_ETA:g}"),
            lambda v: f"Eta {v:g}",
            _label("eta {:g}"),
            Field("Eta", f"a number above 0 and at most {MAX_ETA:,.0f}", False),
            flag=Flag(float, "X", "the learning rate, above 0"),
            sidebar=Sidebar(
                1,
                "Learning rate (eta)",
                "Set eta",
                "How large a step gradient descent takes on each batch; above 0. Too high and the loss blows up "
                "(diverges): lower it to recover.",
            ),
        ),
        Command(
            "report_every",
            _whole_in_range("report_every must be a whole number of batches (0 reports only on request)"),
            lambda v: "Snapshots only when asked" if v == 0 else f"Snapshot every {v:,} batches",
            _label("snapshot every {:,}"),
            Field(
                "The snapshot interval", f"a whole number of batches from 0 (only when asked) to {MAX_TARGET:,}", True
            ),
            flag=Flag(int, "N", "report the full parameter vector every N batches (0: only when asked, by tell-state)"),
            sidebar=Sidebar(
                3,
                "Parameter snapshot every N batches",
                "Set interval",
                "How often the worker writes every weight and bias of the net to the run file, for the "
                "state-vector charts; 0 writes them only when asked (Snapshot parameters now). Large nets write "
                "a lot: raise it for long runs.",
            ),
        ),
        Command(
            "pace",
            _number_in(0, MAX_PACE, False, f"pace must be batches a second from 0 (flat out) to {MAX_PACE:,.0f}"),
            lambda v: "Pace: flat out" if v == 0 else f"Pace {v:,g} batches a second",
            lambda v, record: "pace: flat out" if v == 0 else _label("pace {:g}/s")(v, record),
            Field("The pace", f"a number of batches a second from 0 (flat out) to {MAX_PACE:,.0f}", False),
            flag=Flag(float, "N", "train at most N batches a second, to watch it slowly (0: flat out)"),
            sidebar=Sidebar(
                2,
                "Pace (batches a second)",
                "Set pace",
                "At most this many batches a second, to watch training in slow motion; 0 = flat out.",
            ),
        ),
        Command(
            "min_free",
            _number_in(
                0, MAX_MIN_FREE_MB, False, f"min_free must be megabytes from 0 (never pause) to {MAX_MIN_FREE_MB:,.0f}"
            ),
            lambda v: f"Pause below {v:,g} MB free",
            None,
            flag=Flag(
                float,
                "MB",
                "pause (LOW DISK) while the run's filesystem has less than MB megabytes free (default 100; 0: never)",
            ),
        ),
        Command("tell_state", _nothing, lambda v: "Snapshot now", _label("snapshot"), action=True),
        Command(
            "rewind",
            _whole_in_range("rewind needs the whole number of the batch to go back to"),
            lambda v: f"Rewind to batch {v:,}",
            _rewind_marker,
            Field("The batch to rewind to", f"a whole number from 0 to {MAX_TARGET:,}", True),
            action=True,
        ),
        Command(
            "reinit",
            _seed_or_none,
            lambda v: "Reinitialize with the run's own seed" if v is None else f"Reinitialize with seed {v}",
            lambda v, record: "reinit" if v is None else f"reinit, seed {v}",
            Field(
                "The seed",
                f"blank (the run's own seed) or a whole number from 0 to {MAX_SEED:,}",
                True,
                blank_is_none=True,
            ),
            action=True,
        ),
        Command(
            "exploit",
            _exploit,
            lambda v: f"Take {v['from']}'s checkpoint at batch {v['batch']:,}, eta {v['eta']:g}",
            _exploit_marker,
            action=True,
        ),
        Command("shutdown", _nothing, lambda v: "Shut down", None, action=True),
    )
}
NAMES = tuple(COMMANDS)


MAX_ETA_STEPS = 1000


def parse_eta_schedule(text: str) -> list[list]:
    """ "0:0.3,1000:0.36,3000:0.29" as [[0, 0.3], [1000, 0.36], [3000, 0.29]]: eta from each batch on; checked."""
    steps: list[list] = []
    for item in text.split(","):
        batch, colon, eta = item.strip().partition(":")
        try:
            steps.append([int(batch.replace("_", "")), float(eta)])
        except ValueError:
            raise CommandError(
                f"eta schedule {text!r} refused at {item.strip()!r}: write BATCH:ETA pairs separated by commas, "
                "e.g. 0:0.3,1000:0.36"
            ) from None
        if not colon:
            raise CommandError(f"eta schedule {text!r} refused at {item.strip()!r}: BATCH:ETA, e.g. 1000:0.36")
    return check_eta_schedule(steps)


def check_eta_schedule(steps: Any) -> list[list]:
    """[[batch, eta], ...], batches rising from 0 or more, each eta as the eta command takes it; else CommandError."""
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_ETA_STEPS:
        raise CommandError(f"an eta schedule is a list of 1 to {MAX_ETA_STEPS:,} [batch, eta] pairs, not {steps!r}")
    checked: list[list] = []
    for step in steps:
        if not isinstance(step, list) or len(step) != 2:
            raise CommandError(f"an eta schedule's steps are [batch, eta] pairs, not {step!r}")
        batch = _whole_in_range("an eta schedule's batch must be a whole number")(step[0])
        eta = check_command("eta", step[1])
        if checked and batch <= checked[-1][0]:
            raise CommandError(f"an eta schedule's batches must rise: {batch:,} comes after {checked[-1][0]:,}")
        checked.append([batch, eta])
    return checked


def check_command(cmd: Any, value: Any) -> Any:
    """The value the worker will apply for cmd, or CommandError saying why it would be refused."""
    command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if command is None:
        raise CommandError(f"unknown command {cmd!r}: expected {', '.join(NAMES[:-1])} or {NAMES[-1]}")
    return command.check(value)


def command_words(cmd: Any, value: Any) -> str:
    """A command as the page lists it: "Target 5,000 batches", "Pace: flat out", "Shut down"; a value of the wrong
    type, written by hand, is shown as it is (the worker rejects it)."""
    command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if command is not None:
        try:
            return command.words(value)
        except (TypeError, ValueError):
            pass
    return f"{cmd} {value!r}" if value is not None else str(cmd)


def marker_label(cmd: Any, value: Any, record: dict) -> str:
    """What a chart's marker says of an acknowledged command, or "" for commands not marked (shutdown)."""
    command = COMMANDS.get(cmd) if isinstance(cmd, str) else None
    if command is None or command.marker is None:
        return ""
    try:
        return command.marker(value, record)
    except (ValueError, TypeError):  # a value of the wrong type, written by hand: the command's name will do
        return str(cmd)
