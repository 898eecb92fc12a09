"""What a session writes as it trains: loss reports with their windows, metrics, evaluations, and state snapshots within
their budgets."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from nnobs.protocol.errors import MetricError
from nnobs.protocol.schema import (
    FULL_STATE_MAX_PARAMS,
    METRIC_NAME,
    SUMMARY,
    loss_report,
    metric_entry,
    state_report,
    summary_report,
    update_ratios,
    update_report,
)
from nnobs.protocol.slot import tell_log
from nnobs.training.budget import CostBudget
from nnobs.training.probe import Marks, Probe
from nnobs.training.schedule import DENSE_STATE_MAX_PARAMS, next_evaluation, next_loss_report, next_state_report
from nnobs.training.state import RunState
from nnobs.training.system import SystemSampler
from nnobs.training.trainer import Trainer
from nnobs.training.window import Window

LOSS_MIN_INTERVAL_S = 0.05  # at most 20 loss reports a second
HEARTBEAT_S = 1.0  # at least one loss report a second, even when idle
PACED_STATE_EVERY_S = 0.5  # a paced run reports its state this often too: slow motion shows the net change
# Snapshots the schedule asks for are thinned beyond these bounds; requested ones (tell_state) always come, and count.
# Bytes: 12 KB a second, after a burst of 100 snapshots (the schedule's first four decades) or 2.2 MB, the lesser:
# the README's PyTorch example (1,218 parameters, 24 KB a snapshot) keeps its 83 through batch 5,000, and a net of
# summaries (2-256-256-1: 7 KB) grows its run file by under 2 MB in its first minute, every line counted.
STATE_BYTES_PER_S = 12_000
STATE_BURST_SNAPSHOTS = 100
STATE_BURST_BYTES = 2_200_000
# Time: a share of the run's time each, after a burst that a net's learning phase spends at once (the schedules ask
# most of their first decades: 83 snapshots through batch 5,000). The time counted is the training thread's, waiting
# for the interpreter included: encoding a snapshot on the writer's thread holds it too (a 1,218-parameter net's
# snapshot costs 1 to 3 ms so).
SNAPSHOT_SHARE = 0.02
SNAPSHOT_BURST_S = 0.3
EVALUATION_SHARE = 0.02  # measuring held-out metrics (a test loss)
EVALUATION_BURST_S = 0.1
EVALUATION_HEARTBEAT_S = 5.0  # an evaluation at least this often while training, where the log schedule is sparse
BYTES_PER_NUMBER = 20  # about what one float takes in a JSON line


class Reporter:
    """When a run's loss and state reports are due, and what they say."""

    def __init__(self, run: RunState):
        self.run = run
        self.metrics: dict[str, Window] = {}  # the metrics other than the loss logged since the last report, by name
        self.extra_metrics: Callable[[], dict] | None = None  # train()'s: held-out metrics of the net as it is
        self.evaluates = False  # whether evaluations are scheduled: train() with extra metrics, or a script that asks
        self.next_eval_at = 0
        self.last_evaluation = time.monotonic()  # monotonic time of the last evaluation: the heartbeat counts from it
        self.evaluated_at = -1  # the batch of the last evaluation: a loss report carries it at that batch
        self.evaluation_started: float | None = None  # perf_counter when a script was told to evaluate, until it logs
        self.evaluation_budget = CostBudget(EVALUATION_SHARE, EVALUATION_BURST_S)
        self.last_loss_report = 0.0  # monotonic time
        self.last_reported_loss: float | None = None
        self.last_reported_batch = -1
        self.n_params = count_params(run.trainer)
        # A large net's reports are measured where its tensors live, without a copy of the model; a small one's carry
        # its whole state vector.
        self.probe = Probe(run.trainer) if self.n_params > FULL_STATE_MAX_PARAMS else None
        self.before_report: tuple[int, np.ndarray | Marks] | None = None  # (batch, state vector, or a large net's
        # marks) one batch before a scheduled state report: what the step into it changed is the update-to-weight
        # ratio reported beside it
        self.next_loss_at = 0
        # Whether the loop's log() writes the batch schedule's loss reports (a loop over batches() that logs its loss,
        # a stop of the loop for each cost more than the report), rather than its stops (train(), a job's rank 0).
        self.reports_in_log = False
        self.next_state_at: int | None = None
        self.schedule()
        self.last_state_report = 0.0  # monotonic time
        self.paced_state_batch = -1  # the batch of the last clock-paced state report
        self.snapshot_size = BYTES_PER_NUMBER * (
            self.n_params
            if self.probe is None
            else sum(map(len, self.probe.sample_picks)) + len(SUMMARY) * len(run.trainer.tensors)
        )
        burst = min(STATE_BURST_BYTES, STATE_BURST_SNAPSHOTS * self.snapshot_size)
        self.snapshot_budget = CostBudget(SNAPSHOT_SHARE, SNAPSHOT_BURST_S, STATE_BYTES_PER_S, burst)
        self.system = SystemSampler()  # started with the session's training, stopped at its end

    def schedule(self) -> None:
        """The next batches that get a loss report, a state snapshot and an evaluation by the batch schedules."""
        self.next_loss_at = next_loss_report(self.run.batch)
        self.next_state_at = next_state_report(self.run.batch, self.run.report_every, self.n_params)
        self.next_eval_at = next_evaluation(self.run.batch)

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
        lr = run.trainer.lr_in_use
        if lr is not None and run.loss is not None:
            # What a schedule made of eta, charted as "lr": the page, status and list show it beside eta.
            window = self.metrics.get("lr")
            if window is None:  # not setdefault: it would make a window every report, to throw away
                window = self.metrics["lr"] = Window()
            window.add(float(lr), run.batch)
        # The record is built on the writer's thread from what is handed over here: this loop's window and metric
        # windows, replaced by fresh ones, are not touched again.
        run.out.write(partial(loss_record, run.batch, run.loss, run.window, self.metrics, extra))
        self.metrics = {name: Window() for name in self.metrics}
        run.window = Window()
        self.last_loss_report = now
        self.last_reported_loss = run.loss
        self.last_reported_batch = run.batch
        self.next_loss_at = next_loss_report(run.batch)

    def report_logged(self, loss: float) -> None:
        """The batch schedule's loss report, from log() at its batch; a loss no longer a number is left to the next
        stop, which reports it with the divergence."""
        if math.isfinite(loss):
            self.report_loss(time.monotonic())

    # -- evaluations -----------------------------------------------------------------------

    def evaluation_due(self, now: float) -> bool:
        """Whether held-out metrics are to be measured at this batch: one the schedule picks, the target, or the
        heartbeat's, within the evaluation budget (the target's always). Said once a batch; the next is scheduled."""
        run = self.run
        batch = run.batch
        scheduled, at_end = batch >= self.next_eval_at, batch == run.target
        if scheduled:
            self.next_eval_at = next_evaluation(batch)
        heartbeat = now - self.last_evaluation >= EVALUATION_HEARTBEAT_S
        if batch == self.evaluated_at or not (scheduled or at_end or heartbeat):
            return False
        if not at_end and not self.evaluation_budget.allows(now):
            return False
        self.last_evaluation, self.evaluated_at = now, batch
        return True

    def measure_extra_metrics(self, measure: Callable[[], dict]) -> None:
        """Log train()'s extra metrics at this batch, charged to the evaluation budget; a hook that fails is dropped
        with a word in worker.log, never taking training down."""
        with self.evaluation_budget.charged():
            try:
                self.log_metrics(measure(), self.run.batch)
            except Exception as err:  # observing never kills training
                tell_log(f"nnobs: the extra metrics failed ({type(err).__name__}: {err}); they are no longer measured")
                self.extra_metrics = None
                self.evaluates = False

    def script_evaluation_due(self) -> bool:
        """evaluation_due() for a script's loop (nnobs.Run.evaluation_due): the time until it logs is charged."""
        self.evaluates = True
        due = self.evaluation_due(time.monotonic())
        if due:
            self.evaluation_started = time.perf_counter()
        return due

    def end_evaluation(self) -> None:
        """A script's evaluation ends with the next log(), whether or not it carries metrics: its time is charged."""
        if self.evaluation_started is not None:
            self.evaluation_budget.charge(time.perf_counter() - self.evaluation_started)
            self.evaluation_started = None

    def log_metrics(self, metrics: dict, at: int) -> None:
        """Add named metrics logged at batch at to their windows; a bad name or a value that is no number raises."""
        self.end_evaluation()
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

    def state_report(self, sv: np.ndarray | None = None) -> dict:
        """The seed's state report (eta, the state vector, the settings); a summary and a sample for a large net.
        sv: a small net's state vector as it is, when already taken."""
        run = self.run
        self.last_state_report = time.monotonic()
        eta = run.trainer.eta
        if self.probe is None:
            sv = run.trainer.state_vector() if sv is None else sv
            return state_report(run.batch, eta, sv, run.target, run.report_every, run.pacer.pace)
        # A tensor's change is None without a previous summary: written null, read as no change.
        summary, sample = self.probe.summary(), self.probe.sample()
        return summary_report(run.batch, eta, summary, sample, run.target, run.report_every, run.pacer.pace)

    def report_update(self, sv: np.ndarray | None) -> None:
        """Beside a scheduled state report (of sv, a small net's): what its batch's step did to each tensor, and a
        built-in net's dead units."""
        run = self.run
        before, self.before_report = self.before_report, None
        if before is None or before[0] != run.batch - 1:
            return
        if self.probe is not None:
            ratios = self.probe.update_ratios(before[1])  # type: ignore[arg-type]  # a large net keeps marks
        elif sv is not None and len(before[1]) == len(sv) and np.isfinite(sv).all():
            ratios = update_ratios(sv, before[1], run.trainer.tensors)  # type: ignore[arg-type]
        else:
            return
        run.out.write(update_report(run.batch, ratios, run.trainer.dead_units()))

    def state_as_it_is(self) -> np.ndarray | Marks:
        """What an update ratio is measured from: a small net's state vector, a large net's marks."""
        return self.run.trainer.state_vector() if self.probe is None else self.probe.marks()

    def forget_states(self) -> None:
        """The parameters were set from outside training (a rewind, a reinit): no change is measured across that."""
        self.before_report = None
        if self.probe is not None:
            self.probe.summarized = None

    def snapshot(self, now: float) -> None:
        """A scheduled state snapshot, and the update beside it, when the budget allows; charged to it."""
        if not self.snapshot_budget.allows(now):
            return
        with self.snapshot_budget.charged(self.snapshot_size):
            sv = self.run.trainer.state_vector() if self.probe is None else None
            self.run.out.write(self.state_report(sv))
            self.report_update(sv)

    # -- when they are due -----------------------------------------------------------------

    def stop_before(self, limit: int) -> int:
        """The batch the loop may train up to (limit at most) before the next scheduled report; one short of a
        state report, keeping the state the step into it starts from (taken here when that step is next)."""
        batch = self.run.batch
        state_behind = self.next_state_at is not None and self.next_state_at <= batch
        loss_behind = self.next_loss_at <= batch and not self.reports_in_log  # else the next log() reports it
        if loss_behind or state_behind or (self.evaluates and self.next_eval_at <= batch):
            self.schedule()  # left behind by a pause at a scheduled batch (a divergence): a run of no batches
        state_at = self.next_state_at or limit
        if self.next_state_at is not None:
            if state_at == batch + 1:
                self.keep_state_before_snapshot()
            else:
                state_at -= 1  # stop one batch short of a state report, to keep the state the step into it starts from
        eval_at = self.next_eval_at if self.evaluates else limit
        loss_at = limit if self.reports_in_log else self.next_loss_at
        return min(limit, loss_at, state_at, eval_at)

    def keep_state_before_snapshot(self) -> None:
        """Keep the state vector the step into the next snapshot starts from, when the budget will take the snapshot."""
        if not self.snapshot_budget.allows(time.monotonic()):
            return
        with self.snapshot_budget.charged():
            self.before_report = (self.run.batch, self.state_as_it_is())

    def at_stop(self, now: float) -> None:
        """After a run of batches: the evaluation, loss report and state snapshot the batch schedules ask for here."""
        batch = self.run.batch
        if self.extra_metrics is not None and self.evaluation_due(now):
            self.measure_extra_metrics(self.extra_metrics)
        if batch == self.next_loss_at or batch == self.evaluated_at != self.last_reported_batch:
            self.report_loss(now)  # an evaluation rides in a loss report at its own batch
        if batch == self.next_state_at:
            self.snapshot(now)
            self.next_state_at = next_state_report(batch, self.run.report_every, self.n_params)

    def take_machine(self) -> None:
        """The machine's newest sample, if one came since the last look, into the metrics the next report carries."""
        sampled = self.system.take()
        if sampled:
            for name, value in sampled.items():
                self.metrics.setdefault(name, Window()).add(value, self.run.batch)

    def on_the_clock(self, now: float) -> None:
        """The loss reports the clock asks for (a new loss, the heartbeat), a paced run's state reports, and the
        machine's figures, which ride in the next loss report."""
        run = self.run
        self.take_machine()
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


def loss_record(batch: int, loss: float | None, window: Window, metrics: dict[str, Window], extra: dict | None) -> dict:
    """A loss report: the latest loss and its window, the metrics logged since the last report (a bare heartbeat before
    any loss is known), and what extra adds."""
    record: dict[str, Any] = (
        {"heartbeat": [batch, None]} if loss is None else loss_report(batch, loss, window.summary())
    )
    logged = {
        name: metric_entry(window.last, window.summary())
        for name, window in metrics.items()
        if window.n and window.last is not None
    }
    if logged:
        record["metrics"] = [batch, logged]
    return {**record, **(extra or {})}


def count_params(trainer: Trainer) -> int:
    """How many parameters the trainer's tensors hold (a small net's: its state vector's length, which it is)."""
    declared = sum(math.prod(shape) for _, shape in trainer.tensors)
    return len(trainer.state_vector()) if declared <= FULL_STATE_MAX_PARAMS else declared
