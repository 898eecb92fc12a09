"""What a session writes as it trains: loss reports with their windows, metrics, and state reports within a byte budget."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nnobs.protocol.errors import MetricError
from nnobs.protocol.schema import (
    FULL_STATE_MAX_PARAMS,
    SUMMARY,
    loss_report,
    metric_entry,
    sample_indices,
    state_report,
    summary_report,
    tensor_summary,
    update_ratios,
    update_report,
)
from nnobs.protocol.slot import tell_log
from nnobs.training.schedule import DENSE_STATE_MAX_PARAMS, next_loss_report, next_state_report
from nnobs.training.state import RunState
from nnobs.training.window import Window

LOSS_MIN_INTERVAL_S = 0.05  # at most 20 loss reports a second
HEARTBEAT_S = 1.0  # at least one loss report a second, even when idle
EXTRA_METRICS_EVERY_S = 0.25  # train()'s extra metrics (a test loss) at most this often: a few a second, not 20
PACED_STATE_EVERY_S = 0.5  # a paced run reports its state this often too: slow motion shows the net change
# State reports the schedule asks for are skipped beyond this budget, so that a run file grows by well under
# 2 MB a minute whatever the net's size; requested ones (tell_state) always come, and count against it.
STATE_BYTES_PER_S = 16_000
STATE_BYTES_BURST = 512_000  # the dense early reports of a small net fit in this
BYTES_PER_NUMBER = 20  # about what one float takes in a JSON line
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class Reporter:
    """When a run's loss and state reports are due, and what they say."""

    def __init__(self, run: RunState):
        self.run = run
        self.metrics: dict[str, Window] = {}  # the metrics other than the loss logged since the last report, by name
        self.extra_metrics: Callable[[], dict] | None = None  # train()'s: metrics measured just before a loss report
        self.extra_due, self.extra_batch = 0.0, -1  # when they may next be measured, and the batch they last were
        self.last_loss_report = 0.0  # monotonic time
        self.last_reported_loss: float | None = None
        self.last_reported_batch = -1
        self.n_params = len(run.trainer.state_vector())
        self.sample = sample_indices(run.trainer.tensors) if self.n_params > FULL_STATE_MAX_PARAMS else None
        self.summarized: np.ndarray | None = None  # the state vector of the last summary report, for its change
        self.before_report: tuple[int, np.ndarray] | None = None  # (batch, state vector) one batch before a scheduled
        # state report: what the step into it changed is the update-to-weight ratio reported beside it
        self.next_loss_at = 0
        self.next_state_at: int | None = None
        self.schedule()
        self.last_state_report = 0.0  # monotonic time
        self.paced_state_batch = -1  # the batch of the last clock-paced state report
        self.state_budget = (float(STATE_BYTES_BURST), time.monotonic())  # (bytes allowed, when counted)

    def schedule(self) -> None:
        """The next batches that get a loss report and a state report by the batch schedule."""
        self.next_loss_at = next_loss_report(self.run.batch)
        self.next_state_at = next_state_report(self.run.batch, self.run.report_every, self.n_params)

    # -- loss reports ----------------------------------------------------------------------

    def loss_is_new(self) -> bool:
        """True when the loss differs from the last one reported (NaN equals NaN here: a diverged run stays quiet)."""
        last, loss = self.last_reported_loss, self.run.loss
        if loss is None:
            return False
        return last is None or not (loss == last or (math.isnan(loss) and math.isnan(last)))

    def report_loss(self, now: float, extra: dict | None = None) -> None:
        """Report the latest loss, the window of every batch since the last report and the metrics logged since,
        then start new windows. Before any loss is known, a bare heartbeat says the worker lives."""
        run = self.run
        record: dict[str, Any] = (
            {"heartbeat": [run.batch, None]}
            if run.loss is None
            else loss_report(run.batch, run.loss, run.window.summary())
        )
        if self.extra_metrics is not None and now >= self.extra_due and run.batch != self.extra_batch:
            self.measure_extra_metrics(self.extra_metrics, now)
        logged = {
            name: metric_entry(window.last, window.summary())
            for name, window in self.metrics.items()
            if window.n and window.last is not None
        }
        if logged:
            record["metrics"] = [run.batch, logged]
            self.metrics = {name: Window() for name in self.metrics}
        run.out.write({**record, **(extra or {})})
        run.window = Window()
        self.last_loss_report = now
        self.last_reported_loss = run.loss
        self.last_reported_batch = run.batch
        self.next_loss_at = next_loss_report(run.batch)

    def measure_extra_metrics(self, measure: Callable[[], dict], now: float) -> None:
        """Log train()'s extra metrics at this batch; a hook that fails is dropped with a word in worker.log, never
        taking training down."""
        self.extra_due, self.extra_batch = now + EXTRA_METRICS_EVERY_S, self.run.batch
        try:
            self.log_metrics(measure(), self.run.batch)
        except Exception as err:  # observing never kills training
            tell_log(f"nnobs: the extra metrics failed ({type(err).__name__}: {err}); they are no longer measured")
            self.extra_metrics = None

    def log_metrics(self, metrics: dict, at: int) -> None:
        """Add named metrics logged at batch at to their windows; a bad name or a value that is no number raises."""
        for name, value in metrics.items():
            window = self.metrics.get(name)
            if window is None:
                if not METRIC_NAME.fullmatch(name) or name == "loss":
                    raise MetricError(
                        f"metric name {name!r} refused: use 1 to 64 letters, digits, '_', '.' or '-', "
                        "starting with a letter or '_' (the loss is log's first argument)"
                    )
                window = self.metrics[name] = Window()
            try:
                value = float(value)
            except (TypeError, ValueError) as err:
                raise MetricError(f"metric {name} must be a number, not {value!r}") from err
            if math.isfinite(value):
                window.add(value, at)

    # -- state reports ---------------------------------------------------------------------

    def state_report(self) -> dict:
        """The seed's state report (eta, the state vector, the settings); a summary and a sample for a large net."""
        run = self.run
        self.last_state_report = time.monotonic()
        sv, eta = run.trainer.state_vector(), run.trainer.eta
        if self.sample is None:
            return state_report(run.batch, eta, sv, run.target, run.report_every, run.pacer.pace)
        # A tensor's change is None without a previous vector of the same size: written null, read as no change.
        summary = tensor_summary(sv, run.trainer.tensors, self.summarized)
        self.summarized = sv
        return summary_report(run.batch, eta, summary, sv[self.sample], run.target, run.report_every, run.pacer.pace)

    def report_update(self) -> None:
        """Beside a scheduled state report: what its batch's step did to each tensor, and a built-in net's dead units."""
        run = self.run
        before, self.before_report = self.before_report, None
        if before is None or before[0] != run.batch - 1:
            return
        sv = run.trainer.state_vector()
        if len(before[1]) != len(sv) or not np.isfinite(sv).all():
            return
        run.out.write(
            update_report(run.batch, update_ratios(sv, before[1], run.trainer.tensors), run.trainer.dead_units())
        )

    def state_budget_allows(self, now: float) -> bool:
        """Whether a scheduled state report fits the byte budget; it is counted against it when it does."""
        allowed, counted = self.state_budget
        allowed = min(STATE_BYTES_BURST, allowed + (now - counted) * STATE_BYTES_PER_S)
        size = BYTES_PER_NUMBER * (
            self.n_params if self.sample is None else len(self.sample) + len(SUMMARY) * len(self.run.trainer.tensors)
        )
        fits = allowed > 0
        self.state_budget = (allowed - size if fits else allowed, now)
        return fits

    # -- when they are due -----------------------------------------------------------------

    def stop_before(self, limit: int) -> int:
        """The batch the loop may train up to (limit at most) before the next scheduled report; one short of a
        state report, keeping the state the step into it starts from (taken here when that step is next)."""
        batch = self.run.batch
        if self.next_loss_at <= batch or (self.next_state_at is not None and self.next_state_at <= batch):
            self.schedule()  # left behind by a pause at a scheduled batch (a divergence): a run of no batches
        state_at = self.next_state_at or limit
        if self.next_state_at is not None:
            if state_at == batch + 1:
                self.before_report = (batch, self.run.trainer.state_vector())
            else:
                state_at -= 1  # stop one batch short of a state report, to keep the state the step into it starts from
        return min(limit, self.next_loss_at, state_at)

    def at_stop(self, now: float) -> None:
        """After a run of batches: the loss and state reports the batch schedule asks for at this batch."""
        batch = self.run.batch
        if batch == self.next_loss_at:
            self.report_loss(now)
        if batch == self.next_state_at:
            if self.state_budget_allows(now):
                self.run.out.write(self.state_report())
                self.report_update()
            self.next_state_at = next_state_report(batch, self.run.report_every, self.n_params)

    def on_the_clock(self, now: float) -> None:
        """The loss reports the clock asks for (a new loss, the heartbeat), and a paced run's state reports."""
        run = self.run
        since_report = now - self.last_loss_report
        if (self.loss_is_new() and since_report >= LOSS_MIN_INTERVAL_S) or since_report >= HEARTBEAT_S:
            self.report_loss(now)
        if (
            run.pacer.pace
            and now - self.last_state_report >= PACED_STATE_EVERY_S
            and self.n_params <= DENSE_STATE_MAX_PARAMS
            and run.batch != self.paced_state_batch
        ):
            self.paced_state_batch = run.batch
            run.out.write(self.state_report())
