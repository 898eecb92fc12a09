"""The run protocol: a training loop and its run's files, knowing nothing of the net being trained.

A Session answers the control file's commands (each exactly once, across crashes), writes loss
reports on the batch schedule and the clock, heartbeats, state reports and checkpoints, paces
the run, notices a diverged loss, and makes sure its run directory is still its own. What is
trained, and how, is a Trainer's business: the built-in numpy worker and a user's script
(nnobs.Run) are both loops over Session.batches() that call Session.log(). Its parts: a Pacer,
a Reporter, a DiskGuard, Recovery (checkpoints) and the command table (nnobs.training.commands).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from nnobs.protocol.checkpoint import KEPT_MB, MIB, load_checkpoint
from nnobs.protocol.commands import COMMANDS, DEFAULT_MIN_FREE_MB, check_command
from nnobs.protocol.control import Command, ControlWatcher, answer_of
from nnobs.protocol.errors import CommandError, ControlFileError
from nnobs.protocol.events import EventKind
from nnobs.protocol.jobs import JOB_ID_ENV
from nnobs.protocol.numbers import number
from nnobs.protocol.records import BackgroundWriter
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.schema import params_record
from nnobs.protocol.slot import StatusSlot, tell_log
from nnobs.training.commands import HANDLERS, answered_since
from nnobs.training.disk_guard import DiskGuard
from nnobs.training.fold_keeper import FoldKeeper
from nnobs.training.ownership import Orphaned, Ownership, claim
from nnobs.training.pacer import Pacer
from nnobs.training.placer import CheckpointPlacer
from nnobs.training.ranks import Leader
from nnobs.training.recovery import Recovery, or_else, resume_trainer, steps_after
from nnobs.training.reporter import Reporter
from nnobs.training.state import RunState
from nnobs.training.trainer import Trainer
from nnobs.training.window import Window

__all__ = ["Orphaned", "Session", "Settings", "Trainer", "claim"]

# How often the control file is looked at: commands land within this. Each look and the stop around it cost a
# framework's step loop 50 to 60 µs in place (the caches cold after the step; 3 µs warm): at 20 ms that was 0.3 % of
# a Lightning fit's time, and a page refreshing once a second cannot tell 50 ms from 20.
CONTROL_CHECK_S = 0.05
# Most batches between two looks at the clock: 10 ms of XOR, below CONTROL_CHECK_S. Each stop costs a few µs,
# which at 64 batches a stop was 0.8 % of XOR's time. Slower batches come as many as take CONTROL_CHECK_S.
CHUNK = 1024


@dataclass
class Settings:
    """A run's settings when it starts afresh; after that its checkpoints hold them."""

    target: int = 2_000_000
    report_every: int = 2_000
    pace: float = 0.0
    eta: float | None = None  # None: the trainer's own
    min_free_mb: float = DEFAULT_MIN_FREE_MB
    wait_at_target: bool = False  # idle at the target for a higher one (the built-in worker), else end there
    kept_mb: float = KEPT_MB  # what the checkpoints kept to rewind and fork to may take on disk, all told (MiB)
    eta_schedule: list | None = None  # [[batch, eta], ...]: eta set at each batch as the run passes it


class Session(RunState):
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
        self.ownership = Ownership(run, self.job_id)
        ckpt = load_checkpoint(run.checkpoint)
        self.resumed_from = None if ckpt is None else ckpt.batch
        self.loss: float | None = None
        self._code_eta = settings.eta  # what the code asked for, told apart from the checkpoint's on resume
        self.wait_at_target = settings.wait_at_target
        if ckpt is None:
            self.batch, self.target, self.report_every, self.gen = 0, settings.target, settings.report_every, 1
            pace, min_free_mb = settings.pace, settings.min_free_mb
            if settings.eta is not None:
                trainer.eta = settings.eta
            last_seq, control_id, answered, answers_from = 0, None, set(), 0
        else:
            resume_trainer(trainer, ckpt)
            self.batch, self.target, self.report_every = ckpt.batch, ckpt.target, ckpt.report_every
            self.gen = ckpt.gen + 1
            pace, min_free_mb = ckpt.pace, ckpt.min_free_mb
            self.loss = ckpt.loss
            last_seq, control_id = ckpt.last_seq, ckpt.control_id
            answered = answered_since(run.run_file, ckpt.run_offset)
            answers_from = ckpt.run_offset
        self.answered = answered  # ids answered after the checkpoint by the generation before: not answered again
        self.control = ControlWatcher(run.control_file, last_seq, control_id)
        self.out = BackgroundWriter(run.run_file, self.gen)
        self.slot = StatusSlot(run.status_file, os.getpid(), self.gen)  # where it speaks when the run file cannot grow
        self.loss = or_else(trainer.loss_now(), self.loss)
        self.done = False
        self.orphaned = False
        self.paused = False
        self.window = Window()
        self.pacer = Pacer(pace, self.batch, time.monotonic())
        self.reporter = Reporter(self)
        placer = CheckpointPlacer(run.checkpoint)
        self.disk = DiskGuard(self, self.reporter, min_free_mb, placer)
        kept_bytes = int(settings.kept_mb * MIB)
        self.recovery = Recovery(
            self, self.reporter, self.disk, self.ownership, self.control, placer, answers_from, kept_bytes
        )
        self.log_metrics = self.reporter.log_metrics  # bound once: log() calls it once a batch when given metrics
        self._check_at = 0.0  # when the control file is next looked at
        self.check_every = CONTROL_CHECK_S  # seconds between looks: longer for a job's rank 0 (Leader.stop_every)
        self._chunk = 16  # batches between two looks at the clock: as many as take check_every (_chunk_took)
        self.fold_keeper = FoldKeeper(run.run_file, min_free_mb)  # a first open of the run parses only its tail
        self.ranks: Leader | None = None  # rank 0 of a distributed job: the other ranks follow its decisions
        # The schedule's steps still to come: each sets eta as the run passes its batch (one at batch 0, a fresh
        # run's start); an eta set by hand holds until the next step.
        self.eta_schedule = settings.eta_schedule
        self.eta_steps = steps_after(settings.eta_schedule, self.batch, at=True)

    # -- the loop ------------------------------------------------------------------------

    def begin(self) -> None:
        """Checkpoint, say the worker started (with what its state vector holds), answer what is waiting."""
        now = time.monotonic()
        self.recovery.checkpoint(now)
        self.reporter.system.start()
        self.reporter.take_machine()  # the machine at the start: in the started record, however short the run
        started = {
            "event": [self.batch, EventKind.STARTED],
            "pid": os.getpid(),
            "resumed_from": self.resumed_from,
            "by": self.started_by,
            **({"job": self.job_id} if self.job_id else {}),
        }
        self.reporter.report_loss(
            now,
            {
                **started,
                **params_record(self.batch, self.trainer.tensors, self.reporter.n_params),
                **self.reporter.state_report(),
            },
        )
        self.apply_commands()
        self.recovery.answers_from = None  # from here on, fresh answers start at the run file's end
        self.fold_keeper.start()
        # Everything a look at the clock does was done just now: the first comes after check_every.
        self._check_at = time.monotonic() + self.check_every
        if self.resumed_from is not None:
            tell_what_resume_kept(
                self.run_dir.name, self._code_eta, self.trainer.eta, self.batch, self.target, self.wait_at_target
            )

    def batches(self, until: int | None = None) -> Iterator[int]:
        """Yield the number of each batch to train (resumed runs go on from their checkpoint), idling at a pace, and
        end at the target (or idle there, waiting for a higher one), on shutdown, and after batch `until` when given
        (an epoch loop's last). The loop body trains the batch and calls log()."""
        ranks = self.ranks
        # The batch schedule's loss reports are written by log() at their batch, with no stop of the loop for them; a
        # job's rank 0 writes them at its stops, once every rank's losses are gathered.
        self.reporter.reports_in_log = ranks is None
        with self._orphan_ends_loop():
            while not self.done:
                if until is not None and self.batch >= until:
                    break
                end = self._next_stop()
                if end is not None and until is not None:
                    end = min(end, until)
                if ranks is not None:  # every rank trains to the same batch, or waits, or ends, as decided here
                    ranks.decide(self.batch, end, self.trainer.eta, self.done, self.target)
                    ranks.chunk_begins(self.window)
                    if self.done:  # a signal, between the look at the clock and the decision
                        break
                if end is None:
                    continue
                started, batch = time.monotonic(), self.batch
                trained = end - batch
                while batch < end:
                    batch += 1
                    self.batch = batch
                    yield batch
                self._chunk_took(time.monotonic() - started, trained)
                if ranks is not None:
                    self.loss = ranks.merge_losses(self.window, self.loss, self.reporter.metrics, self.batch)
                    self.check_every = ranks.stop_every(CONTROL_CHECK_S)
                self._stopped()
        if ranks is not None:
            ranks.decide(self.batch, None, self.trainer.eta, True, self.target)

    def train(
        self,
        learn: Callable[..., float],
        next_batch: Callable[[], tuple],
        extra_metrics: Callable[[], dict] | None = None,
    ) -> None:
        """batches() and log() in one loop, for batches that take microseconds: learn(*next_batch()) trains one batch
        and returns its loss, and the window is kept in locals between two stops (a call to log() would cost 5 % of
        XOR's time). extra_metrics, when given, returns more metrics ({"test_loss": ...}) of the net as it is; it is
        called at the batches the evaluation schedule picks (nnobs.training.schedule), within its budget, and at the
        target, and its values ride in a loss report at that batch."""
        self.reporter.extra_metrics = extra_metrics
        self.reporter.evaluates = extra_metrics is not None
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
                self._chunk_took(time.monotonic() - started, end - batch)
                self._stopped()

    @contextmanager
    def _orphan_ends_loop(self) -> Iterator[None]:
        """A run directory deleted or replaced under the loop ends it, and nothing more is written."""
        try:
            yield
        except Orphaned as err:
            self.orphaned = self.done = True
            tell_log(f"nnobs {os.getpid()}: {err}; the loop ends without writing")

    def log(self, loss: float, metrics: dict | None = None) -> None:
        """The loss of the batch being trained, and any other named metrics; NaN or inf marks a diverged loss."""
        self.loss = loss
        window, at, reporter = self.window, self.batch, self.reporter
        # Window.add, spelt out: this runs once a batch, and a method call would double its cost.
        window.n += 1
        window.total += loss
        if loss < window.lo:
            window.lo, window.lo_at = loss, at
        if loss > window.hi:
            window.hi, window.hi_at = loss, at
        if metrics:
            self.log_metrics(metrics, at)
        elif reporter.evaluation_started is not None:  # asked to evaluate, and logged nothing held out
            reporter.end_evaluation()
        if at >= reporter.next_loss_at and reporter.reports_in_log:
            reporter.report_logged(loss)

    def _next_stop(self) -> int | None:
        """Look at the control file when due; the batch to train up to before coming back, or None after waiting
        (at the target, paused, or paced)."""
        now = time.monotonic()
        if now >= self._check_at:
            self._housekeeping(now)
            self._check_at = now + self.check_every
            if self.done:
                return None
        if self.batch >= self.target and not (self.wait_at_target or self.disk.trouble or self.paused):
            self.apply_commands()  # a target raised a moment ago goes on
            if self.batch >= self.target:
                self.done = True  # the loop ends at its target, as a framework's max_steps ends it
                return None
        limit = self.pacer.limit(self.batch, self.target, now)
        if self.batch >= limit or self.paused or self.disk.trouble:
            at_rest = self.batch >= self.target or self.paused or self.disk.trouble
            due = self._check_at if at_rest else min(self._check_at, self.pacer.due(self.batch))
            time.sleep(max(0.0, due - now))
            return None
        if self.eta_steps and self.eta_steps[0][0] <= self.batch:
            self._scheduled_eta()
        if self.eta_steps:
            limit = min(limit, self.eta_steps[0][0])
        return min(self.reporter.stop_before(limit), self.recovery.stop_before(limit), self.batch + self._chunk)

    def _scheduled_eta(self) -> None:
        """The eta schedule's step at this batch: eta set, and said with a marker."""
        batch, eta = self.eta_steps.pop(0)
        self.trainer.eta = eta
        self.out.write({"event": [self.batch, EventKind.ETA_SCHEDULED], "eta": [self.batch, eta]})

    def _chunk_took(self, seconds: float, trained: int) -> None:
        """As many batches between two looks at the clock as take check_every at the pace of those just trained
        (CHUNK at most): commands land within it, and a stop's cost is spread over all the batches that allows."""
        if trained > 0:
            fit = self.check_every * trained / seconds if seconds > 0 else CHUNK
            self._chunk = max(1, min(CHUNK, int(fit)))

    def _stopped(self) -> None:
        """After a run of batches: what the batch schedule asks for at this batch, divergence, the target."""
        batch, now = self.batch, time.monotonic()
        if self.loss is not None and not math.isfinite(self.loss):
            self.recovery.on_divergence(now)  # before anything else: no checkpoint may hold these parameters
            self.reporter.schedule()
            return
        self.reporter.at_stop(now)
        self.recovery.keep_when_due(now)
        if batch == self.target:
            self.reporter.report_loss(now, {"event": [batch, EventKind.TARGET_REACHED]})
            self.recovery.checkpoint(now)  # the loop idles now: a crash while idle costs nothing

    def _housekeeping(self, now: float) -> None:
        """The eta schedule's step due, then commands (an eta set by hand at a step's batch holds), ownership, the
        disk, the heartbeat, paced state reports and the checkpoint cadence."""
        if self.eta_steps and self.eta_steps[0][0] <= self.batch:
            self._scheduled_eta()
        self.apply_commands()
        self.ownership.check_when_due(now)
        self.disk.check_when_due(now)
        if self.disk.trouble:
            return  # nothing more is written until the disk takes it: the slot beats the heartbeat meanwhile
        self.reporter.on_the_clock(now)
        self.recovery.checkpoint_when_due(now)

    def finish(self, error: BaseException | None = None) -> None:
        """End the generation: a final checkpoint and the shutdown record, or the error that ended it."""
        try:
            if self.orphaned:
                return  # its files now belong to someone else, or to no one: touch nothing
            if error is not None:
                said = f"{type(error).__name__}: {error}"
                self.out.write({"event": [self.batch, EventKind.ERROR], "error": said})
                self.slot.say(ended="error", batch=self.batch, error=said)
                return
            self.recovery.checkpoint_shown(time.monotonic())
            self.recovery.placer.settle()  # in place before the run reads stopped: a restart resumes from it
            self.reporter.take_machine()  # the machine's newest figures ride in the last report
            if self.ending == "terminated":
                said = f"ended by Slurm's SIGTERM (job {self.job_id} cancelled, or at its time limit)"
                self.reporter.report_loss(time.monotonic(), {"event": [self.batch, EventKind.ERROR], "error": said})
                self.slot.say(ended="error", batch=self.batch, error=said)
                return
            self.reporter.report_loss(
                time.monotonic(),
                {"event": [self.batch, EventKind(self.ending)], **({"job": self.job_id} if self.job_id else {})},
            )
            # Said in the slot too: with a full disk the shutdown record may not land, and the run must not read crashed.
            self.slot.say(ended=self.ending, batch=self.batch)
        except Orphaned:
            self.orphaned = True
        finally:
            self.recovery.placer.close()  # a checkpoint on its way lands before the process is gone
            self.reporter.system.stop()
            self.fold_keeper.stop()
            self.out.close()  # every record has landed before the process, and its lock, are gone
            self.slot.close()

    # -- commands ------------------------------------------------------------------------

    def apply_commands(self) -> None:
        """Answer the control file's new commands; then checkpoint, so a crash cannot re-apply what was answered."""
        try:
            commands = self.control.poll()
        except ControlFileError as err:
            self.out.write({"event": [self.batch, EventKind.CONTROL_ERROR], "error": str(err)})
            return
        for command in commands:
            self.apply(command)
        if commands and not self.disk.trouble:
            self.recovery.checkpoint(time.monotonic())

    def apply(self, command: Command) -> None:
        """Answer one command: an ack with what it did, or a reject saying why; a repeat is not answered again."""
        answer = answer_of(command)
        cmd, cmd_id = answer["cmd"], answer["id"]
        repeat = cmd_id in self.answered  # answered by the generation before, after its checkpoint
        try:
            value = check_command(cmd, command.get("value"))
        except CommandError as err:
            if not repeat:
                self.out.write({"reject": [self.batch, {**answer, "reason": str(err)}]})
            return
        assert isinstance(cmd, str), "check_command passes registered names only"
        if repeat and COMMANDS[cmd].action:
            return  # settings are applied again (the state rolled back to the checkpoint); actions are not
        if cmd == "shutdown" and number(command.get("t")) is not None and command["t"] < self.started_t:
            # Meant for a worker that had already gone (a double click, a crash): it must not stop this one.
            self.out.write({"reject": [self.batch, {**answer, "reason": "sent before this worker started"}]})
            return
        try:
            record = HANDLERS[cmd](self, value)
        except CommandError as err:
            self.out.write({"reject": [self.batch, {**answer, "reason": str(err)}]})
            return
        if not repeat:
            self.out.write({"ack": [self.batch, answer], **record})  # at the batch it took effect (a rewind's, after)
        elif record:
            self.out.write(record)  # the setting holds again: say so, but do not answer twice


def tell_what_resume_kept(
    name: str, code_eta: float | None, eta: float, batch: int, target: int, waits: bool = True
) -> None:
    """Say in worker.log where a resumed run's checkpoint overrode what its code asked for: eta, and the target."""
    if code_eta is not None and code_eta != eta:
        tell_log(
            f"nnobs: {name} resumed with eta {eta:g} (the checkpoint's), not the code's "
            f"{code_eta:g}: change it from the page or by `nnobs set {name} --eta X`"
        )
    if batch >= target:
        tell_log(
            f"nnobs: {name} resumed at batch {batch:,}, its target (the checkpoint's, not the "
            f"code's): it {'waits until the target is raised' if waits else 'ends at once'}; raise it from the page "
            f"or by `nnobs set {name} --target N`{'' if waits else ', then start it again'}"
        )
