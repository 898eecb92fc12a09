"""The run file's two common record shapes: built here for the worker, and matched here by the bulk parser.

Every line is a JSON object whose topics map to [batch, value]. The worker writes almost only
two shapes, loss reports and state reports, and json.dumps keeps a dict's key order, so the
builders below fix the exact text the parser's regex expects. Change one, change the other:
tests/test_records.py parses what these builders write, fast path and JSON path alike.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

Record = dict[str, Any]
# A loss report's window, when it covers more than its own batch: every batch since the report before.
Window = tuple[int, float, int, float, int, float]  # (batches, min, batch of min, max, batch of max, mean)
SETTINGS = ("eta", "target", "report_every", "pace")  # what a state report carries beside the state vector


def loss_report(batch: int, loss: float, window: Window | None = None) -> Record:
    """{"loss": [batch, latest loss], "window": [batch, [n, min, min_at, max, max_at, mean]]}.

    The window covers the n batches since the last report, this one included; it is left out
    when it covers only this batch (n == 1: min, max and mean are the loss itself).
    """
    record: Record = {"loss": [batch, loss]}
    if window is not None and window[0] > 1:
        n, low, low_at, high, high_at, mean = window
        # Seven digits draw any chart and keep long run files short; the latest loss keeps all of its own.
        record["window"] = [batch, [n, _short(low), low_at, _short(high), high_at, _short(mean)]]
    return record


def _short(value: float) -> float:
    """value to 7 significant digits (NaN and infinities as they are: the writer spells them null)."""
    return float(f"{value:.7g}")


def state_report(batch: int, eta: float, sv: np.ndarray, target: int, report_every: int, pace: float) -> Record:
    """The seed's state report, eta and the state vector, with the run's settings beside them."""
    return {
        "eta": [batch, eta],
        "sv": [batch, sv],  # an array: written as a list by the writer's thread
        "target": [batch, target],
        "report_every": [batch, report_every],
        "pace": [batch, pace],
    }


# Numbers are matched loosely here, for speed, and checked strictly when converted (bulk.py): a window's
# numbers by one character class (a third faster than six numbers spelt out), their count checked there.
_NUM = rb"[-+.eE0-9]+"
_STAMP = rb',"t":[.0-9]+,"gen":[0-9]+\}'
# Groups: a loss report's "batch,loss" (1) and window numbers (2, empty without one); a state
# report's "batch,eta" (3), state vector (4), target (5), report interval (6) and pace (7, empty in
# files written before pace existed); any other line whole (8).
LINE = re.compile(
    rb'^(?:\{"loss":\[([0-9]+,' + _NUM + rb')\](?:,"window":\[[0-9]+,\[([-+.eE0-9,]+)\]\])?' + _STAMP
    + rb'|\{"eta":\[([0-9]+,' + _NUM + rb')\],"sv":\[[0-9]+,\[([-+.eE0-9,]+)\]\],'
    + rb'"target":\[[0-9]+,([0-9]+)\],"report_every":\[[0-9]+,([0-9]+)\](?:,"pace":\[[0-9]+,(' + _NUM + rb')\])?'
    + _STAMP
    + rb"|(.+))$",
    re.MULTILINE,
)
ANY_LINE = re.compile(rb"^()()()()()()()(.+)$", re.MULTILINE)  # the same groups, every line in the last
GROUPS = 8
LOSS, WINDOW, STATE, SV, TARGET, REPORT_EVERY, PACE, OTHER = range(GROUPS)
