"""The verbs on one run's worker: start, stop, restart, status, and the commands set, tell-state, rewind, reinit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from nnobs.cli.answers import send_commands
from nnobs.cli.formatting import low_disk, started_words, status_text
from nnobs.cli.launcher_flags import launcher_from_flags
from nnobs.cli.parser import SETTINGS, setting_flag
from nnobs.cli.runs import existing_run, named_run, no_such_run
from nnobs.lab.create import landing_of
from nnobs.launching.base import STOP_GRACE_S
from nnobs.launching.lifecycle import (
    active_job,
    restart_worker,
    run_status,
    set_launcher,
    start_worker,
    stop_worker,
    worker_pid,
)
from nnobs.protocol.checkpoint import kept_batches
from nnobs.protocol.commands import check_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import JobRecord
from nnobs.reading.watcher import read_history


def start(args: argparse.Namespace) -> int:
    """nnobs start: the run's worker started by its launcher (the one the flags ask for), unless one is alive."""
    run = named_run(args)
    launcher = launcher_from_flags(args, run)
    if launcher is not None:
        set_launcher(run, launcher)
    print(f"{run.name}: {started_words(run, start_worker(run, by='cli'))}")
    return 0


def status(args: argparse.Namespace) -> int:
    """nnobs status: the run's state and latest values, as text or one JSON object; 1 when there is no such run."""
    run = named_run(args)
    found = run_status(run, read_history(run))
    missing = not run.exists() and found.pid is None
    if missing:
        found = dataclasses.replace(found, state="absent")  # a directory without a config is no run
    if args.json:
        print(json.dumps({**found.as_dict(), "label": found.label}))
    elif not missing:  # a table of dashes would only hide the message
        print(status_text(run, found))
    if missing:
        print(f"nnobs: {no_such_run(run)}", file=sys.stderr)
        return 1
    return 0


def set_settings(args: argparse.Namespace) -> int:
    """nnobs set: one command per setting given, sent together; with --no-wait, not waiting for the answers."""
    run = existing_run(args)
    commands = [(setting, getattr(args, setting)) for setting in SETTINGS if getattr(args, setting) is not None]
    if not commands:
        raise NnobsError(f"set needs at least one of {', '.join(setting_flag(setting) for setting in SETTINGS)}")
    return send_commands(run, commands, wait=not args.no_wait)


def tell_state(args: argparse.Namespace) -> int:
    """nnobs tell-state: ask for the full parameter vector now."""
    return send_commands(existing_run(args), [("tell_state", None)])


def rewind(args: argparse.Namespace) -> int:
    """nnobs rewind: back to the newest kept checkpoint at or before --to, said first; one that throws away more than
    half of the run is refused without --yes."""
    run = existing_run(args)
    check_command("rewind", args.to)
    now = run_status(run, read_history(run)).batch
    where = landing_of(run, args.to, now)
    if where.landed is None:  # sent all the same: a worker not yet started keeps batch 0 as it starts
        kept = ", ".join(f"{b:,}" for b in kept_batches(run.checkpoint)) or "none"
        print(f"{run.name}: {where.words()} yet (kept: {kept}); the worker refuses it if none is when it applies it")
    else:
        print(f"{run.name}: rewinding to {where.words()}")
    if where.drops_most and not args.yes:
        raise NnobsError(
            f"not rewound: going back from batch {now:,} to {where.landed:,} throws away more than half of the run; "
            f"add --yes to rewind anyway"
        )
    return send_commands(run, [("rewind", args.to)])


def reinit(args: argparse.Namespace) -> int:
    """nnobs reinit: fresh parameters, drawn with --seed or the run's own."""
    return send_commands(existing_run(args), [("reinit", args.seed)])


def stop(args: argparse.Namespace) -> int:
    """nnobs stop: shut the worker down and say how it ended; an imported run has none, and says so."""
    run = existing_run(args, steered=False)
    if worker_pid(run) is None and active_job(run) is None:
        found = run_status(run, read_history(run))
        print(f"{run.name}: no worker is alive ({found.label}, at batch {found.batch:,}); nothing to stop")
        return 0
    stopped = stop_worker(run, by="cli stop")
    if not stopped:
        print(f"{run.name}: the worker did not stop in time", file=sys.stderr)
        return 1
    found = run_status(run, read_history(run))
    how = f" ({stopped.how})" if stopped.how else ""
    if found.state == "crashed":  # no shutdown record: it had to be killed
        print(
            f"{run.name}: killed at batch {found.batch:,}: it did not obey the shutdown within "
            f"{STOP_GRACE_S:.0f} s{how}; start resumes from its last checkpoint"
        )
    else:
        print(f"{run.name}: stopped at batch {found.batch:,}{how}")
    return 0


def restart(args: argparse.Namespace) -> int:
    """nnobs restart: stop the worker if alive, start the next generation, and say where it resumed."""
    run = existing_run(args, steered=False)  # an imported run is refused as it starts; a followed one follows again
    said: list[str] = []
    started = restart_worker(run, by="cli", said=said)
    found = run_status(run, read_history(run))
    how = "".join(f" (stopping, {how})" for how in said)
    waits = found.state in ("cannot write", "low disk")
    trouble = f"; it waits: {found.write_error or low_disk(found)}" if waits else ""
    if isinstance(started, JobRecord):
        print(
            f"{run.name}: {started_words(run, started)}; it resumes from the checkpoint at batch {found.batch:,}{how}"
        )
    else:
        print(f"{run.name}: worker {started}, generation {found.generation}, at batch {found.batch:,}{how}{trouble}")
    return 0
