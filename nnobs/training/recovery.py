"""Checkpoints and going back: saving the state, resuming from it, rewinding, reinitializing, surviving a divergence."""

from __future__ import annotations

import math
import time
from collections import deque

from nnobs.protocol.checkpoint import (
    KEPT_BYTES,
    MIB,
    Checkpoint,
    State,
    forget_kept_after,
    in_memory,
    keep_checkpoint,
    kept_batches,
    load_checkpoint,
    load_kept,
    save_kept,
    state_bytes,
    write_checkpoint,
)
from nnobs.protocol.control import ControlWatcher
from nnobs.protocol.errors import CommandError, NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.schema import loss_report
from nnobs.protocol.slot import tell_log
from nnobs.training.budget import CostBudget
from nnobs.training.disk_guard import DiskGuard
from nnobs.training.ownership import Ownership
from nnobs.training.placer import CheckpointPlacer
from nnobs.training.reporter import Reporter
from nnobs.training.schedule import DENSE_STATE_MAX_PARAMS, next_kept_checkpoint
from nnobs.training.state import RunState
from nnobs.training.trainer import Trainer
from nnobs.training.window import Window

CHECKPOINT_EVERY_S = 3.0  # the most training a crash can cost, where a checkpoint is cheap
CHECKPOINT_SHARE = 0.005  # of the run's time spent on the clock's checkpoints: a costly one comes less often
KEPT_SHARE = 0.01  # of the run's time spent keeping checkpoints by the batch schedule (the clock's are not thinned)
KEPT_BURST_S = 0.2  # seconds of it a run may spend at once: a fast run's first decades come in under a second
FINITE_STATES_KEPT = 4  # checkpoints to choose from when the loss diverges: a blow-up takes milliseconds, they 3 s
# Up to this many bytes, each of those is held in memory; a larger one is read back from checkpoint.npz, the newest
# finite one: a large model's four copies would cost more memory than training it.
FINITE_STATE_MOST_BYTES = 32 * 1024 * 1024
# From this size on, a checkpoint is synced and put in place on a thread of its own (placer.py), and its file is made
# ready halfway to it: a small one's sync takes milliseconds, less than the handing over would.
PLACED_APART_BYTES = 4 * 1024 * 1024


class Recovery:
    """A run's checkpoints, and the finite parameters of the latest ones, to go back to."""

    def __init__(
        self,
        run: RunState,
        reporter: Reporter,
        disk: DiskGuard,
        ownership: Ownership,
        control: ControlWatcher,
        placer: CheckpointPlacer,
        answers_from: int | None,
        kept_bytes: int = KEPT_BYTES,
    ):
        self.run = run
        self.reporter = reporter
        self.disk = disk
        self.ownership = ownership
        self.control = control
        self.placer = placer
        # Until this generation has looked at the control file once, its checkpoints keep the last one's
        # run offset: answers given after it must still be known to a successor if we die now. None: the run file's end.
        self.answers_from = answers_from
        # (loss, batch, saved state) of the latest checkpoints with finite numbers, to go back to on divergence; a
        # state too large to hold in memory is None: checkpoint.npz holds it
        self.finite_states: deque[tuple[float, int, State | None]] = deque(maxlen=FINITE_STATES_KEPT)
        self.last_checkpoint = 0.0  # monotonic time
        self.checkpoint_took = 0.0  # seconds the last one held training: a framework's own checkpoint can take a tenth
        self.checkpointed_batch = -1
        # the next batch whose checkpoint is kept, by the schedule
        self.next_kept_at = next_kept_checkpoint(run.batch, reporter.n_params)
        self.started_at = time.monotonic()  # this generation's start: a large net keeps none by the schedule at first
        self.kept_budget = CostBudget(KEPT_SHARE, KEPT_BURST_S)
        self.kept_bytes = kept_bytes  # what the kept checkpoints may take on disk, all told
        # The size of the last checkpoint written, one larger than the budget is not kept; before the first, what the
        # parameters alone take as float32
        self.checkpoint_bytes = 4 * reporter.n_params

    def checkpoint_when_due(self, now: float) -> None:
        """checkpoint_shown(), every CHECKPOINT_EVERY_S while the batch moves on, or less often where checkpoints
        cost more than CHECKPOINT_SHARE of that; a large one's file made ready halfway to it."""
        self.placer.settle(wait=False)
        every = max(CHECKPOINT_EVERY_S, self.checkpoint_took / CHECKPOINT_SHARE)
        halfway = now - self.last_checkpoint >= every / 2
        if halfway and self.checkpoint_bytes >= PLACED_APART_BYTES and not self.placer.preparing:
            self.placer.prepare(max(self.checkpoint_bytes, self.run.trainer.saved_bytes() or 0))
        if now - self.last_checkpoint >= every and self.run.batch != self.checkpointed_batch:
            self.checkpoint_shown(now)

    def checkpoint_shown(self, now: float) -> None:
        """Checkpoint a batch the run file already shows: a successor never resumes past what readers saw."""
        if self.run.batch != self.reporter.last_reported_batch:
            self.reporter.report_loss(now)
        self.checkpoint(now)

    def checkpoint(self, now: float) -> None:
        """Save the state; a failure (a full disk, say) is reported and tried again later, never fatal. A large one
        goes into place on the placer's thread, once training has gone on (settle() waits for it)."""
        run = self.run
        self.ownership.check_still_owned()  # never write into a directory that is no longer this run's
        self.last_checkpoint = now
        started = time.perf_counter()
        self.placer.settle()  # the one before lands first: checkpoints go into place in the order they are taken
        if not run.trainer.all_finite():
            return  # parameters no one can go on from: the checkpoint before them stays
        if not self.disk.room_for_checkpoint():
            self.disk.check(now)  # pauses, and says so: a checkpoint would take the disk below its floor
            return
        try:
            saved = run.trainer.save()
        except Exception as err:  # a framework's own save that fails: said, tried again later, never fatal
            run.out.write({"event": [run.batch, EventKind.CHECKPOINT_ERROR], "error": f"{type(err).__name__}: {err}"})
            self.checkpoint_took = time.perf_counter() - started
            return
        run.out.flush()  # every answer given so far is on disk before the checkpoint says so
        ckpt = self.checkpoint_of(saved)
        self.ownership.check_still_owned()  # again, just before writing: the save above can take a while
        apart = self.checkpoint_bytes >= PLACED_APART_BYTES
        try:
            # Held now, while the tensors are those of this batch: what to go back to if the loss diverges
            finite = self.finite_copy(saved)
            written = write_checkpoint(run.run_dir.checkpoint, ckpt, self.placer.take_prepared() if apart else None)
            if apart:
                self.placer.place(written, lambda error: self.placed(ckpt, finite, written.size, error))
            else:
                written.sync_into_place()
        except OSError as err:
            run.out.write({"event": [run.batch, EventKind.CHECKPOINT_ERROR], "error": str(err)})
            return
        except Exception as err:  # a state streamed as written that cannot be (an object torch.save refuses)
            run.out.write({"event": [run.batch, EventKind.CHECKPOINT_ERROR], "error": f"{type(err).__name__}: {err}"})
            return
        finally:
            self.checkpoint_took = time.perf_counter() - started
        if not apart:
            self.placed(ckpt, finite, written.size, None)

    def placed(self, ckpt: Checkpoint, finite: State | None, size: int, error: OSError | None) -> None:
        """ckpt is in place at checkpoint.npz (size bytes), or failed to get there; finite: its state, as held to go
        back to (None: checkpoint.npz holds it)."""
        run, batch = self.run, ckpt.batch
        if error is not None:
            run.out.write({"event": [batch, EventKind.CHECKPOINT_ERROR], "error": str(error)})
            return
        self.checkpoint_bytes = size
        try:
            keep_checkpoint(run.run_dir.checkpoint, batch, self.kept_bytes)  # to rewind to, later
        except OSError as err:
            run.out.write({"event": [batch, EventKind.CHECKPOINT_ERROR], "error": str(err)})
            return
        self.checkpointed_batch = batch
        if ckpt.state:  # one saved before any loss was logged ranks last, but is there to go back to
            if finite is None:  # only the newest is on disk: the older ones are gone with it
                self.finite_states.clear()
            self.finite_states.append((math.inf if ckpt.loss is None else ckpt.loss, batch, finite))

    def stop_before(self, limit: int) -> int:
        """The batch the loop may train up to (limit at most) before the next checkpoint the schedule keeps."""
        if self.next_kept_at <= self.run.batch:
            # left behind by a pause or a command
            self.next_kept_at = next_kept_checkpoint(self.run.batch, self.reporter.n_params)
        return min(limit, self.next_kept_at)

    def keep_when_due(self, now: float) -> None:
        """Keep a checkpoint at a batch the schedule picks, within the budget: it is what rewinds and forks land on."""
        run = self.run
        if run.batch < self.next_kept_at:
            return
        self.next_kept_at = next_kept_checkpoint(run.batch, self.reporter.n_params)
        if self.reporter.n_params > DENSE_STATE_MAX_PARAMS and now - self.started_at < CHECKPOINT_EVERY_S:
            # A large net's checkpoint costs a millisecond and more: three in a fast 10^5-parameter net's first second
            # took 1.2 % of it. A rewind there lands on the start's checkpoint or the clock's first, 3 s in.
            return
        if not run.trainer.can_load or self.checkpoint_bytes > self.kept_bytes or not self.kept_budget.allows(now):
            return  # a checkpoint no one can load is nothing to go back to; one larger than the budget is not kept
        with self.kept_budget.charged():
            try:
                if run.trainer.all_finite() and self.disk.room_for_checkpoint():
                    saved = run.trainer.save()
                    if saved:  # not remembered for a divergence: mid blow-up, one batch's loss can look good
                        # checked just before writing: never into a directory that is no longer this run's
                        self.ownership.check_still_owned()
                        save_kept(run.run_dir.checkpoint, self.checkpoint_of(saved), self.kept_bytes)
            except OSError as err:
                run.out.write({"event": [run.batch, EventKind.CHECKPOINT_ERROR], "error": str(err)})

    def checkpoint_of(self, saved: State) -> Checkpoint:
        """The checkpoint of the run as it is, holding what the trainer saved."""
        run = self.run
        known = run.loss is not None and math.isfinite(run.loss)
        return Checkpoint(
            batch=run.batch,
            eta=run.trainer.eta,
            target=run.target,
            report_every=run.report_every,
            pace=run.pacer.pace,
            gen=run.gen,
            last_seq=self.control.last_seq,
            control_id=self.control.file_id,
            run_offset=self.answers_from if self.answers_from is not None else run.out.size(),
            min_free_mb=self.disk.min_free_mb,
            state=saved,
            loss=run.loss if known else None,
        )

    def finite_copy(self, saved: State) -> State | None:
        """saved (finite parameters) as held in memory to go back to if the loss diverges; None for a large state (as
        large as the last checkpoint): checkpoint.npz, the newest finite one, holds it."""
        held = state_bytes(saved)
        if held is None and self.checkpoint_bytes <= FINITE_STATE_MOST_BYTES:
            return in_memory(saved)  # streamed, but small: held as its bytes
        return saved if held is not None and held <= FINITE_STATE_MOST_BYTES else None

    def on_divergence(self, now: float) -> None:
        """Stop training and go back to the best recent finite parameters: a net full of NaN cannot learn its way back."""
        run = self.run
        run.paused = True
        self.placer.settle()  # the newest finite checkpoint may be on its way to checkpoint.npz
        detail = "the loss is no longer a number; training paused until eta changes"
        if self.finite_states and run.trainer.can_load:
            # The lowest loss, not the latest: a checkpoint can catch the blow-up while it is still finite.
            _, finite_batch, saved = min(self.finite_states, key=lambda kept: kept[0])
            if saved is None:
                try:
                    on_disk = load_checkpoint(run.run_dir.checkpoint)
                except NnobsError as err:
                    on_disk = None
                    detail += f"; {err}"
                saved = on_disk.state if on_disk is not None else None
            if saved is not None:
                run.trainer.load(in_memory(saved))
                detail += f"; parameters back to those of batch {finite_batch:,}"
        elif run.trainer.can_load:
            detail += "; no finite parameters to go back to: move checkpoint.npz away to start afresh"
        self.reporter.report_loss(now, {"event": [run.batch, EventKind.DIVERGED], "error": detail})

    def rewind(self, batch: int) -> dict:
        """Go back to the newest kept checkpoint at or before batch, as a new generation; the records saying so."""
        run = self.run
        if not run.trainer.can_load:
            raise CommandError(
                "cannot rewind: this run's script gives no way to load a checkpoint (see nnobs.Run's load)"
            )
        self.placer.settle()  # the newest checkpoint is kept once in place
        try:
            kept = load_kept(run.run_dir.checkpoint, batch)
        except NnobsError as err:
            raise CommandError(f"cannot rewind: {err}") from err
        if kept is None:
            batches = ", ".join(f"{b:,}" for b in kept_batches(run.run_dir.checkpoint)) or "none"
            raise CommandError(f"no checkpoint is kept at or before batch {batch:,} (kept: {batches})")
        went_from = run.batch
        try:
            run.trainer.load(in_memory(kept.state))
        except ValueError as err:
            raise CommandError(
                f"cannot rewind: the checkpoint at batch {kept.batch:,} does not fit this net ({err})"
            ) from err
        run.trainer.eta = kept.eta  # the step size it had there: the one that ruined it may be why we rewind
        forget_kept_after(run.run_dir.checkpoint, kept.batch)
        self.finite_states = deque((s for s in self.finite_states if s[1] <= kept.batch), maxlen=FINITE_STATES_KEPT)
        self.went_on_from(kept.batch, or_else(run.trainer.loss_now(), kept.loss))
        return {"event": [run.batch, EventKind.REWOUND], "rewound_from": went_from, **self.fresh_reports()}

    def exploit(self, donor: str, batch: int, eta: float) -> dict:
        """Take donor's checkpoint at batch (linked into this run's exploits folder) in place, with eta: population-
        based training's exploit. The batch count stays this run's; the records saying so."""
        run = self.run
        if not run.trainer.can_load:
            raise CommandError(
                "cannot exploit: this run's script gives no way to load a checkpoint (see nnobs.Run's load)"
            )
        path = run.run_dir.exploit_file(donor, batch)
        # A checkpoint of a run of the same net is about as large as this run's own: one declaring far more is none
        # of the population's, and is refused before its arrays are read.
        most_state_bytes = 2 * self.checkpoint_bytes + MIB
        try:
            ckpt = load_checkpoint(path, most_state_bytes)
        except (NnobsError, MemoryError) as err:
            raise CommandError(f"cannot exploit {donor}'s checkpoint at batch {batch:,}: {err}") from err
        if ckpt is None:
            raise CommandError(f"no checkpoint of {donor} at batch {batch:,} is in {path.parent}")
        try:
            run.trainer.load(in_memory(ckpt.state))
        except ValueError as err:
            raise CommandError(f"cannot exploit: {donor}'s checkpoint does not fit this net ({err})") from err
        eta_before, run.trainer.eta = run.trainer.eta, eta
        self.finite_states.clear()
        self.went_on_from(run.batch, or_else(run.trainer.loss_now(), ckpt.loss), schedule_at=False)
        exploited = {"from": donor, "batch": ckpt.batch, "eta": [eta_before, eta]}
        return {"event": [run.batch, EventKind.EXPLOITED], "exploited": exploited, **self.fresh_reports()}

    def reinit(self, seed: int | None) -> dict:
        """Start the net afresh from a seed (the run's own by default), keeping the batch count and history."""
        run = self.run
        used = run.trainer.reinit(seed)
        self.finite_states.clear()
        self.went_on_from(run.batch, run.trainer.loss_now(), schedule_at=False)
        return {"event": [run.batch, EventKind.REINIT], "seed": used, **self.fresh_reports()}

    def went_on_from(self, batch: int, loss: float | None, schedule_at: bool = True) -> None:
        """The run goes on from batch with new parameters, as a new generation; its eta schedule's steps from there
        (the one at batch itself too when schedule_at: a rewind goes back to before it was taken) are to come."""
        run = self.run
        run.eta_steps = steps_after(run.eta_schedule, batch, schedule_at)
        run.gen += 1
        run.out.gen = run.gen  # stamped on every record written from here on
        run.batch = batch
        run.paused = False
        run.loss = loss
        run.window = Window()
        self.reporter.forget_states()
        self.reporter.schedule()
        self.next_kept_at = next_kept_checkpoint(batch, self.reporter.n_params)
        run.pacer.restart(batch, time.monotonic())

    def fresh_reports(self) -> dict:
        """A loss report and a state report of the parameters just set, for the line that says what happened."""
        run = self.run
        loss = {} if run.loss is None else loss_report(run.batch, run.loss)
        return {**loss, **self.reporter.state_report()}


def resume_trainer(trainer: Trainer, ckpt: Checkpoint) -> None:
    """Give the trainer back what the checkpoint holds of it, and the step size it had."""
    if ckpt.state and trainer.can_load:
        try:
            trainer.load(in_memory(ckpt.state))
        except ValueError as err:
            raise NnobsError(
                f"the checkpoint does not fit this run's net ({err}); move checkpoint.npz away to start afresh"
            ) from err
    elif ckpt.state:
        tell_log(
            "nnobs: this run's net cannot load a checkpoint: the batch count and settings go on, the net starts afresh"
        )
    trainer.eta = ckpt.eta


def steps_after(schedule: list | None, batch: int, at: bool) -> list[tuple[int, float]]:
    """An eta schedule's steps still to come after batch (at batch too, when at)."""
    return [(b, eta) for b, eta in schedule or [] if b > batch or (at and b == batch)]


def or_else(value: float | None, fallback: float | None) -> float | None:
    """value, or fallback when value is None."""
    return fallback if value is None else value
