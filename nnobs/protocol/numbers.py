"""The number checks every layer shares: a whole number (not a bool), a number, a finite one, a JSON-sized one."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An int that is not a bool: JSON's true is not the batch 1."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float that is not a bool (NaN and infinities included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def is_count(value: Any) -> bool:
    """A whole number from 0 up."""
    return is_int(value) and value >= 0


def number(value: Any) -> float | None:
    """value when it is a finite-width number JSON can hold, else None."""
    if isinstance(value, float) or (is_int(value) and abs(value) < 2**63):
        return value
    return None
