"""The training process: the notebook's state machine, driven by the control file, reporting to the run file."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nnobs.bulk import number as _number
from nnobs.checkpoint import Checkpoint, forget_kept_after, kept_batches, keep_checkpoint, load_checkpoint, load_kept, save_checkpoint
from nnobs.control import Command, ControlWatcher, check_command
from nnobs.errors import CommandError, ControlFileError, NnobsError
from nnobs.files import leftover_temps
from nnobs.history import RunHistory
from nnobs.nn import Fact, Network
from nnobs.records import BackgroundWriter, RecordReader, RecordWriter
from nnobs.runs import RunDir, take_worker_lock
from nnobs.schedule import DENSE_STATE_MAX_PARAMS, next_loss_report, next_state_report
from nnobs.schema import loss_report, state_report
from nnobs.tasks import RunConfig, build, build_network, load_config

CONTROL_CHECK_S = 0.02  # how often the control file is looked at: commands land within this
LOSS_MIN_INTERVAL_S = 0.05  # at most 20 loss reports a second
HEARTBEAT_S = 1.0  # at least one loss report a second, even when idle
CHECKPOINT_EVERY_S = 3.0  # the most training a crash can cost
CHUNK = 16  # batches between two looks at the clock: ~0.2 ms of XOR, far below CONTROL_CHECK_S
FINITE_STATES_KEPT = 4  # checkpoints to choose from when the loss diverges: a blow-up takes milliseconds, they 3 s
OWNERSHIP_CHECK_S = 1.0  # how often the worker makes sure its run directory is still its own
PACED_STATE_EVERY_S = 0.5  # a paced run reports its state this often too: slow motion shows the net change
PACE_CATCH_UP_S = 1.0  # a paced run that fell behind (a busy machine, a slow batch) catches up at most this much


class Orphaned(Exception):
    """The run directory this worker serves was deleted or replaced under it."""


class Worker:
    """One generation of a run's worker. run() trains until shut down and returns the exit code."""

    def __init__(self, run: RunDir, net: Network, next_batch: Callable[[], Fact], ckpt: Checkpoint | None,
                 config: RunConfig, started_by: str = ""):
        self.run_dir = run
        self.config = config
        self.started_t = time.time()
        self.started_by = started_by  # who asked for this start ("page", "cli"), as the launcher was told
        self.lock_inode = os.stat(run.worker_lock).st_ino  # the lock file this worker holds
        self.net = net
        self.next_batch = next_batch
        self.resumed_from = None if ckpt is None else ckpt.batch
        # Until this generation has looked at the control file once, its checkpoints keep the last one's
        # run offset: answers given after it must still be known to a successor if we die now.
        self._answers_from: int | None = 0
        if ckpt is None:
            self.batch, self.target, self.report_every, self.gen = 0, config.target, config.report_every, 1
            self.pace = config.pace
            last_seq, control_id, answered = 0, None, set()
        else:
            try:
                net.set_state_from_vector(ckpt.sv)
            except ValueError as err:
                raise NnobsError(f"the checkpoint does not fit this run's net ({err}); move checkpoint.npz away to start afresh") from err
            net.eta = ckpt.eta
            self.batch, self.target, self.report_every, self.gen = ckpt.batch, ckpt.target, ckpt.report_every, ckpt.gen + 1
            self.pace = ckpt.pace
            last_seq, control_id = ckpt.last_seq, ckpt.control_id
            answered = _answered_since(run.run_file, ckpt.run_offset)
            self._answers_from = ckpt.run_offset
        self.answered = answered  # ids answered after the checkpoint by the generation before: not answered again
        self.control = ControlWatcher(run.control_file, last_seq, control_id)
        self.out = BackgroundWriter(run.run_file, self.gen)
        self.loss = net.losses([next_batch()])[0]
        self.done = False
        self.paused = False  # the loss diverged: no training until eta changes
        # (loss, batch, state vector) of the latest checkpoints with finite numbers, to go back to on divergence
        self._finite_states: deque[tuple[float, int, np.ndarray]] = deque(maxlen=FINITE_STATES_KEPT)
        self._last_loss_report = 0.0  # monotonic time
        self._last_reported_loss: float | None = None
        self._last_reported_batch = -1
        self._last_checkpoint = 0.0
        self._checkpointed_batch = -1
        self._next_ownership_check = 0.0
        self._window = _Window()  # the losses since the last loss report
        self._n_params = len(net.state_vector())
        self._schedule_reports()
        self._pace_from = (self.batch, time.monotonic())  # (batch, time) the current pace counts from
        self._last_state_report = 0.0  # monotonic time
        self._paced_state_batch = -1  # the batch of the last clock-paced state report

    def _schedule_reports(self) -> None:
        """The next batches that get a loss report and a state report by the batch schedule."""
        self._next_loss_at = next_loss_report(self.batch)
        self._next_state_at = next_state_report(self.batch, self.report_every, self._n_params)

    # -- reports -------------------------------------------------------------------------

    def state_report(self) -> dict:
        """The seed's state report: eta and the state vector, with the settings beside them."""
        self._last_state_report = time.monotonic()
        # The vector is a copy of its own: it is encoded on the writer's thread.
        return state_report(self.batch, self.net.eta, self.net.state_vector(), self.target, self.report_every, self.pace)

    def loss_is_new(self) -> bool:
        """True when the loss differs from the last one reported (NaN equals NaN here: a diverged run stays quiet)."""
        last = self._last_reported_loss
        return last is None or not (self.loss == last or (math.isnan(self.loss) and math.isnan(last)))

    def report_loss(self, now: float, extra: dict | None = None) -> None:
        """Report the latest loss and the window of every batch since the last report, then start a new window."""
        self.out.write({**loss_report(self.batch, self.loss, self._window.summary()), **(extra or {})})
        self._window = _Window()
        self._last_loss_report = now
        self._last_reported_loss = self.loss
        self._last_reported_batch = self.batch
        self._next_loss_at = next_loss_report(self.batch)

    def checkpoint_shown(self, now: float) -> None:
        """Checkpoint a batch the run file already shows: a successor never resumes past what readers saw."""
        if self.batch != self._last_reported_batch:
            self.report_loss(now)
        self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Save the state; a failure (a full disk, say) is reported and tried again later, never fatal."""
        self.check_still_owned()  # never write into a directory that is no longer this run's
        self._last_checkpoint = now
        sv = self.net.state_vector()
        if not np.isfinite(sv).all():
            return  # parameters no one can go on from: the checkpoint before them stays
        self.out.flush()  # every answer given so far is on disk before the checkpoint says so
        ckpt = Checkpoint(
            batch=self.batch,
            eta=self.net.eta,
            target=self.target,
            report_every=self.report_every,
            pace=self.pace,
            gen=self.gen,
            last_seq=self.control.last_seq,
            control_id=self.control.file_id,
            run_offset=self._answers_from if self._answers_from is not None else self.out.size(),
            sv=sv,
        )
        try:
            save_checkpoint(self.run_dir.checkpoint, ckpt)
            keep_checkpoint(self.run_dir.checkpoint, self.batch)  # to rewind to, later
        except OSError as err:
            self.out.write({"event": [self.batch, "checkpoint_error"], "error": str(err)})
            return
        self._checkpointed_batch = self.batch
        if math.isfinite(self.loss):
            self._finite_states.append((self.loss, self.batch, sv))

    def on_divergence(self, now: float) -> None:
        """Stop training and go back to the best recent finite parameters: a net full of NaN cannot learn its way back."""
        self.paused = True
        detail = "the loss is no longer a number; training paused until eta changes"
        if self._finite_states:
            # The lowest loss, not the latest: a checkpoint can catch the blow-up while it is still finite.
            _, finite_batch, finite_sv = min(self._finite_states, key=lambda kept: kept[0])
            self.net.set_state_from_vector(finite_sv)
            detail += f"; parameters back to those of batch {finite_batch:,}"
        else:
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
        if commands:
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
            self.net.eta = value
            record["eta"] = [b, value]
            if self.paused:  # train on from the finite parameters, with the new step size
                self.paused = False
                self.loss = self.net.losses([self.next_batch()])[0]
        elif cmd == "report_every":
            self.report_every = value
            self._next_state_at = next_state_report(b, value, self._n_params)
            record["report_every"] = [b, value]
        elif cmd == "pace":
            self.pace = value
            self._pace_from = (b, time.monotonic())
            record["pace"] = [b, value]
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
        try:
            kept = load_kept(self.run_dir.checkpoint, batch)
        except NnobsError as err:
            raise CommandError(f"cannot rewind: {err}") from err
        if kept is None:
            batches = ", ".join(f"{b:,}" for b in kept_batches(self.run_dir.checkpoint)) or "none"
            raise CommandError(f"no checkpoint is kept at or before batch {batch:,} (kept: {batches})")
        went_from = self.batch
        self.net.set_state_from_vector(kept.sv)
        self.net.eta = kept.eta  # the step size it had there: the one that ruined it may be why we rewind
        forget_kept_after(self.run_dir.checkpoint, kept.batch)
        self._finite_states = deque((s for s in self._finite_states if s[1] <= kept.batch), maxlen=FINITE_STATES_KEPT)
        self._went_on_from(kept.batch)
        return {"event": [self.batch, "rewound"], "rewound_from": went_from, **self._fresh_reports()}

    def reinit(self, seed: int | None) -> dict:
        """Start the net afresh from a seed (the run's own by default), keeping the batch count and history."""
        config = RunConfig(**{**self.config.__dict__, "seed": self.config.seed if seed is None else seed})
        self.net.set_state_from_vector(build_network(config).state_vector())
        self.net.eta = config.eta  # the starting step size, as for a new run
        self._finite_states.clear()
        self._went_on_from(self.batch)
        return {"event": [self.batch, "reinit"], "seed": config.seed, **self._fresh_reports()}

    def _went_on_from(self, batch: int) -> None:
        """The run goes on from batch with new parameters, as a new generation."""
        self.gen += 1
        self.out.gen = self.gen  # stamped on every record written from here on
        self.batch = batch
        self.paused = False
        self.loss = self.net.losses([self.next_batch()])[0]
        self._window = _Window()
        self._schedule_reports()
        self._pace_from = (batch, time.monotonic())

    def _fresh_reports(self) -> dict:
        """A loss report and a state report of the parameters just set, for the line that says what happened."""
        return {**loss_report(self.batch, self.loss), **self.state_report()}

    # -- the loop ------------------------------------------------------------------------

    def run_loop(self) -> None:
        self.checkpoint(time.monotonic())
        started = {"event": [self.batch, "started"], "pid": os.getpid(), "resumed_from": self.resumed_from, "by": self.started_by}
        self.report_loss(time.monotonic(), {**started, **self.state_report()})
        self.apply_commands()
        self._answers_from = None  # from here on, fresh answers start at the run file's end
        while not self.done:
            now = time.monotonic()
            check_at = now + CONTROL_CHECK_S
            limit = self._pace_limit(now)
            if self.batch < limit and not self.paused:
                self.train(limit, check_at)
                now = time.monotonic()
                if not math.isfinite(self.loss):
                    self.on_divergence(now)  # before anything else: no checkpoint may hold these parameters
                elif self.batch == self.target:
                    self.report_loss(now, {"event": [self.batch, "target_reached"]})
                    self.checkpoint(now)  # the worker idles now: a crash while idle costs nothing
            else:
                # Idle, or paced: cheap, and still answers within CONTROL_CHECK_S.
                due = check_at if self.batch >= self.target or self.paused else min(check_at, self._pace_due())
                time.sleep(max(0.0, due - now))
                now = time.monotonic()
            self.apply_commands()
            since_report = now - self._last_loss_report
            if now >= self._next_ownership_check:
                self.check_still_owned()
                self._next_ownership_check = now + OWNERSHIP_CHECK_S
            if (self.loss_is_new() and since_report >= LOSS_MIN_INTERVAL_S) or since_report >= HEARTBEAT_S:
                self.report_loss(now)
            if (self.pace and now - self._last_state_report >= PACED_STATE_EVERY_S and self._n_params <= DENSE_STATE_MAX_PARAMS
                    and self.batch != self._paced_state_batch):
                self._paced_state_batch = self.batch
                self.out.write(self.state_report())
            if now - self._last_checkpoint >= CHECKPOINT_EVERY_S and self.batch != self._checkpointed_batch:
                self.checkpoint_shown(now)

    def train(self, limit: int, check_at: float) -> None:
        """Train flat out up to batch limit or until check_at, reporting what the batch schedules ask for.

        Runs of up to CHUNK batches end at the limit and at the next scheduled report; nothing else
        runs per batch but the window's running min, max and sum.
        """
        learn, next_batch, window = self.net.learn_one, self.next_batch, self._window
        batch, now = self.batch, time.monotonic()
        lo, lo_at, hi, hi_at, total = window.lo, window.lo_at, window.hi, window.hi_at, window.total
        while batch < limit and now < check_at:
            state_at = self._next_state_at or limit
            end = min(limit, self._next_loss_at, state_at, batch + CHUNK)
            for at in range(batch + 1, end + 1):
                loss = learn(*next_batch())
                total += loss
                if loss < lo:
                    lo, lo_at = loss, at
                if loss > hi:
                    hi, hi_at = loss, at
            window.n += end - batch
            batch = self.batch = end
            self.loss = loss
            window.lo, window.lo_at, window.hi, window.hi_at, window.total = lo, lo_at, hi, hi_at, total
            if batch == self._next_loss_at:
                self.report_loss(time.monotonic())
                window = self._window
                lo, lo_at, hi, hi_at, total = window.lo, window.lo_at, window.hi, window.hi_at, window.total
            if batch == state_at and self._next_state_at is not None:
                self.out.write(self.state_report())
                self._next_state_at = next_state_report(batch, self.report_every, self._n_params)
            now = time.monotonic()

    def _pace_limit(self, now: float) -> int:
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

    def check_still_owned(self) -> None:
        """Raise Orphaned when worker.lock is no longer the file we lock: the run was deleted or made anew."""
        try:
            same = os.stat(self.run_dir.worker_lock).st_ino == self.lock_inode
        except FileNotFoundError:
            same = False
        if not same:
            raise Orphaned(f"{self.run_dir.path} was deleted or replaced")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self.run_loop()
            self.checkpoint_shown(time.monotonic())
        except Orphaned as err:
            # Its files now belong to someone else, or to no one: touch nothing, just go.
            print(f"nnobs worker {os.getpid()}: {err}; exiting without writing", file=sys.stderr, flush=True)
            return 0
        except Exception as err:
            traceback.print_exc()
            self.out.write({"event": [self.batch, "error"], "error": f"{type(err).__name__}: {err}"})
            self.out.close()
            return 1
        self.report_loss(time.monotonic(), {"event": [self.batch, "shutdown"]})
        self.out.close()  # every record has landed before the process, and its lock, are gone
        return 0

    def _on_signal(self, signum: int, frame) -> None:
        self.done = True


class _Window:
    """The losses since the last loss report: how many, their min and max with their batches, and their sum."""

    __slots__ = ("n", "lo", "lo_at", "hi", "hi_at", "total")

    def __init__(self):
        self.n, self.lo, self.lo_at, self.hi, self.hi_at, self.total = 0, math.inf, 0, -math.inf, 0, 0.0

    def summary(self) -> tuple | None:
        """(n, min, min_at, max, max_at, mean) for the report, or None when no batch was trained since the last."""
        if not self.n or self.lo_at == 0:  # lo_at 0: no loss compared below inf, all NaN
            return None
        return (self.n, self.lo, self.lo_at, self.hi, self.hi_at, self.total / self.n)


def _answered_since(run_file: Path, offset: int) -> set[str]:
    """Ids of commands answered in the run file after offset."""
    reader = RecordReader(run_file)
    reader.offset = offset
    history = RunHistory()
    history.add_lines(reader.read_new_lines())
    return set(history.answers)


def main(argv: list[str]) -> int:
    run = RunDir(Path(argv[0]))
    lock_fd = take_worker_lock(run)
    if lock_fd is None:
        print(f"nnobs worker {os.getpid()}: another worker holds {run.worker_lock}; exiting", flush=True)
        return 0
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, str(os.getpid()).encode(), 0)
    for stale in leftover_temps(run.checkpoint):
        stale.unlink(missing_ok=True)  # a checkpoint a killed predecessor never finished; only the lock holder writes them
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"nnobs worker {os.getpid()} started {stamp} for {run.path}", flush=True)
    try:
        config = load_config(run.config)
        net, next_batch = build(config)
        worker = Worker(run, net, next_batch, load_checkpoint(run.checkpoint), config, started_by=(argv[1:] or [""])[0])
    except Exception as err:  # a bad config or checkpoint: say so where the page and CLI look, then stop
        traceback.print_exc()
        RecordWriter(run.run_file, gen=None).write({"event": [0, "error"], "error": f"cannot start: {err}"})
        return 1
    code = worker.run()
    print(f"nnobs worker {os.getpid()} exits with {code} at batch {worker.batch}", flush=True)
    return code  # the kernel releases worker.lock as the process ends


if __name__ == "__main__":
    np.seterr(all="ignore")  # a diverging run makes inf and NaN on purpose; the run file says so
    sys.exit(main(sys.argv[1:]))
