"""The ranks of a distributed job (torchrun, DistributedDataParallel) as one run: rank 0 leads, the others follow.

Every rank opens the same nnobs.Run the same way. Rank 0 holds the run as a single process would: it writes the run
file, reads the control file, paces, checkpoints. At each of its stops (CONTROL_CHECK_S apart at most) it decides what
every rank does next (train up to batch N, wait, or end; with which eta; with new parameters after a resume, rewind,
reinit or a diverged loss) and shares that through the job's own process group: one broadcast of six numbers, and
the parameters only when they changed. After each run of batches every rank's losses are gathered (one all-gather of
twelve numbers, a rank's machine figures among them), so that the loss shown is the mean over ranks and its extremes are every rank's. A rank that dies
breaks the next collective on the others, which end with its error; torchrun ends the job.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from nnobs.protocol.checkpoint import State, in_memory
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.schema import SYSTEM_METRIC
from nnobs.training.system import SystemSampler
from nnobs.training.trainer import Trainer
from nnobs.training.window import Window

# What rank 0 decided: train up to a batch, wait (paused, paced, at the target) and ask again, or end.
TRAIN, WAIT, END, FAILED = 0.0, 1.0, 2.0, 3.0
LOSS_FIELDS = 7  # a rank's losses of a run of batches: n, total, min, its batch, max, its batch, the latest
SAMPLED = ("cpu", "rss_mb", "gpu0.util", "gpu0.mem_mb", "gpu0.temp_c")  # a rank's machine, beside its losses
NO_SAMPLE = [math.nan] * len(SAMPLED)
# Rank 0's stops, each a broadcast and an all-gather that every rank waits for, come at most as often as keeps their
# time within this share of the job's (gloo on one machine: about 1.3 ms a stop, so STOP_MOST_S apart; NCCL's, far
# less), and no further apart than STOP_MOST_S, which commands then take at most to land. The batch schedule's stops
# (loss reports, snapshots, checkpoints) come on top: at 2 % a two-rank job ran at 0.94 to 0.99 of its bare speed.
COLLECTIVES_SHARE = 0.005
STOP_MOST_S = 0.25


class RankLost(NnobsError):
    """A collective of the job failed: another rank died or stopped answering."""


class JobGroup:
    """The job's process group (torch.distributed), and the few collectives the ranks of a run need."""

    def __init__(self, dist: Any):
        import torch  # torch.distributed is initialized: torch is there

        self.dist, self.torch = dist, torch
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        # NCCL moves CUDA tensors only; gloo, CPU ones.
        on_gpu = dist.get_backend() == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")

    @property
    def leads(self) -> bool:
        return self.rank == 0

    def share(self, values: list[float]) -> list[float]:
        """Rank 0's values, on every rank (the others' values are ignored)."""
        shared = self.torch.tensor(values, dtype=self.torch.float64, device=self.device)
        self._collective(self.dist.broadcast, shared, 0)
        return shared.tolist()

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every rank's values, in rank order, on every rank."""
        mine = self.torch.tensor(values, dtype=self.torch.float64, device=self.device)
        every = [self.torch.empty_like(mine) for _ in range(self.size)]
        self._collective(self.dist.all_gather, every, mine)
        return [row.tolist() for row in every]

    def share_object(self, value: Any) -> Any:
        """Rank 0's object (parameters saved by its trainer), on every rank."""
        box = [value]
        self._collective(self.dist.broadcast_object_list, box, 0, None, self.device)
        return box[0]

    def _collective(self, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except RuntimeError as err:  # gloo and NCCL say a lost peer this way
            raise RankLost(
                f"rank {self.rank} lost the job's other ranks (one died, or stopped answering): {err}"
            ) from err


def job_group() -> JobGroup | None:
    """The job's process group when this process is one rank of several; None when it runs alone."""
    dist = sys.modules.get("torch.distributed")  # never imported here: a numpy script has no torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        return JobGroup(dist) if dist.get_world_size() > 1 else None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        raise NnobsError(
            "nnobs.Run in a job of several ranks (WORLD_SIZE is set): call torch.distributed.init_process_group() "
            "before the run starts, so that its ranks can be steered as one"
        )
    return None


class SharedTrainer(Trainer):
    """Rank 0's trainer, counting the times its parameters are set from outside training (a resume, a rewind, a
    reinit, a diverged loss's way back): the other ranks then take the same parameters."""

    def __init__(self, inner: Trainer):
        self.inner = inner
        self.changes = 0

    def __getattr__(self, name: str) -> Any:  # what a particular trainer has besides the interface
        return getattr(self.inner, name)

    @property
    def tensors(self):  # noqa: ANN201
        return self.inner.tensors

    @property
    def eta(self) -> float:
        return self.inner.eta

    @eta.setter
    def eta(self, value: float) -> None:
        self.inner.eta = value

    @property
    def lr_in_use(self) -> float | None:
        return self.inner.lr_in_use

    @property
    def can_load(self) -> bool:  # type: ignore[override]
        return self.inner.can_load

    def state_vector(self) -> np.ndarray:
        return self.inner.state_vector()

    def moments(self) -> np.ndarray:
        return self.inner.moments()

    def values_at(self, picks: list[np.ndarray]) -> list[np.ndarray]:
        return self.inner.values_at(picks)

    def all_finite(self) -> bool:
        return self.inner.all_finite()

    def save(self) -> State:
        return self.inner.save()

    def load(self, saved: dict[str, np.ndarray]) -> None:
        self.inner.load(saved)
        self.changes += 1

    def reinit(self, seed: int | None) -> int:
        used = self.inner.reinit(seed)
        self.changes += 1
        return used

    def loss_now(self) -> float | None:
        return self.inner.loss_now()

    def dead_units(self) -> list[int] | None:
        return self.inner.dead_units()


class Leader:
    """Rank 0's side: shares its decisions and gathers the other ranks' losses."""

    def __init__(self, group: JobGroup, trainer: SharedTrainer):
        self.group, self.trainer = group, trainer
        self.shared_changes = 0  # the trainer's changes the other ranks have taken
        self.ended = False
        self._chunk_start = (0, 0.0)  # rank 0's window (n, total) as a run of batches began
        self._collectives_s = 0.0  # what a stop's collectives take, smoothed
        self._decided_at = 0.0  # perf_counter time the last decision began its broadcast
        self._decision_s = 0.0  # what that broadcast took

    def started(self, session: Any | None) -> None:
        """Say whether the run started here (session None: it did not): the other ranks wait for it, and raise when it
        did not. A resumed run's state goes with it, for the other ranks to resume from before training begins (a
        framework restores it as its fit starts)."""
        if session is None:
            self.group.share([FAILED, 0, 0, 0, 0, 0])
            return
        self._share(TRAIN, session.batch, 0, session.trainer.eta, session.target)

    def decide(self, batch: int, end: int | None, eta: float, done: bool, target: int) -> None:
        """Share what every rank does next: train up to end, wait (end None), or end (done)."""
        if not self.ended:
            started = time.perf_counter()
            self._share(END if done else WAIT if end is None else TRAIN, batch, end or 0, eta, target)
            self._decision_s = time.perf_counter() - started
            self.ended = done

    def _share(self, kind: float, batch: int, end: int, eta: float, target: int) -> None:
        self.group.share([kind, batch, end, eta, self.trainer.changes, target])
        if self.trainer.changes != self.shared_changes and kind != END:
            self.group.share_object(in_memory(self.trainer.inner.save()))
            self.shared_changes = self.trainer.changes

    def chunk_begins(self, window: Window) -> None:
        self._chunk_start = (window.n, window.total)

    def stop_every(self, least: float) -> float:
        """Seconds between two of rank 0's looks at the clock (and so its decisions): least, or longer where the
        stops' collectives would take more than COLLECTIVES_SHARE of the job's time."""
        return min(STOP_MOST_S, max(least, self._collectives_s / COLLECTIVES_SHARE))

    def merge_losses(self, window: Window, loss: float | None, metrics: dict[str, Window], batch: int) -> float | None:
        """Fold the other ranks' losses of the batches just trained into rank 0's window: each batch's loss the mean
        over ranks, the extremes every rank's. Their machines' figures, when sampled, go to rank 0's metrics as
        system.rankN.*. Returns the mean of the ranks' latest losses."""
        n0, total0 = self._chunk_start
        n = window.n - n0
        started = time.perf_counter()
        rows = self.group.gather([n, window.total - total0, math.inf, 0, -math.inf, 0, math.nan] + NO_SAMPLE)
        took = self._decision_s + time.perf_counter() - started
        self._collectives_s += 0.1 * (took - self._collectives_s)
        for rank, row in enumerate(rows[1:], start=1):
            for name, value in zip(SAMPLED, row[LOSS_FIELDS:]):
                if not math.isnan(value):
                    metrics.setdefault(f"{SYSTEM_METRIC}rank{rank}.{name}", Window()).add(value, batch)
        rows = [row[:LOSS_FIELDS] for row in rows]
        means = [row[1] / row[0] for row in rows if row[0] > 0]
        if n > 0 and means:
            window.total = total0 + n * sum(means) / len(means)
        for _, _, lo, lo_at, hi, hi_at, _ in rows[1:]:
            if lo < window.lo:
                window.lo, window.lo_at = lo, int(lo_at)
            if hi > window.hi:
                window.hi, window.hi_at = hi, int(hi_at)
        lasts = [value for value in [loss] + [row[6] for row in rows[1:] if row[0] > 0] if value is not None]
        return sum(lasts) / len(lasts) if lasts else None


class Follower:
    """A rank other than 0: trains what rank 0 decides, with its eta and parameters, and sends it its losses.

    It writes nothing to the run's directory: the run is rank 0's. What nnobs.Run asks of a session, it answers."""

    def __init__(self, group: JobGroup, trainer: Trainer):
        self.group, self.trainer = group, trainer
        self.batch = self.target = 0
        self.resumed_from: int | None = None
        self.done = False
        self.ending = "shutdown"
        self.loss: float | None = None
        self.window = Window()
        self._changes = 0  # rank 0's trainer changes taken here
        self._system = SystemSampler()  # started with the job's training, stopped at its end

    def begin(self) -> None:
        """Wait for rank 0 to start the run, and take its state when it resumed."""
        if self._take_decision()[0] == FAILED:
            raise NnobsError("rank 0 of this job could not start the run: its error says why")
        self.resumed_from = self.batch if self._changes else None
        self._system.start()

    def _take_decision(self) -> tuple[float, int, int]:
        """Rank 0's next decision (kind, batch, end), its eta, target and parameters taken here."""
        kind, batch, end, eta, changes, target = self.group.share([0.0] * 6)
        if kind == FAILED:
            return kind, 0, 0
        if changes != self._changes and kind != END:
            self.trainer.load(self.group.share_object(None))
            self._changes = int(changes)
        if eta != self.trainer.eta:
            self.trainer.eta = eta
        self.batch, self.target = int(batch), int(target)
        return kind, int(batch), int(end)

    def batches(self, until: int | None = None) -> Iterator[int]:
        """The batches rank 0 decided, in runs between two of its decisions (until: rank 0 decides that too)."""
        while True:
            kind, batch, end = self._take_decision()
            if kind == END:
                self.done = True
                return
            if kind == WAIT:
                continue
            self.window = chunk = Window()
            for number in range(batch + 1, end + 1):
                self.batch = number
                yield number
            last = math.nan if chunk.last is None else chunk.last
            self.group.gather(
                [chunk.n, chunk.total, chunk.lo, chunk.lo_at, chunk.hi, chunk.hi_at, last] + self._sample()
            )

    def _sample(self) -> list[float]:
        """This rank's machine (cpu, rss_mb, gpu0's util, mem_mb, temp_c) about once a second, else NaNs."""
        sampled = self._system.take()
        if sampled is None:
            return NO_SAMPLE
        return [sampled.get(SYSTEM_METRIC + name, math.nan) for name in SAMPLED]

    def log(self, loss: float, metrics: dict | None = None) -> None:
        """This rank's loss of the batch (its metrics are rank 0's to log)."""
        self.loss = loss
        self.window.add(loss, self.batch)

    def log_metrics(self, metrics: dict, at: int) -> None:
        pass  # rank 0's metrics are the run's

    def evaluation_due(self) -> bool:
        return False  # rank 0 evaluates

    def finish(self, error: BaseException | None = None) -> None:
        # rank 0 ends the run; an error here breaks its next collective, and it ends with one too
        self._system.stop()
