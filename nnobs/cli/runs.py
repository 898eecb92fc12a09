"""The run a verb names: looked up by name, and, for a verb on an existing run, refused when it is not there."""

from __future__ import annotations

import argparse
import difflib
import os

from nnobs.launching.follow import CANNOT_STEER
from nnobs.launching.lifecycle import started_outside
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.rundir import RunDir, is_followed, is_imported, list_runs

CLOSE_ENOUGH = 0.75  # difflib's similarity for "did you mean": one letter off or swapped in a short name


def named_run(args: argparse.Namespace) -> RunDir:
    """The run named by RUN under --runs; a name that cannot be a run's is refused."""
    return RunDir.named(args.run, args.runs)


def existing_run(args: argparse.Namespace, steered: bool = True) -> RunDir:
    """The run named by RUN, refused when it does not exist or, for a verb that steers it, when it was imported."""
    run = named_run(args)
    if not run.exists():
        raise NnobsError(no_such_run(run))
    if steered and is_imported(run):
        raise NnobsError(started_outside(run))
    if steered and is_followed(run):
        raise NnobsError(f"{run.name}: {CANNOT_STEER} (stop, start and restart follow it or not)")
    return run


def no_such_run(run: RunDir) -> str:
    """Why a run is not there, naming where it was looked for and what is there instead."""
    root = os.path.abspath(run.path.parent)
    if not os.path.isdir(root):
        return (
            f"no run named {run.name!r}: the runs root {root} does not exist (choose it with --runs DIR or $NNOBS_RUNS)"
        )
    there = list_runs(root)
    meant = difflib.get_close_matches(run.name, there, n=3, cutoff=CLOSE_ENOUGH)
    if meant:  # a typo: creating a run of that name is not what was wanted
        return f"no run named {run.name!r} in {root}; did you mean {' or '.join(meant)}?"
    others = f"runs there: {', '.join(there)}" if there else "no runs there"
    return f"no run named {run.name!r} in {root} ({others}); `nnobs start {run.name}` creates it"
