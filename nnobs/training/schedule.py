"""When the worker reports, in batches: densely at first, where a net learns fastest, then steadily.

Reports paced only by the clock miss the start: the default XOR run learns in its first 8,000
batches, under 0.1 s. So loss reports come at every batch at first, then a steady number per
decade of batches; the clock adds its own (at most 20 a second, a heartbeat every second) on top.
State reports likewise come densely at first, until the run's interval takes over.
"""

from __future__ import annotations

import math

LOSS_EVERY_BATCH_UNTIL = 100  # a loss report at each of the first 100 batches
LOSS_PER_DECADE = 50  # then 50 per decade: 100 from batch 100 to 10,000, 50 more to 100,000
STATE_EVERY_BATCH_UNTIL = 10  # a state report at each of the first 10 batches
STATE_PER_DECADE = 10  # then 10 per decade, until the run's report interval is the sparser
DENSE_STATE_MAX_PARAMS = 10_000  # larger nets report their state only every N: each report is the whole vector


def _log_spaced(batch: int, every_batch_until: int, per_decade: int) -> int:
    if batch < every_batch_until:
        return batch + 1
    return max(batch + 1, math.ceil(batch * 10 ** (1 / per_decade)))


def next_loss_report(batch: int) -> int:
    """The next batch after batch that gets a loss report by the batch schedule."""
    return _log_spaced(batch, LOSS_EVERY_BATCH_UNTIL, LOSS_PER_DECADE)


def next_state_report(batch: int, every: int, n_params: int = 0) -> int | None:
    """The next batch after batch that gets a state report; None when reports come only on request (every 0).

    Dense early reports only for nets of at most DENSE_STATE_MAX_PARAMS parameters.
    """
    if not every:
        return None
    regular = (batch // every + 1) * every
    if n_params > DENSE_STATE_MAX_PARAMS:
        return regular
    early = _log_spaced(batch, STATE_EVERY_BATCH_UNTIL, STATE_PER_DECADE)
    return early if early < min(regular, every) else regular
