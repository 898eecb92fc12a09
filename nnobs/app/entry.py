"""What a person typed into a setting field, read strictly: the value meant, or a refusal naming what is allowed."""

from __future__ import annotations

import re
from decimal import Decimal

from nnobs.protocol.commands import COMMANDS, Field, check_command
from nnobs.protocol.errors import CommandError

# "5000", "5,000" (commas only between groups of three), "1e6", "0.05", ".5"; ASCII digits only.
_NUMBER = re.compile(r"[+-]?(?P<whole>\d{1,3}(?:,\d{3})+|\d*)(?:\.(?P<fraction>\d*))?(?:[eE][+-]?\d{1,4})?", re.ASCII)


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
    field = _field(cmd)
    typed = text.strip()
    try:
        value = None if field.blank_is_none and not typed else parse_number(typed, field.whole)
        return check_command(cmd, value)
    except ValueError:  # CommandError is one too
        raise EntryError(f"{field.sets} must be {field.takes}, not {_shown(typed)}.") from None


def entry_text(cmd: str, value: float | None) -> str:
    """How a field shows the run's value: text that read_entry reads back as the same value."""
    if value is None:
        return ""
    if _field(cmd).whole:
        return f"{int(value):,}"
    text = repr(float(value))  # the shortest text that is exactly this float
    return text.removesuffix(".0")


def _shown(typed: str) -> str:
    if not typed:
        return "blank"
    return f"“{typed[:40]}{'…' if len(typed) > 40 else ''}”"


def _field(cmd: str) -> Field:
    field = COMMANDS[cmd].field
    if field is None:
        raise KeyError(f"no text field sets {cmd}")
    return field
