"""What a person typed into a setting field, read strictly: the value meant, or a refusal naming what is allowed."""

from __future__ import annotations

import re
from decimal import Decimal

from nnobs.control import MAX_ETA, MAX_PACE, MAX_SEED, MAX_TARGET, check_command
from nnobs.errors import CommandError

# "5000", "5,000" (commas only between groups of three), "1e6", "0.05", ".5"; ASCII digits only.
_NUMBER = re.compile(r"[+-]?(?P<whole>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<fraction>\d*))?(?:[eE][+-]?\d{1,4})?", re.ASCII)

# cmd: (what the field sets, what it takes, whole numbers only). The ranges are check_command's, which decides.
FIELDS: dict[str, tuple[str, str, bool]] = {
    "target": ("The target", f"a whole number of batches from 0 to {MAX_TARGET:,}", True),
    "eta": ("Eta", f"a number above 0 and at most {MAX_ETA:,.0f}", False),
    "pace": ("The pace", f"a number of batches a second from 0 (flat out) to {MAX_PACE:,.0f}", False),
    "report_every": ("The snapshot interval", f"a whole number of batches from 0 (only when asked) to {MAX_TARGET:,}",
                     True),
    "rewind": ("The batch to rewind to", f"a whole number from 0 to {MAX_TARGET:,}", True),
    "reinit": ("The seed", f"blank (the run's own seed) or a whole number from 0 to {MAX_SEED:,}", True),
}


class EntryError(CommandError):
    """What was typed into a field is not a value it takes."""


def parse_number(text: str, whole: bool) -> int | float:
    """The number text spells, or ValueError; with whole, only an exactly whole one, as an int ("1e6" is, "1.5" is not)."""
    spelled = _NUMBER.fullmatch(text)
    if not spelled or not (spelled["whole"] or spelled["fraction"]):
        raise ValueError(f"{text!r} is not a number")
    number = Decimal(text.replace(",", ""))  # exact: "1e6" is 10**6, not a float near it
    if not whole:
        return float(number)  # too large for a float: inf, which no check lets through
    if number != number.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number")
    return int(number)


def read_entry(cmd: str, text: str) -> int | float | None:
    """The value for cmd that text means, checked as the worker will check it; EntryError naming what is allowed."""
    name, allowed, whole = FIELDS[cmd]
    typed = text.strip()
    try:
        value = None if cmd == "reinit" and not typed else parse_number(typed, whole)
        return check_command(cmd, value)
    except ValueError:  # CommandError is one too
        raise EntryError(f"{name} must be {allowed}, not {_shown(typed)}.") from None


def entry_text(cmd: str, value: float | None) -> str:
    """How a field shows the run's value: text that read_entry reads back as the same value."""
    if value is None:
        return ""
    if FIELDS[cmd][2]:
        return f"{int(value):,}"
    text = repr(float(value))  # the shortest text that is exactly this float
    return text.removesuffix(".0")


def _shown(typed: str) -> str:
    if not typed:
        return "blank"
    return f"“{typed[:40]}{'…' if len(typed) > 40 else ''}”"
