"""How the page puts a run's numbers, progress, origin and senders into words a newcomer reads the same way."""

from __future__ import annotations

import math
from typing import Any

from nnobs.protocol.numbers import is_int

NEGLIGIBLE_CHANGE = 0.01  # a loss that moved less than 1% in 10 s has not changed, as far as a reader is concerned
DECADES_FROM = 2.0  # past this factor a change reads in decades (factors of 10), below it in percent

# Who sent a command or asked for a start, as the senders write it ("by" in control.json and in started records).
SENDERS = {
    "page": "from the page",
    "cli": "from the command line",
    "page restart": "by Restart on the page",
    "cli stop": "by `nnobs stop`",
    "cli restart": "by `nnobs restart`",
    "stop": "by a stop or restart",  # written before stops and restarts named who asked
    "sweep": "by `nnobs sweep`",
    "slurm requeue": "by Slurm, requeued after a preemption or at its time limit",
}


def loss_change(relative: float | None) -> str | None:
    """A relative loss change, (new - old) / old, in words: "-12%", "-2.3 decades"; None when negligible or meaningless."""
    if relative is None or not math.isfinite(relative) or relative <= -1 or abs(relative) < NEGLIGIBLE_CHANGE:
        return None  # unknown, a loss at or below 0 (no ratio), or too small to matter
    decades = math.log10(1 + relative)
    if abs(decades) >= math.log10(DECADES_FROM):
        return f"{decades:+.1f} decades"
    percent = 100 * relative
    return f"{percent:+.1f}%" if abs(percent) < 10 else f"{percent:+.0f}%"


def progress(batch: int, target: int) -> tuple[float, str]:
    """The progress bar's fill (0 to 1) and its text, for a batch and a target, whichever is larger."""
    if target <= 0 and batch <= 0:
        return 0.0, "The target is 0 batches: raise it to train"
    if batch > target:
        return (
            1.0,
            f"Batch {batch:,} is past the target of {target:,}, lowered since: it waits until the target is raised",
        )
    done = batch / target
    percent = math.floor(100 * done)  # 99.9% is not yet 100%
    return done, f"{batch:,} of {target:,} target batches ({percent}%)"


def sender(by: str) -> str:
    """Who asked, as Markdown to follow a command or a start: "from the page", "by `nnobs stop`"; "" when unnamed."""
    if not by:
        return ""
    known = SENDERS.get(by)
    return known if known else f"by `{by.replace('`', '')}`"


def duration(seconds: float) -> str:
    """A duration in one unit: "42 s", "12 min", "3.5 h", "2.0 days"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def ago(seconds: float | None) -> str:
    """How long ago, as the page and the CLI both say it: "0.4 s ago", "12 min ago", "1.5 h ago", "3 days ago";
    "-" when there is no such moment. Past 10 s a whole number of its unit drops its ".0"."""
    if seconds is None:
        return "-"
    said = duration(max(0.0, seconds))
    return f"{said.replace('.0 ', ' ') if seconds >= 10 else said} ago"


def parameters_shown(shown: int, total: int, spread: bool, among: int | None = None) -> str:
    """Which parameters a state-vector chart draws: "every parameter", "a sample of 64 of 14,090 parameters",
    "the first 256 of 9,000 parameters" (spread: taken across the whole vector, not from its start), or, taken
    across the first `among` of them, "a sample of 64 of the first 256 of 9,000 parameters"."""
    if shown >= total:
        return "every parameter"
    if among is not None and among < total:
        return f"a sample of {shown:,} of the first {among:,} of {total:,} parameters"
    return (
        f"a sample of {shown:,} of {total:,} parameters" if spread else f"the first {shown:,} of {total:,} parameters"
    )


def served_by(description: dict[str, Any] | None) -> str:
    """What serves a script's run, from its run.json, as Markdown: "script `/usr/bin/python3 train.py` in `/home/me`"."""
    if not description:
        return ""
    argv = description.get("argv")
    words = [str(word) for word in argv] if isinstance(argv, list) else []
    command = " ".join(words).replace("`", "'") or "a script"
    cwd = description.get("cwd")
    return f"script `{command}`" + (f" in `{str(cwd).replace('`', '')}`" if cwd else "")


def fork_origin(origin: dict[str, Any]) -> str:
    """Where a fork came from, as Markdown: "Forked from `base` at batch 12,000, with eta 0.3 (it had 0.1)"."""
    name = str(origin.get("run", "?")).replace("`", "")
    batch = origin.get("batch")
    where = f" at batch {batch:,}" if is_int(batch) else ""
    changed = origin.get("changed")
    before = origin.get("parent")
    settings = changed if isinstance(changed, dict) else {}
    had = before if isinstance(before, dict) else {}
    described = [
        f"{setting} {_setting(value)}" + (f" (it had {_setting(had[setting])})" if setting in had else "")
        for setting, value in settings.items()
    ]
    return f"Forked from `{name}`{where}" + (f", with {' and '.join(described)}" if described else "")


def _setting(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return f"{value:,}" if is_int(value) else str(value)
