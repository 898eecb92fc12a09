"""What a kind of side work (state snapshots, evaluations, kept checkpoints) may cost: a share of the run's time, and
bytes a minute in the run file. The batch schedules say when the work is wanted; a budget thins what it cannot afford.

Both are token buckets: credit accrues at a steady rate up to a cap, a piece of work is allowed while there is credit,
and what it cost is taken off afterwards (it may go below zero: the work after it waits the longer). The caps are the
bursts a run's first decades of batches need, where the schedules ask for most and the net learns most.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Bucket:
    """Credit accruing at rate a second up to cap, starting full."""

    rate: float
    cap: float
    credit: float = field(init=False)
    counted_at: float = field(default_factory=time.monotonic)  # monotonic time the credit was last brought up to date

    def __post_init__(self) -> None:
        self.credit = self.cap

    def level(self, now: float) -> float:
        """The credit now (brought up to date)."""
        self.credit = min(self.cap, self.credit + (now - self.counted_at) * self.rate)
        self.counted_at = now
        return self.credit


class CostBudget:
    """A share of the run's time (seconds of work per second), and optionally bytes per second written."""

    def __init__(self, share: float, burst_s: float, bytes_per_s: float | None = None, burst_bytes: float = 0.0):
        self.time = Bucket(share, burst_s)
        self.bytes = None if bytes_per_s is None else Bucket(bytes_per_s, burst_bytes)
        self.spent_s = 0.0  # seconds of work this budget allowed, all told: what the bench reports
        self.spent_bytes = 0
        self.refused = 0  # pieces of work thinned out

    def allows(self, now: float) -> bool:
        """Whether the next piece of work is affordable now; refused ones are counted."""
        fits = self.time.level(now) > 0 and (self.bytes is None or self.bytes.level(now) > 0)
        self.refused += not fits
        return fits

    def charge(self, seconds: float, size: int = 0) -> None:
        """Take what a piece of work cost off the credit: its seconds on the training thread and the bytes it wrote."""
        self.time.credit -= seconds
        self.spent_s += seconds
        if self.bytes is not None:
            self.bytes.credit -= size
        self.spent_bytes += size

    @contextmanager
    def charged(self, size: int = 0) -> Iterator[None]:
        """Charge the work done inside to this budget: its seconds on the training thread, and size bytes written."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.charge(time.perf_counter() - started, size)
