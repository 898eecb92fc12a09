"""The values a run logged since its last report: how many, their min and max with their batches, and their sum."""

from __future__ import annotations

import math


class Window:
    """The values logged since the last report: how many, their min and max with their batches, and their sum."""

    __slots__ = ("hi", "hi_at", "last", "lo", "lo_at", "n", "total")

    def __init__(self) -> None:
        self.n, self.lo, self.lo_at, self.hi, self.hi_at, self.total = 0, math.inf, 0, -math.inf, 0, 0.0
        self.last: float | None = None

    def add(self, value: float, at: int) -> None:
        self.n += 1
        self.total += value
        self.last = value
        if value < self.lo:
            self.lo, self.lo_at = value, at
        if value > self.hi:
            self.hi, self.hi_at = value, at

    def summary(self) -> tuple[int, float, int, float, int, float] | None:
        """(n, min, min_at, max, max_at, mean) for the report, or None when nothing finite was logged since the last."""
        if not self.n or self.lo_at == 0:  # lo_at 0: nothing compared below inf, all NaN
            return None
        return (self.n, self.lo, self.lo_at, self.hi, self.hi_at, self.total / self.n)
