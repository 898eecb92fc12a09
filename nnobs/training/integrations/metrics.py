"""Logged values as nnobs metrics: names as nnobs takes them, numbers as floats, whatever framework logged them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

NOT_IN_A_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def metric_name(key: str) -> str:
    """A framework's metric key as an nnobs metric name: "/" written ".", anything else outside a name's letters
    written "_" ("train/acc" charts as train.acc)."""
    name = NOT_IN_A_NAME.sub("_", str(key).replace("/", "."))[:64]
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"[:64]


def as_number(value: Any) -> float | None:
    """A logged value as a float: numbers, numpy scalars and one-element arrays or tensors; None for anything else."""
    if isinstance(value, (bool, str, bytes)):
        return None
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()  # a numpy scalar, a one-element array or tensor; a larger one raises
        except (ValueError, RuntimeError, TypeError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def numbers_of(logged: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, float]:
    """The finite numbers among a framework's logged values, named as nnobs metrics."""
    metrics = {}
    for key, value in logged.items():
        number = as_number(value)
        if key not in leave_out and number is not None and math.isfinite(number):
            metrics[metric_name(key)] = number
    return metrics
