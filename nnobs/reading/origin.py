"""Where a run came from: the run and batch it was forked from (fork.json), and when it was made."""

from __future__ import annotations

import os

from nnobs.protocol.files import SETTINGS_MOST_BYTES, open_file, read_text
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int
from nnobs.protocol.rundir import RunDir

FORK_FILE = "fork.json"  # in a fork's directory: which run, which batch, what changed


def fork_origin(run: RunDir) -> dict | None:
    """Where a fork came from: {"run": parent, "batch": N, "changed": {...}, "t": ...}; None for a run made afresh."""
    try:
        origin = parse_json(read_text(run.path / FORK_FILE, SETTINGS_MOST_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(origin, dict) or not isinstance(origin.get("run"), str):
        return None
    batch = origin.get("batch")
    # What the page and the CLI format: of the shapes fork_run writes, or left out (anyone may edit the file).
    return {
        "run": origin["run"],
        "batch": batch if is_int(batch) else 0,
        **{k: origin[k] for k in ("changed", "parent") if isinstance(origin.get(k), dict)},
        **({"t": origin["t"]} if isinstance(origin.get("t"), (int, float)) else {}),
    }


def created_at(run: RunDir) -> float:
    """When the run was made (unix time): its first record's time, else its oldest file's modification time."""
    try:
        with open_file(run.run_file) as f:
            first = f.readline(1 << 16)
        t = parse_json(first).get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
    except (OSError, ValueError, AttributeError):
        pass
    times = []
    for path in (run.config, run.description, run.launch, run.path):
        try:
            times.append(os.stat(path).st_mtime)
        except OSError:
            pass
    return min(times, default=0.0)
