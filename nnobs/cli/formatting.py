"""What the command prints: a run's status as text, the table of runs, and what a start gave, in words."""

from __future__ import annotations

import os

from nnobs.launching.lifecycle import run_status
from nnobs.launching.status import RunStatus, scheduled_lr
from nnobs.protocol.jobs import JobRecord
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.states import state_of
from nnobs.reading.series import RECENT_BATCHES
from nnobs.reading.watcher import read_history
from nnobs.views import wording
from nnobs.views.overview import RunRow

NET_WIDTH = 32  # the list's NET column is cut to this many characters
HEARTBEAT_NOTE = "(a live worker writes at least once a second)"


def number_or_dash(value: float | None, fmt: str) -> str:
    """value in fmt, or "-" when there is none."""
    return "-" if value is None else format(value, fmt)


def clipped(text: str, width: int) -> str:
    """text cut to width characters, its end shown cut by an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def low_disk(status: RunStatus) -> str:
    """The low-disk pause in words: "3.2 MB free on the run's filesystem, below its floor (nnobs set --min-free)"."""
    free = "-" if status.free_bytes is None else f"{status.free_bytes / 1024 / 1024:.1f} MB"
    return f"{free} free on the run's filesystem, below its floor; it goes on when space is freed (or lower it: set --min-free)"


def started_words(run: RunDir, started: int | JobRecord) -> str:
    """What a start gave, in words: "worker 1234 is alive", or "job 17 on Slurm is queued (Priority)"."""
    if not isinstance(started, JobRecord):
        return f"worker {started} is alive"
    status = run_status(run, read_history(run))
    where = f" ({status.reason})" if status.state == "queued" and status.reason else ""
    return f"job {started.job_id} on Slurm is {status.label}{where}; its output is in {run.worker_log}"


def status_text(run: RunDir, status: RunStatus) -> str:
    """`nnobs status`: one line per thing known of the run, its name padded to a column."""
    loss = "diverged (no longer a number)" if status.diverged else number_or_dash(status.loss, ".6g")
    if status.loss is not None:
        loss += f" (the mean of the newest {RECENT_BATCHES}+ batches; the newest batch's: {number_or_dash(status.batch_loss, '.6g')})"
    if status.best_loss is not None:
        loss += f", best {status.best_loss:.6g}"
    if status.report_every is None:
        reports = "-"
    elif status.report_every == 0:
        reports = "only when asked (tell-state)"
    else:
        reports = f"every {status.report_every:,} batches"
    if status.target is not None and status.batch > status.target:
        batch = f"{status.batch:,}, past the target of {status.target:,} (lowered since): it trains no further until the target is raised"
    else:
        batch = f"{status.batch:,} of {number_or_dash(status.target, ',')} (the target)"
    pace = "flat out" if not status.pace else f"at most {status.pace:,g} batches a second"
    meaning = state.meaning if (state := state_of(status.label)) else ""
    lines = [
        f"run           {status.run}, in {os.path.abspath(run.path)}",
        f"state         {status.label}" + (f": {meaning}" if meaning else ""),
        f"batch         {batch}",
        f"loss          {loss}",
        f"eta           {eta_words(status.eta, status.lr)}",
        f"state report  {reports} (the parameters, or a large net's summary)",
        f"pace          {pace}",
        f"generation    {number_or_dash(status.generation, 'd')} (each start of the worker is one)",
    ]
    lines += [
        f"{name[:13]:<13} {value:.6g} {measured_at(batch, status.batch)}"
        for name, (batch, value) in status.evaluations.items()
    ]
    if status.system:
        lines.append(f"system        {system_words(status.system)}")
    return "\n".join(lines + _worker_lines(status) + _trouble_lines(status))


def system_words(system: dict[str, float]) -> str:
    """The worker's machine in words: "cpu 98 % of a core, memory 212 MB; gpu0 63 %, 10,240 MB, 61 °C"."""
    words = [f"cpu {system.get('cpu', 0):.0f} % of a core, memory {system.get('rss_mb', 0):,.0f} MB"]
    gpus = sorted({name.split(".")[0] for name in system if name.startswith("gpu")})
    for gpu in gpus:
        figures = [
            f"{system[f'{gpu}.{figure}']:{form}}{unit}"
            for figure, form, unit in (("util", ".0f", " %"), ("mem_mb", ",.0f", " MB"), ("temp_c", ".0f", " °C"))
            if f"{gpu}.{figure}" in system
        ]
        words.append(f"{gpu} {', '.join(figures)}")
    return "; ".join(words)


def eta_words(eta: float | None, lr: float | None) -> str:
    """eta, and the learning rate in use where a schedule makes it another: "0.05 (the base learning rate; in use
    0.035)"."""
    if (in_use := scheduled_lr(eta, lr)) is None:
        return f"{number_or_dash(eta, 'g')} (the learning rate)"
    return f"{eta:g} (the base learning rate; in use {in_use:.4g}, as its schedule scales it)"


def eta_cell(eta: float | None, lr: float | None) -> str:
    """`list`'s eta: "0.05", or "0.05 (0.035)" with the learning rate in use where a schedule makes it another."""
    if (in_use := scheduled_lr(eta, lr)) is None:
        return number_or_dash(eta, ".4g")
    return f"{eta:.4g} ({in_use:.3g})"


def measured_at(batch: int, now: int) -> str:
    """When an evaluation was made, beside its value: "at batch 1 (4,999 batches ago)", or "at batch 5,000 (the
    newest)"."""
    behind = now - batch
    ago = "the newest" if behind <= 0 else "the batch before" if behind == 1 else f"{behind:,} batches ago"
    return f"at batch {batch:,} ({ago})"


def _worker_lines(status: RunStatus) -> list[str]:
    """The Slurm job, the worker's pid and its heartbeat, or when the run last wrote."""
    lines = []
    if status.job_id is not None:
        why = f": {status.reason}" if status.reason else ""
        job_state = (status.job_state or "unknown to the scheduler now").lower()
        lines.append(f"slurm job     {status.job_id} ({job_state}{why})")
    if status.pid is not None:
        lines += [
            f"worker pid    {status.pid}",
            f"heartbeat     {wording.ago(status.heartbeat_age_s)} {HEARTBEAT_NOTE}",
        ]
    elif status.launcher == "slurm" and status.state not in ("queued", "stopped", "crashed"):
        lines.append(f"heartbeat     {wording.ago(status.heartbeat_age_s)} {HEARTBEAT_NOTE}")
    else:
        lines += ["worker pid    - (no worker is alive)", f"last record   {wording.ago(status.heartbeat_age_s)}"]
    return lines


def _trouble_lines(status: RunStatus) -> list[str]:
    """What stands in the run's way: a failed write, a full disk, an error, unreadable lines."""
    lines = []
    if status.unsafe:
        lines.append(
            f"not followed  {status.unsafe}: never read or written through; the run does not start until moved"
        )
    if status.write_error:
        lines.append(f"cannot write  {status.write_error}")
    if status.state == "low disk":
        lines.append(f"low disk      {low_disk(status)}")
    if status.rose:
        lines.append(f"loss rose     {status.rose}")
    if status.error:
        lines.append(f"error         {status.error}")
    if status.skipped_lines:
        lines.append(f"skipped       {status.skipped_lines:,} unreadable lines of run.jsonl")
    return lines


def sorted_rows(rows: list[RunRow], by: str) -> list[RunRow]:
    """Rows in the order asked for; a run without the value asked for goes last, whatever the order."""
    if by == "created":
        return sorted(rows, key=lambda r: (r.created, r.name))
    if by == "name":
        return sorted(rows, key=lambda r: r.name)
    if by == "state":
        return sorted(rows, key=lambda r: (r.label, r.name))
    sign = 1 if by in ("loss", "best_loss", "test_loss") else -1  # lowest loss first; most batches, fastest first
    return sorted(rows, key=lambda r: (getattr(r, by) is None, sign * (getattr(r, by) or 0), r.name))


def _test_cell(row: RunRow) -> str:
    """The test loss with the batch it was made at ("0.553 at 1"): an old one never reads as the run's."""
    if row.test_loss is None:
        return "-"
    return f"{row.test_loss:.4g}" + ("" if row.test_batch is None else f" at {row.test_batch:,}")


def runs_table(rows: list[RunRow]) -> list[str]:
    """`nnobs list`'s lines: a header, then one row per run, in columns as wide as their widest cell."""
    table = [
        ("RUN", "STATE", "TASK", "NET", "BATCH", "LOSS", "BEST", "TEST LOSS", "ETA (IN USE)", "BATCHES/S", "HEARTBEAT")
    ]
    for row in rows:
        table.append(
            (
                row.name,
                row.label,
                row.task,
                clipped(row.net, NET_WIDTH),
                f"{row.batch:,}",
                number_or_dash(row.loss, ".4g"),
                number_or_dash(row.best_loss, ".4g"),
                _test_cell(row),
                eta_cell(row.eta, row.lr),
                number_or_dash(row.rate, ",.0f"),
                wording.ago(row.heartbeat_age_s),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
