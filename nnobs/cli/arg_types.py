"""The command line's own value types: a whole number, and tail's -n (the last N, or from the K-th on)."""

from __future__ import annotations

import argparse

TailLines = tuple[str, int]  # ("last", N): the last N records; ("from", K): every record from the K-th on


def whole_number(text: str) -> int:
    """A whole number, or argparse's error naming what was given."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def tail_lines(text: str) -> TailLines:
    """-n's value: N for the last N records, +K for every record from the K-th on (as Unix tail)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number N (the last N records) or +K (from the K-th on), not {text!r}"
        )
    return ("from", max(number, 1)) if text.startswith("+") else ("last", number)
