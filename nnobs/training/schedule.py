"""When the worker reports, evaluates and keeps checkpoints, in batches: densely at first, where a net learns fastest.

Work paced only by the clock misses the start: the default XOR run learns in its first 8,000 batches, under 0.1 s,
and a run at tens of thousands of batches a second is past its learning in the first second. So every schedule here
is one of batches, spaced evenly in log batches (a fixed number per decade), which gives each decade of a run the
same share however fast it trains; cost bounds (nnobs.training.budget) thin them, and the clock adds only a
heartbeat where a schedule would otherwise fall silent.
"""

from __future__ import annotations

import math

# Loss reports: 34 per decade (each batch's up to batch 15, where they are 7 % apart; 68 from batch 100 to 10,000),
# the windows between them keeping every batch's extremes: enough for the notebook's 100 loss points (104) in the
# default run's first 10,000 batches. Each report is a stop of the loop and a record to encode: at each of the first
# 100 batches they cost a 10^5-parameter MLP 4 % of its first 1,500 steps' time, at 50 per decade 0.5 %.
LOSS_PER_DECADE = 34
# State snapshots: 28 per decade puts 22 between batches 500 and 3,000, where the README's PyTorch example learns; each
# batch of the first decade has one, as in the notebook. Beyond the run's report interval's spacing, every N batches.
STATE_PER_DECADE = 28
# Larger nets snapshot only every N batches: each snapshot copies and summarizes the whole vector (tens of ms for a
# million parameters), which their time budget could afford only a few of in a fast run's first decades anyway.
DENSE_STATE_MAX_PARAMS = 10_000
EVALUATIONS_PER_DECADE = 30  # test-loss evaluations: successive ones at most 8 % apart, so the last is near the end
# Kept checkpoints: 12 per decade are 1.21 times apart at most, so a rewind or fork past batch 100 lands within a
# factor of 1.25 of the batch asked for (while the kept set fits its disk budget: nnobs.protocol.checkpoint).
KEPT_PER_DECADE = 12
KEPT_LARGE_FROM = 1_000


def _log_spaced(batch: int, every_batch_until: int, per_decade: int) -> int:
    if batch < every_batch_until:
        return batch + 1
    return max(batch + 1, math.ceil(batch * 10 ** (1 / per_decade)))


def next_loss_report(batch: int) -> int:
    """The next batch after batch that gets a loss report by the batch schedule."""
    return _log_spaced(batch, 0, LOSS_PER_DECADE)


def next_state_report(batch: int, every: int, n_params: int = 0) -> int | None:
    """The next batch after batch that gets a state snapshot; None when they come only on request (every 0).

    Log-spaced, STATE_PER_DECADE a decade, or every `every` batches where that is the denser; only the latter for nets
    of more than DENSE_STATE_MAX_PARAMS parameters.
    """
    if not every:
        return None
    regular = (batch // every + 1) * every
    if n_params > DENSE_STATE_MAX_PARAMS:
        return regular
    return min(_log_spaced(batch, 0, STATE_PER_DECADE), regular)


def next_evaluation(batch: int) -> int:
    """The next batch after batch at which held-out metrics (a test loss) are measured."""
    return _log_spaced(batch, 0, EVALUATIONS_PER_DECADE)


def next_kept_checkpoint(batch: int, n_params: int = 0) -> int:
    """The next batch after batch whose checkpoint is kept to rewind or fork to. A net of more than
    DENSE_STATE_MAX_PARAMS parameters keeps none of its first KEPT_LARGE_FROM batches by the schedule (nor any in its
    first seconds: nnobs.training.recovery): each costs a millisecond or more (a tenth of a 10^5-parameter model's
    first second would go to them), and a rewind there lands on the checkpoint it started from, or one the clock
    kept, a few seconds of training back at most."""
    if n_params > DENSE_STATE_MAX_PARAMS and batch < KEPT_LARGE_FROM:
        return KEPT_LARGE_FROM
    return _log_spaced(batch, 0, KEPT_PER_DECADE)
