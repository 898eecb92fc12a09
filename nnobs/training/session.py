"""The run protocol: a training loop and its run's files, knowing nothing of the net being trained.

A Session answers the control file's commands (each exactly once, across crashes), writes loss
reports on the batch schedule and the clock, heartbeats, state reports and checkpoints, paces
the run, notices a diverged loss, and makes sure its run directory is still its own. What is
trained, and how, is a Trainer's business: the built-in numpy worker and a user's script
(nnobs.Run) are both loops over Session.batches() that call Session.log().
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnobs.protocol.checkpoint import (
    Checkpoint,
    forget_kept_after,
    keep_checkpoint,
    kept_batches,
    load_checkpoint,
    load_kept,
    save_checkpoint,
)
from nnobs.protocol.commands import DEFAULT_MIN_FREE_MB, check_command
from nnobs.protocol.control import Command, ControlWatcher
from nnobs.protocol.errors import CommandError, ControlFileError, NnobsError
from nnobs.protocol.files import cap_file, leftover_temps
from nnobs.protocol.jobs import JOB_ID_ENV, recorded_for_another_job
from nnobs.protocol.records import BackgroundWriter, RecordReader
from nnobs.protocol.rundir import RunDir, take_worker_lock
from nnobs.protocol.schema import (
    FULL_STATE_MAX_PARAMS,
    SUMMARY,
    Tensors,
    loss_report,
    metric_entry,
    params_record,
    sample_indices,
    state_report,
    summary_report,
    tensor_summary,
    update_ratios,
    update_report,
)
from nnobs.protocol.slot import StatusSlot, tell_log
from nnobs.reading.bulk import number as _number
from nnobs.reading.history import RunHistory
from nnobs.training.schedule import DENSE_STATE_MAX_PARAMS, next_loss_report, next_state_report

PID_WIDTH = 20  # worker.lock holds the pid, space-padded to this many bytes
CONTROL_CHECK_S = 0.02  # how often the control file is looked at: commands land within this
LOSS_MIN_INTERVAL_S = 0.05  # at most 20 loss reports a second
HEARTBEAT_S = 1.0  # at least one loss report a second, even when idle
EXTRA_METRICS_EVERY_S = 0.25  # train()'s extra metrics (a test loss) at most this often: a few a second, not 20
CHECKPOINT_EVERY_S = 3.0  # the most training a crash can cost
CHUNK = 64  # most batches between two looks at the clock: ~1 ms of XOR, far below CONTROL_CHECK_S
FINITE_STATES_KEPT = 4  # checkpoints to choose from when the loss diverges: a blow-up takes milliseconds, they 3 s
OWNERSHIP_CHECK_S = 1.0  # how often the session makes sure its run directory is still its own
PACED_STATE_EVERY_S = 0.5  # a paced run reports its state this often too: slow motion shows the net change
PACE_CATCH_UP_S = 1.0  # a paced run that fell behind (a busy machine, a slow batch) catches up at most this much
# State reports the schedule asks for are skipped beyond this budget, so that a run file grows by well under
# 2 MB a minute whatever the net's size; requested ones (tell_state) always come, and count against it.
STATE_BYTES_PER_S = 16_000
STATE_BYTES_BURST = 512_000  # the dense early reports of a small net fit in this
BYTES_PER_NUMBER = 20  # about what one float takes in a JSON line
DISK_CHECK_S = 1.0  # how often the free space on the run's filesystem is looked at: one statvfs
MB = 1024 * 1024
WORKER_LOG_MAX = 4 * MB  # worker.log beyond this is cut back to its newest WORKER_LOG_KEPT bytes
WORKER_LOG_KEPT = 1 * MB
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class Orphaned(Exception):
    """The run directory this session serves was deleted or replaced under it."""


class Trainer:
    """What a session needs of what it trains; the defaults are those of a trainer that can do little.

    tensors names the state vector's parts in order (name, shape); eta is the learning rate.
    """

    tensors: Tensors = []
    eta: float = 0.1

    def state_vector(self) -> np.ndarray:
        """Every parameter, flat, as float64: a copy of its own (it is encoded on another thread)."""
        return np.empty(0)

    def save(self) -> dict[str, np.ndarray]:
        """What a checkpoint holds of the net (and its optimizer), as named arrays; {} when nothing can be."""
        return {}

    def load(self, saved: dict[str, np.ndarray]) -> None:
        """Take back what save() returned; ValueError when it does not fit this net."""
        raise ValueError("this trainer cannot load a checkpoint")

    can_load = False  # whether load() works: rewinding and going back from a diverged loss need it

    def reinit(self, seed: int | None) -> int:
        """Draw the net afresh from seed (None: the run's own); the seed used. CommandError when it cannot."""
        raise CommandError("this run's net is drawn by its own script: reinitialize it there")

    def loss_now(self) -> float | None:
        """The loss of the parameters as they are, when it can be had without a training step; else None."""
        return None

    def dead_units(self) -> list[int] | None:
        """Per layer with relu, its units whose output is 0 on every training point; None when the trainer cannot tell."""
        return None


@dataclass
class Settings:
    """A run's settings when it starts afresh; after that its checkpoints hold them."""

    target: int = 2_000_000
    report_every: int = 2_000
    pace: float = 0.0
    eta: float | None = None  # None: the trainer's own
    min_free_mb: float = DEFAULT_MIN_FREE_MB


class Window:
    """The values logged since the last report: how many, their min and max with their batches, and their sum."""

    __slots__ = ("hi", "hi_at", "last", "lo", "lo_at", "n", "total")

    def __init__(self):
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

    def summary(self) -> tuple | None:
        """(n, min, min_at, max, max_at, mean) for the report, or None when nothing finite was logged since the last."""
        if not self.n or self.lo_at == 0:  # lo_at 0: nothing compared below inf, all NaN
            return None
        return (self.n, self.lo, self.lo_at, self.hi, self.hi_at, self.total / self.n)


def claim(run: RunDir) -> int | None:
    """Take the run's worker lock and write our pid in it; None when a live worker holds it. Clears what a killed
    predecessor left half-written. The kernel drops the lock when the process ends, or when the fd is closed."""
    run.path.mkdir(parents=True, exist_ok=True)
    lock_fd = take_worker_lock(run)
    if lock_fd is None:
        return None
    # Written over the last pid in place, padded to a fixed width: no truncation, so no new space needed on a full disk.
    os.pwrite(lock_fd, str(os.getpid()).ljust(PID_WIDTH).encode(), 0)
    for stale in leftover_temps(run.checkpoint):
        stale.unlink(missing_ok=True)  # only the lock holder writes checkpoints
    return lock_fd


class Session:
    """One generation of a run: from a start (or resume) to its shutdown. The caller holds the worker lock."""

    def __init__(self, run: RunDir, trainer: Trainer, settings: Settings, started_by: str = ""):
        self.run_dir = run
        self.trainer = trainer
        self.started_t = time.time()
        self.started_by = started_by  # who asked for this start ("page", "cli"), as the launcher was told
        self.job_id = os.environ.get(JOB_ID_ENV) or None  # on Slurm: the job this generation runs in
        # How the generation ends when done: "shutdown", "preempted" (Slurm's signal: checkpoint, then requeued) or
        # "terminated" (Slurm's SIGTERM: cancelled, or out of time; it reads crashed, and resumes from the checkpoint).
        self.ending = "shutdown"
        self.lock_inode = os.stat(run.worker_lock).st_ino  # the lock file this session holds
        ckpt = load_checkpoint(run.checkpoint)
        self.resumed_from = None if ckpt is None else ckpt.batch
        # Until this generation has looked at the control file once, its checkpoints keep the last one's
        # run offset: answers given after it must still be known to a successor if we die now.
        self._answers_from: int | None = 0
        self.loss: float | None = None
        self._code_eta = settings.eta  # what the code asked for, told apart from the checkpoint's on resume
        if ckpt is None:
            self.batch, self.target, self.report_every, self.gen = 0, settings.target, settings.report_every, 1
            self.pace, self.min_free_mb = settings.pace, settings.min_free_mb
            if settings.eta is not None:
                trainer.eta = settings.eta
            last_seq, control_id, answered = 0, None, set()
        else:
            self._resume(ckpt)
            self.batch, self.target, self.report_every, self.gen = ckpt.batch, ckpt.target, ckpt.report_every, ckpt.gen + 1
            self.pace, self.min_free_mb = ckpt.pace, ckpt.min_free_mb
            self.loss = ckpt.loss
            last_seq, control_id = ckpt.last_seq, ckpt.control_id
            answered = _answered_since(run.run_file, ckpt.run_offset)
            self._answers_from = ckpt.run_offset
        self.answered = answered  # ids answered after the checkpoint by the generation before: not answered again
        self.control = ControlWatcher(run.control_file, last_seq, control_id)
        self.out = BackgroundWriter(run.run_file, self.gen)
        self.slot = StatusSlot(run.status_file, os.getpid(), self.gen)  # where it speaks when the run file cannot grow
        self.trouble: dict = {}  # why training waits for the disk: low_disk (free bytes, and the floor) or write_error
        self._next_disk_check = 0.0
        self.loss = _or(trainer.loss_now(), self.loss)
        self.done = False
        self.orphaned = False
        self.paused = False  # the loss diverged: no training until eta changes
        # (loss, batch, saved state) of the latest checkpoints with finite numbers, to go back to on divergence
        self._finite_states: deque[tuple[float, int, dict]] = deque(maxlen=FINITE_STATES_KEPT)
        self._last_loss_report = 0.0  # monotonic time
        self._last_reported_loss: float | None = None
        self._last_reported_batch = -1
        self._last_checkpoint = 0.0
        self._checkpointed_batch = -1
        self._next_ownership_check = 0.0
        self.window = Window()  # the losses since the last loss report
        self.metrics: dict[str, Window] = {}  # the other metrics logged since then, by name
        self.extra_metrics: Callable[[], dict] | None = None  # train()'s: metrics measured just before a loss report
        self._extra_due, self._extra_batch = 0.0, -1  # when they may next be measured, and the batch they last were
        self._n_params = len(trainer.state_vector())
        self._sample = sample_indices(trainer.tensors) if self._n_params > FULL_STATE_MAX_PARAMS else None
        self._summarized: np.ndarray | None = None  # the state vector of the last summary report, for its change
        self._before_report: tuple[int, np.ndarray] | None = None  # (batch, state vector) one batch before a scheduled
        # state report: what the step into it changed is the update-to-weight ratio reported beside it
        self._schedule_reports()
        self._pace_from = (self.batch, time.monotonic())  # (batch, time) the current pace counts from
        self._last_state_report = 0.0  # monotonic time
        self._paced_state_batch = -1  # the batch of the last clock-paced state report
        self._state_budget = (float(STATE_BYTES_BURST), time.monotonic())  # (bytes allowed, when counted)
        self._check_at = 0.0  # when the control file is next looked at
        self._chunk = CHUNK  # batches between two looks at the clock: fewer when batches are slow

    def _resume(self, ckpt: Checkpoint) -> None:
        """Give the trainer back what the checkpoint holds of it, and the step size it had."""
        if ckpt.state and self.trainer.can_load:
            try:
                self.trainer.load(ckpt.state)
            except ValueError as err:
                raise NnobsError(f"the checkpoint does not fit this run's net ({err}); move checkpoint.npz away to start afresh") from err
        elif ckpt.state:
            tell_log("nnobs: this run's net cannot load a checkpoint: the batch count and settings go on, the net starts afresh")
        self.trainer.eta = ckpt.eta

    def _schedule_reports(self) -> None:
        """The next batches that get a loss report and a state report by the batch schedule."""
        self._next_loss_at = next_loss_report(self.batch)
        self._next_state_at = next_state_report(self.batch, self.report_every, self._n_params)

    # -- the loop ------------------------------------------------------------------------

    def begin(self) -> None:
        """Checkpoint, say the worker started (with what its state vector holds), answer what is waiting."""
        now = time.monotonic()
        self.checkpoint(now)
        started = {"event": [self.batch, "started"], "pid": os.getpid(), "resumed_from": self.resumed_from, "by": self.started_by,
                   **({"job": self.job_id} if self.job_id else {})}
        self.report_loss(now, {**started, **params_record(self.batch, self.trainer.tensors, self._n_params),
                               **self.state_report()})
        self.apply_commands()
        self._answers_from = None  # from here on, fresh answers start at the run file's end
        if self.resumed_from is not None and self._code_eta is not None and self._code_eta != self.trainer.eta:
            tell_log(f"nnobs: {self.run_dir.name} resumed with eta {self.trainer.eta:g} (the checkpoint's), not the code's "
                     f"{self._code_eta:g}: change it from the page or by `nnobs set {self.run_dir.name} --eta X`")
        if self.resumed_from is not None and self.batch >= self.target:
            tell_log(f"nnobs: {self.run_dir.name} resumed at batch {self.batch:,}, its target (the checkpoint's, not the "
                     f"code's): it waits until the target is raised, from the page or by `nnobs set {self.run_dir.name} "
                     "--target N`")

    def batches(self) -> Iterator[int]:
        """Yield the number of each batch to train (resumed runs go on from their checkpoint), idling at the target
        or a pace, and end on shutdown. The loop body trains the batch and calls log()."""
        with self._orphan_ends_loop():
            while not self.done:
                end = self._next_stop()
                if end is None:
                    continue
                started, batch = time.monotonic(), self.batch
                while batch < end:
                    batch += 1
                    self.batch = batch
                    yield batch
                self._chunk_took(time.monotonic() - started)
                self._stopped()

    def train(self, learn: Callable[..., float], next_batch: Callable[[], tuple],
              extra_metrics: Callable[[], dict] | None = None) -> None:
        """batches() and log() in one loop, for batches that take microseconds: learn(*next_batch()) trains one batch
        and returns its loss, and the window is kept in locals between two stops (a call to log() would cost 5 % of
        XOR's time). extra_metrics, when given, returns more metrics ({"test_loss": ...}) of the net as it is; it is
        called just before a loss report, at most every EXTRA_METRICS_EVERY_S, and its values ride in that report."""
        self.extra_metrics = extra_metrics
        with self._orphan_ends_loop():
            while not self.done:
                end = self._next_stop()
                if end is None:
                    continue
                started, batch, window = time.monotonic(), self.batch, self.window
                lo, lo_at, hi, hi_at, total = window.lo, window.lo_at, window.hi, window.hi_at, window.total
                for at in range(batch + 1, end + 1):
                    loss = learn(*next_batch())
                    total += loss
                    if loss < lo:
                        lo, lo_at = loss, at
                    if loss > hi:
                        hi, hi_at = loss, at
                window.n += end - batch
                window.lo, window.lo_at, window.hi, window.hi_at, window.total = lo, lo_at, hi, hi_at, total
                self.batch, self.loss = end, loss
                self._chunk_took(time.monotonic() - started)
                self._stopped()

    @contextmanager
    def _orphan_ends_loop(self):
        """A run directory deleted or replaced under the loop ends it, and nothing more is written."""
        try:
            yield
        except Orphaned as err:
            self.orphaned = self.done = True
            tell_log(f"nnobs {os.getpid()}: {err}; the loop ends without writing")

    def log(self, loss: float, metrics: dict | None = None) -> None:
        """The loss of the batch being trained, and any other named metrics; NaN or inf marks a diverged loss."""
        self.loss = loss
        window, at = self.window, self.batch
        # Window.add, spelt out: this runs once a batch, and a method call would double its cost.
        window.n += 1
        window.total += loss
        if loss < window.lo:
            window.lo, window.lo_at = loss, at
        if loss > window.hi:
            window.hi, window.hi_at = loss, at
        if metrics:
            self._log_metrics(metrics, at)

    def _log_metrics(self, metrics: dict, at: int) -> None:
        for name, value in metrics.items():
            window = self.metrics.get(name)
            if window is None:
                if not METRIC_NAME.fullmatch(name) or name == "loss":
                    raise ValueError(f"metric name {name!r} refused: use 1 to 64 letters, digits, '_', '.' or '-', "
                                     "starting with a letter or '_' (the loss is log's first argument)")
                window = self.metrics[name] = Window()
            try:
                value = float(value)
            except (TypeError, ValueError) as err:
                raise TypeError(f"metric {name} must be a number, not {value!r}") from err
            if math.isfinite(value):
                window.add(value, at)

    def _next_stop(self) -> int | None:
        """Look at the control file when due; the batch to train up to before coming back, or None after waiting
        (at the target, paused, or paced)."""
        now = time.monotonic()
        if now >= self._check_at:
            self._housekeeping(now)
            self._check_at = now + CONTROL_CHECK_S
            if self.done:
                return None
        limit = self._limit(now)
        if self.batch >= limit or self.paused or self.trouble:
            at_rest = self.batch >= self.target or self.paused or self.trouble
            due = self._check_at if at_rest else min(self._check_at, self._pace_due())
            time.sleep(max(0.0, due - now))
            return None
        if self._next_loss_at <= self.batch or (self._next_state_at is not None and self._next_state_at <= self.batch):
            self._schedule_reports()  # left behind by a pause at a scheduled batch (a divergence): a run of no batches
        state_at = self._next_state_at or limit
        if self._next_state_at is not None:
            if state_at == self.batch + 1:
                self._before_report = (self.batch, self.trainer.state_vector())
            else:
                state_at -= 1  # stop one batch short of a state report, to keep the state the step into it starts from
        return min(limit, self._next_loss_at, state_at, self.batch + self._chunk)

    def _chunk_took(self, seconds: float) -> None:
        """Fewer batches between looks at the clock when batches are slow: commands still land in CONTROL_CHECK_S."""
        if seconds > CONTROL_CHECK_S:
            self._chunk = max(1, self._chunk // 2)
        elif self._chunk < CHUNK:
            self._chunk += 1

    def _stopped(self) -> None:
        """After a run of batches: what the batch schedule asks for at this batch, divergence, the target."""
        batch, now = self.batch, time.monotonic()
        if self.loss is not None and not math.isfinite(self.loss):
            self.on_divergence(now)  # before anything else: no checkpoint may hold these parameters
            self._schedule_reports()
            return
        if batch == self._next_loss_at:
            self.report_loss(now)
        if batch == self._next_state_at:
            if self._state_budget_allows(now):
                self.out.write(self.state_report())
                self._report_update()
            self._next_state_at = next_state_report(batch, self.report_every, self._n_params)
        if batch == self.target:
            self.report_loss(now, {"event": [batch, "target_reached"]})
            self.checkpoint(now)  # the loop idles now: a crash while idle costs nothing

    def _housekeeping(self, now: float) -> None:
        """Commands, ownership, the disk, the heartbeat, paced state reports and the checkpoint cadence."""
        self.apply_commands()
        if now >= self._next_ownership_check:
            self.check_still_owned()
            self._next_ownership_check = now + OWNERSHIP_CHECK_S
        if now >= self._next_disk_check:
            self._check_disk(now)
            self._next_disk_check = now + DISK_CHECK_S
        if self.trouble:
            return  # nothing more is written until the disk takes it: the slot beats the heartbeat meanwhile
        since_report = now - self._last_loss_report
        if (self.loss_is_new() and since_report >= LOSS_MIN_INTERVAL_S) or since_report >= HEARTBEAT_S:
            self.report_loss(now)
        if (self.pace and now - self._last_state_report >= PACED_STATE_EVERY_S and self._n_params <= DENSE_STATE_MAX_PARAMS
                and self.batch != self._paced_state_batch):
            self._paced_state_batch = self.batch
            self.out.write(self.state_report())
        if now - self._last_checkpoint >= CHECKPOINT_EVERY_S and self.batch != self._checkpointed_batch:
            self.checkpoint_shown(now)

    def _check_disk(self, now: float) -> None:
        """Pause when the run's filesystem has less than min_free_mb free, or the run file cannot be written, and say
        why in the slot; go on by itself when space is back and a heartbeat lands again."""
        free = _free_bytes(self.run_dir.path)
        was = self.trouble
        if not self._room_for_checkpoint(free):  # below the floor, or a checkpoint would take it there
            self.trouble = {"low_disk": {"free": free, "min_free": round(self.min_free_mb * MB)}}
        elif self.out.error is not None:
            err = self.out.error
            self.trouble = {"write_error": f"cannot write {self.run_dir.run_file.name}: {_reason(err)}"}
        else:
            self.trouble = {}
        if self.trouble:
            self.slot.say(**self.trouble)
            if not was:
                self.out.write({"event": [self.batch, "low_disk" if "low_disk" in self.trouble else "write_error"],
                                "error": self.trouble.get("write_error", f"{free / MB:.1f} MB free, below {self.min_free_mb:g} MB"),
                                **self.trouble})
            if "write_error" in self.trouble:
                self.report_loss(now)  # a heartbeat that tells, when it lands, that writing works again
        elif was:
            self.slot.say()
            self._pace_from = (self.batch, now)  # no burst to catch up the paused seconds
            self.report_loss(now, {"event": [self.batch, "disk_ok"], "free": free})
        self._cap_log()

    def _room_for_checkpoint(self, free: int | None = None) -> bool:
        """Whether a checkpoint as large as the last one leaves min_free_mb free (kept checkpoints hold the old ones' space).
        A floor of 0 never pauses: what does not fit fails, and the checkpoint before stays whole."""
        if not self.min_free_mb:
            return True
        free = _free_bytes(self.run_dir.path) if free is None else free
        try:
            size = os.path.getsize(self.run_dir.checkpoint)
        except OSError:
            size = 0
        return free is None or free - size >= self.min_free_mb * MB

    def _cap_log(self) -> None:
        """Cut worker.log back to its newest part when it has grown past WORKER_LOG_MAX."""
        try:
            cap_file(self.run_dir.worker_log, WORKER_LOG_MAX, WORKER_LOG_KEPT)
        except OSError:
            pass  # a log that cannot be cut is a log, not a reason to stop

    def _limit(self, now: float) -> int:
        """The batch training may reach by now: the target, or less when a pace is set."""
        if not self.pace:
            return self.target
        start_batch, start_t = self._pace_from
        allowed = start_batch + int((now - start_t) * self.pace)
        if allowed - self.batch > max(1.0, self.pace * PACE_CATCH_UP_S):  # fell behind: go on from here, no burst
            self._pace_from = (self.batch, now - 1 / self.pace)
            allowed = self.batch + 1
        return min(self.target, allowed)

    def _pace_due(self) -> float:
        """When a paced run may train its next batch."""
        start_batch, start_t = self._pace_from
        return start_t + (self.batch + 1 - start_batch) / self.pace

    def finish(self, error: BaseException | None = None) -> None:
        """End the generation: a final checkpoint and the shutdown record, or the error that ended it."""
        try:
            if self.orphaned:
                return  # its files now belong to someone else, or to no one: touch nothing
            if error is not None:
                said = f"{type(error).__name__}: {error}"
                self.out.write({"event": [self.batch, "error"], "error": said})
                self.slot.say(ended="error", batch=self.batch, error=said)
                return
            self.checkpoint_shown(time.monotonic())
            if self.ending == "terminated":
                said = f"ended by Slurm's SIGTERM (job {self.job_id} cancelled, or at its time limit)"
                self.report_loss(time.monotonic(), {"event": [self.batch, "error"], "error": said})
                self.slot.say(ended="error", batch=self.batch, error=said)
                return
            self.report_loss(time.monotonic(), {"event": [self.batch, self.ending], **({"job": self.job_id} if self.job_id else {})})
            # Said in the slot too: with a full disk the shutdown record may not land, and the run must not read crashed.
            self.slot.say(ended=self.ending, batch=self.batch)
        except Orphaned:
            self.orphaned = True
        finally:
            self.out.close()  # every record has landed before the process, and its lock, are gone
            self.slot.close()

    # -- reports -------------------------------------------------------------------------

    def state_report(self) -> dict:
        """The seed's state report (eta, the state vector, the settings); a summary and a sample for a large net."""
        self._last_state_report = time.monotonic()
        sv, eta = self.trainer.state_vector(), self.trainer.eta
        if self._sample is None:
            return state_report(self.batch, eta, sv, self.target, self.report_every, self.pace)
        summary = tensor_summary(sv, self.trainer.tensors, self._summarized)
        self._summarized = sv
        return summary_report(self.batch, eta, summary, sv[self._sample], self.target, self.report_every, self.pace)

    def _report_update(self) -> None:
        """Beside a scheduled state report: what its batch's step did to each tensor, and a built-in net's dead units."""
        before, self._before_report = self._before_report, None
        if before is None or before[0] != self.batch - 1:
            return
        sv = self.trainer.state_vector()
        if len(before[1]) != len(sv) or not np.isfinite(sv).all():
            return
        self.out.write(update_report(self.batch, update_ratios(sv, before[1], self.trainer.tensors), self.trainer.dead_units()))

    def _state_budget_allows(self, now: float) -> bool:
        """Whether a scheduled state report fits the byte budget; it is counted against it when it does."""
        allowed, counted = self._state_budget
        allowed = min(STATE_BYTES_BURST, allowed + (now - counted) * STATE_BYTES_PER_S)
        size = BYTES_PER_NUMBER * (self._n_params if self._sample is None
                                  else len(self._sample) + len(SUMMARY) * len(self.trainer.tensors))
        fits = allowed > 0
        self._state_budget = (allowed - size if fits else allowed, now)
        return fits

    def loss_is_new(self) -> bool:
        """True when the loss differs from the last one reported (NaN equals NaN here: a diverged run stays quiet)."""
        last, loss = self._last_reported_loss, self.loss
        if loss is None:
            return False
        return last is None or not (loss == last or (math.isnan(loss) and math.isnan(last)))

    def report_loss(self, now: float, extra: dict | None = None) -> None:
        """Report the latest loss, the window of every batch since the last report and the metrics logged since,
        then start new windows. Before any loss is known, a bare heartbeat says the worker lives."""
        record = {"heartbeat": [self.batch, None]} if self.loss is None else loss_report(self.batch, self.loss, self.window.summary())
        if self.extra_metrics is not None and now >= self._extra_due and self.batch != self._extra_batch:
            self._measure_extra_metrics(now)
        logged = {name: metric_entry(window.last, window.summary()) for name, window in self.metrics.items() if window.n}
        if logged:
            record["metrics"] = [self.batch, logged]
            self.metrics = {name: Window() for name in self.metrics}
        self.out.write({**record, **(extra or {})})
        self.window = Window()
        self._last_loss_report = now
        self._last_reported_loss = self.loss
        self._last_reported_batch = self.batch
        self._next_loss_at = next_loss_report(self.batch)

    def _measure_extra_metrics(self, now: float) -> None:
        """Log train()'s extra metrics at this batch; a hook that fails is dropped with a word in worker.log, never
        taking training down."""
        self._extra_due, self._extra_batch = now + EXTRA_METRICS_EVERY_S, self.batch
        try:
            self._log_metrics(self.extra_metrics(), self.batch)
        except Exception as err:  # observing never kills training
            tell_log(f"nnobs: the extra metrics failed ({type(err).__name__}: {err}); they are no longer measured")
            self.extra_metrics = None

    def checkpoint_shown(self, now: float) -> None:
        """Checkpoint a batch the run file already shows: a successor never resumes past what readers saw."""
        if self.batch != self._last_reported_batch:
            self.report_loss(now)
        self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Save the state; a failure (a full disk, say) is reported and tried again later, never fatal."""
        self.check_still_owned()  # never write into a directory that is no longer this run's
        self._last_checkpoint = now
        if not np.isfinite(self.trainer.state_vector()).all():
            return  # parameters no one can go on from: the checkpoint before them stays
        if not self._room_for_checkpoint():
            self._check_disk(now)  # pauses, and says so: a checkpoint would take the disk below its floor
            return
        saved = self.trainer.save()
        self.out.flush()  # every answer given so far is on disk before the checkpoint says so
        ckpt = Checkpoint(
            batch=self.batch,
            eta=self.trainer.eta,
            target=self.target,
            report_every=self.report_every,
            pace=self.pace,
            gen=self.gen,
            last_seq=self.control.last_seq,
            control_id=self.control.file_id,
            run_offset=self._answers_from if self._answers_from is not None else self.out.size(),
            min_free_mb=self.min_free_mb,
            state=saved,
            loss=self.loss if self.loss is not None and math.isfinite(self.loss) else None,
        )
        try:
            save_checkpoint(self.run_dir.checkpoint, ckpt)
            keep_checkpoint(self.run_dir.checkpoint, self.batch)  # to rewind to, later
        except OSError as err:
            self.out.write({"event": [self.batch, "checkpoint_error"], "error": str(err)})
            return
        self._checkpointed_batch = self.batch
        if saved:  # finite parameters; one saved before any loss was logged ranks last, but is there to go back to
            known = self.loss is not None and math.isfinite(self.loss)
            self._finite_states.append((self.loss if known else math.inf, self.batch, saved))

    def on_divergence(self, now: float) -> None:
        """Stop training and go back to the best recent finite parameters: a net full of NaN cannot learn its way back."""
        self.paused = True
        detail = "the loss is no longer a number; training paused until eta changes"
        if self._finite_states and self.trainer.can_load:
            # The lowest loss, not the latest: a checkpoint can catch the blow-up while it is still finite.
            _, finite_batch, saved = min(self._finite_states, key=lambda kept: kept[0])
            self.trainer.load(saved)
            detail += f"; parameters back to those of batch {finite_batch:,}"
        elif self.trainer.can_load:
            detail += "; no finite parameters to go back to: move checkpoint.npz away to start afresh"
        self.report_loss(now, {"event": [self.batch, "diverged"], "error": detail})

    # -- commands ------------------------------------------------------------------------

    def apply_commands(self) -> None:
        try:
            commands = self.control.poll()
        except ControlFileError as err:
            self.out.write({"event": [self.batch, "control_error"], "error": str(err)})
            return
        for command in commands:
            self.apply(command)
        if commands and not self.trouble:
            self.checkpoint(time.monotonic())  # so a crash cannot re-apply what was answered

    def apply(self, command: Command) -> None:
        cmd, cmd_id = command.get("cmd"), str(command.get("id"))
        answer = {"id": cmd_id, "seq": command.get("seq"), "cmd": cmd, "value": command.get("value")}
        repeat = cmd_id in self.answered  # answered by the generation before, after its checkpoint
        try:
            value = check_command(cmd, command.get("value"))
        except CommandError as err:
            if not repeat:
                self.out.write({"reject": [self.batch, {**answer, "reason": str(err)}]})
            return
        if repeat and cmd in ("tell_state", "shutdown"):
            return  # settings are applied again (the state rolled back to the checkpoint); actions are not
        if cmd == "shutdown" and _number(command.get("t")) is not None and command["t"] < self.started_t:
            # Meant for a worker that had already gone (a double click, a crash): it must not stop this one.
            self.out.write({"reject": [self.batch, {**answer, "reason": "sent before this worker started"}]})
            return
        b = self.batch
        record: dict = {}
        if cmd == "target":
            self.target = value
            record["target"] = [b, value]
        elif cmd == "eta":
            self.trainer.eta = value
            record["eta"] = [b, value]
            if self.paused:  # train on from the finite parameters, with the new step size
                self.paused = False
                self.loss = self.trainer.loss_now()
        elif cmd == "report_every":
            self.report_every = value
            self._next_state_at = next_state_report(b, value, self._n_params)
            record["report_every"] = [b, value]
        elif cmd == "pace":
            self.pace = value
            self._pace_from = (b, time.monotonic())
            record["pace"] = [b, value]
        elif cmd == "min_free":
            self.min_free_mb = value
            self._next_disk_check = 0.0  # at once: a lowered floor lets a paused run go on
            record["min_free"] = [b, value]
        elif cmd == "tell_state":
            record.update(self.state_report())
        elif cmd in ("rewind", "reinit"):
            if repeat:
                return  # the checkpoint this generation resumed from already holds what it did
            try:
                record.update(self.rewind(value) if cmd == "rewind" else self.reinit(value))
            except CommandError as err:
                self.out.write({"reject": [b, {**answer, "reason": str(err)}]})
                return
            b = self.batch  # where it took effect: the batch the run goes on from
        elif cmd == "shutdown":
            self.done = True
        if not repeat:
            self.out.write({"ack": [b, answer], **record})
        elif record:
            self.out.write(record)  # the setting holds again: say so, but do not answer twice

    def rewind(self, batch: int) -> dict:
        """Go back to the newest kept checkpoint at or before batch, as a new generation; the records saying so."""
        if not self.trainer.can_load:
            raise CommandError("cannot rewind: this run's script gives no way to load a checkpoint (see nnobs.Run's load)")
        try:
            kept = load_kept(self.run_dir.checkpoint, batch)
        except NnobsError as err:
            raise CommandError(f"cannot rewind: {err}") from err
        if kept is None:
            batches = ", ".join(f"{b:,}" for b in kept_batches(self.run_dir.checkpoint)) or "none"
            raise CommandError(f"no checkpoint is kept at or before batch {batch:,} (kept: {batches})")
        went_from = self.batch
        try:
            self.trainer.load(kept.state)
        except ValueError as err:
            raise CommandError(f"cannot rewind: the checkpoint at batch {kept.batch:,} does not fit this net ({err})") from err
        self.trainer.eta = kept.eta  # the step size it had there: the one that ruined it may be why we rewind
        forget_kept_after(self.run_dir.checkpoint, kept.batch)
        self._finite_states = deque((s for s in self._finite_states if s[1] <= kept.batch), maxlen=FINITE_STATES_KEPT)
        self._went_on_from(kept.batch, _or(self.trainer.loss_now(), kept.loss))
        return {"event": [self.batch, "rewound"], "rewound_from": went_from, **self._fresh_reports()}

    def reinit(self, seed: int | None) -> dict:
        """Start the net afresh from a seed (the run's own by default), keeping the batch count and history."""
        used = self.trainer.reinit(seed)
        self._finite_states.clear()
        self._went_on_from(self.batch, self.trainer.loss_now())
        return {"event": [self.batch, "reinit"], "seed": used, **self._fresh_reports()}

    def _went_on_from(self, batch: int, loss: float | None) -> None:
        """The run goes on from batch with new parameters, as a new generation."""
        self.gen += 1
        self.out.gen = self.gen  # stamped on every record written from here on
        self.batch = batch
        self.paused = False
        self.loss = loss
        self.window = Window()
        self._summarized = None
        self._schedule_reports()
        self._pace_from = (batch, time.monotonic())

    def _fresh_reports(self) -> dict:
        """A loss report and a state report of the parameters just set, for the line that says what happened."""
        loss = {} if self.loss is None else loss_report(self.batch, self.loss)
        return {**loss, **self.state_report()}

    def check_still_owned(self) -> None:
        """Raise Orphaned when worker.lock is no longer the file we lock: the run was deleted or made anew."""
        try:
            same = os.stat(self.run_dir.worker_lock).st_ino == self.lock_inode
        except FileNotFoundError:
            same = False
        if not same:
            raise Orphaned(f"{self.run_dir.path} was deleted or replaced")
        if self.job_id and (why := recorded_for_another_job(self.run_dir)):
            raise Orphaned(why)  # a new job serves the run: this one must not write beside it


def _free_bytes(path: Path) -> int | None:
    """Bytes free for unprivileged writers on path's filesystem; None when it cannot be told."""
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _reason(err: OSError) -> str:
    """An OS error in plain lower-case words: "no space left on device"."""
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


def _or(value, fallback):
    return fallback if value is None else value


def _answered_since(run_file: Path, offset: int) -> set[str]:
    """Ids of commands answered in the run file after offset."""
    reader = RecordReader(run_file)
    reader.offset = offset
    history = RunHistory()
    history.add_lines(reader.read_new_lines())
    return set(history.answers)
