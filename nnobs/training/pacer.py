"""A run's pace: at most so many batches a second, with no burst after it fell behind."""

from __future__ import annotations

PACE_CATCH_UP_S = 1.0  # a paced run that fell behind (a busy machine, a slow batch) catches up at most this much


class Pacer:
    """The pace (batches a second; 0: flat out), and the (batch, monotonic time) it counts from."""

    __slots__ = ("pace", "since")

    def __init__(self, pace: float, batch: int, now: float):
        self.pace = pace
        self.since = (batch, now)

    def restart(self, batch: int, now: float) -> None:
        """Count the pace from batch at now: no burst to catch up the seconds before."""
        self.since = (batch, now)

    def limit(self, batch: int, target: int, now: float) -> int:
        """The batch training may reach by now: the target, or less when a pace is set."""
        if not self.pace:
            return target
        start_batch, start_t = self.since
        allowed = start_batch + int((now - start_t) * self.pace)
        if allowed - batch > max(1.0, self.pace * PACE_CATCH_UP_S):  # fell behind: go on from here, no burst
            self.since = (batch, now - 1 / self.pace)
            allowed = batch + 1
        return min(target, allowed)

    def due(self, batch: int) -> float:
        """When a paced run may train the batch after batch."""
        start_batch, start_t = self.since
        return start_t + (batch + 1 - start_batch) / self.pace
