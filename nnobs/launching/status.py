"""A run's status: whether its worker lives (its launcher's word), joined with what its run file and status slot say."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

from nnobs.protocol.events import EventKind
from nnobs.protocol.files import read_text
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_finite, number
from nnobs.protocol.rundir import RunDir, is_followed, is_imported, unsafe_files
from nnobs.protocol.schema import SYSTEM_METRIC, system_names
from nnobs.protocol.slot import read_slot
from nnobs.protocol.states import STALL_AFTER_S
from nnobs.reading.history import Rise, RunHistory

LR_METRIC = "lr"  # the metric a trainer whose schedule scales eta reports the learning rate in use as
START_FAILED = "start-failed.json"  # in the run directory: why its last start ended before the worker began
START_FAILED_MOST_BYTES = 64 << 10  # a message and a log's tail


@dataclass
class RunStatus:
    """What `status` reports: the run's state and latest values."""

    run: str
    state: str  # training, idle, stalled (alive but silent), stopped, crashed, failed to start, imported or absent
    batch: int
    target: int | None
    eta: float | None
    report_every: int | None
    pace: float | None  # at most this many batches a second; 0 or None: flat out
    loss: float | None  # the mean loss of the newest RECENT_BATCHES batches or more: one minibatch's is noise
    best_loss: float | None  # the lowest that mean has been in the run's current line of training
    generation: int | None
    pid: int | None
    heartbeat_age_s: float | None
    diverged: bool
    not_learning: bool  # alive, but the loss stopped moving far above its best
    free_bytes: int | None  # free space on the run's filesystem, when the worker paused for it (low disk)
    write_error: str  # why the live worker cannot write, e.g. "cannot write run.jsonl: no space left on device"
    error: str  # the last error event's message, if the last generation ended in one
    skipped_lines: int  # lines of the run file that were not records (torn by a crash, or garbage)
    launcher: str = "local"  # local or slurm
    job_id: str | None = None  # on Slurm: the run's job
    job_state: str | None = None  # on Slurm: the scheduler's state of it (PENDING, RUNNING, CANCELLED...)
    reason: str = ""  # on Slurm: why the job waits (Slurm's reason), or why it ended
    unsafe: str = ""  # links or other non-files where run files should be: named, never followed
    batch_loss: float | None = None  # the newest report's loss: one minibatch's
    evaluations: dict[str, list] = field(default_factory=dict)  # metric name -> [batch it was made at, value]
    rose: str = ""  # alive, and its loss rose by a large factor after a command: how, in words
    lr: float | None = None  # the learning rate in use at the newest report, where a schedule scales eta (its base)
    system: dict[str, float] = field(default_factory=dict)  # the worker's machine at its newest sample: cpu, rss_mb...

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def label(self) -> str:
        """The state in the words the page's badge and the CLI both use: a diverged or stuck run says so."""
        if self.state in ("training", "idle") and self.diverged:
            return "diverged"
        if self.state in ("training", "idle") and self.not_learning:
            return "not learning"  # the page's problem says after which command, when the loss rose after one
        if self.state in ("training", "idle") and self.rose:
            return "loss rose"
        return self.state


def status_of(run: RunDir, history: RunHistory, now: float, pid: int | None) -> RunStatus:
    """Combine liveness (pid: None when no worker lives, -1 alive with no pid to give) with what the run file says,
    and what the worker's slot says when it cannot write."""
    last = history.last_lifecycle
    slot = read_slot(run.status_file)
    own_slot = pid is not None and pid > 0 and slot.get("pid") == pid
    last_t = max(history.last_t or 0.0, slot.get("t") or 0.0) if own_slot else history.last_t  # both beat
    age = None if not last_t else max(0.0, now - last_t)
    low_disk = slot.get("low_disk") if own_slot and isinstance(slot.get("low_disk"), dict) else None
    write_error = str(slot.get("write_error", "")) if own_slot else ""
    error = last.detail if last is not None and last.kind == EventKind.ERROR else ""
    if pid is not None and _silent_since_start(run, age, now):
        state = "stalled"
    elif write_error:
        state = "cannot write"
    elif low_disk:
        state = "low disk"
    elif pid is not None and is_followed(run):
        state = "following"
    elif pid is not None:
        # A diverged worker waits for a new eta: it is not training, whatever its target.
        at_rest = history.diverged or (history.target is not None and history.batch >= history.target)
        state = "idle" if at_rest else "training"
    elif not run.path.is_dir():
        state = "absent"
    elif failure := start_failure(run, history):
        state, error = "failed to start", failure
    elif is_imported(run):
        state = "imported"
    elif last is None or last.kind == EventKind.SHUTDOWN:
        state = "stopped"
    elif slot.get("ended") == EventKind.SHUTDOWN and slot.get("gen") == history.gen:
        state = "stopped"  # shut down cleanly, but the disk took no shutdown record
        error = "shut down cleanly, but its shutdown record could not be written"
    else:
        state = "crashed"
        if slot.get("ended") == EventKind.ERROR and slot.get("gen") == history.gen and not error:
            error = str(slot.get("error", ""))
    return RunStatus(
        run=run.name,
        state=state,
        batch=history.batch,
        target=history.target,
        eta=history.eta,
        report_every=history.report_every,
        pace=history.pace,
        loss=history.loss,
        best_loss=history.best_loss,
        generation=history.gen,
        pid=pid if pid and pid > 0 else None,
        heartbeat_age_s=None if age is None else round(age, 3),
        diverged=history.diverged,
        not_learning=state in ("training", "idle") and history.not_learning,
        free_bytes=low_disk.get("free") if low_disk else None,
        write_error=write_error,
        error=error,
        skipped_lines=history.skipped_lines,
        unsafe="; ".join(unsafe_files(run)),
        batch_loss=history.batch_loss,
        evaluations=evaluations_of(history),
        rose=rise_words(history.rose) if history.rose is not None and state in ("training", "idle") else "",
        lr=lr_in_use(history),
        system=system_of(history),
    )


def scheduled_lr(eta: float | None, lr: float | None) -> float | None:
    """The learning rate in use where a schedule makes it other than eta (beyond float32's rounding); else None."""
    if lr is None or eta is None or math.isclose(lr, eta, rel_tol=1e-6):
        return None
    return lr


def lr_in_use(history: RunHistory) -> float | None:
    """The learning rate the trainer stepped with at its newest report (its "lr" metric), when it says."""
    series = history.metrics.get(LR_METRIC)
    return None if series is None or series.latest is None or not is_finite(series.latest[1]) else series.latest[1]


def rise_words(rise: Rise) -> str:
    """A rise in words: "the loss rose by a factor of 29 after eta 500 (batch 4,000): from 0.015 to 0.43"."""
    return (
        f"the loss rose by a factor of {rise.now / rise.before:,.0f} after {rise.command} (batch {rise.batch:,}): "
        f"from {rise.before:.3g} to {rise.now:.3g}"
    )


def evaluations_of(history: RunHistory) -> dict[str, list]:
    """Each metric's newest value with the batch it was made at ({"test_loss": [1, 0.553]}): an evaluation made
    long ago is never read as the run's current one. The machine's figures are the system's."""
    return {
        name: list(series.latest)
        for name, series in history.metrics.items()
        if series.latest is not None
        and is_finite(series.latest[1])  # status --json stays strict JSON
        and not name.startswith(SYSTEM_METRIC)
    }


def system_of(history: RunHistory) -> dict[str, float]:
    """The worker's machine at its newest sample ({"cpu": 99.5, "rss_mb": 212.0, "gpu0.util": 63.0, ...})."""
    latest = {name: history.metrics[name].latest for name in system_names(history.metrics)}
    return {
        name.removeprefix(SYSTEM_METRIC): value[1]
        for name, value in latest.items()
        if value is not None and is_finite(value[1])
    }


def start_failure(run: RunDir, history: RunHistory) -> str:
    """Why the run's last start failed (its error, the end of its log), or "" when it did not, or when the run wrote
    records since (a script started again by hand)."""
    try:
        failure = parse_json(read_text(run.path / START_FAILED, START_FAILED_MOST_BYTES))
    except (OSError, ValueError):  # none: the usual case; unreadable or a link: no verdict rests on it
        return ""
    if not isinstance(failure, dict) or not isinstance(failure.get("error"), str):
        return ""
    failed_at = number(failure.get("t")) or 0.0
    return "" if history.last_t is not None and history.last_t > failed_at else failure["error"]


def _silent_since_start(run: RunDir, heartbeat_age: float | None, now: float) -> bool:
    """True when the live worker has written nothing for STALL_AFTER_S, and started longer ago than that.

    The worker writes its pid into worker.lock as it starts, so the file's mtime dates the start:
    the last generation's old heartbeat does not count against a worker that is still starting.
    """
    if heartbeat_age is None or heartbeat_age <= STALL_AFTER_S:
        return False
    try:
        return now - os.stat(run.worker_lock).st_mtime > STALL_AFTER_S
    except FileNotFoundError:
        return False
