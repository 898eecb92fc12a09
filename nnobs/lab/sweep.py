"""A sweep: one run per combination of settings, trained side by side here or submitted as one Slurm job array."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from nnobs.lab.create import new_run
from nnobs.launching.lifecycle import record_launch, run_status, set_launcher, start_worker, stop_worker
from nnobs.protocol.control import queue_commands
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import JobRecord, LauncherSettings
from nnobs.protocol.population import BY as POPULATION_BY
from nnobs.protocol.population import Population, folder_of, save_population
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.states import State, state_of
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig

SWEPT = ("eta", "seed")  # the settings a sweep takes lists of, in the order run names list them
DEFAULT_URL = "http://localhost:8501"  # where `streamlit run app.py` serves the monitor unless told otherwise
WATCH_EVERY_S = 0.2  # how often a local sweep looks at its runs to start the next
MAX_RUNS = 1000


def value_list(text: str, kind: type) -> list:
    """A comma-separated list ("0.01,0.1,1") of numbers of kind; NnobsError naming the item that is not one."""
    values = []
    for item in text.split(","):
        try:
            value = kind(item.strip())
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise NnobsError(f"{item.strip()!r} in {text!r} is not a number: give {what} separated by commas") from None
        if value in values:
            raise NnobsError(f"{item.strip()} is given twice in {text!r}")
        values.append(value)
    return values


def _word(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan(name: str, base: RunConfig, grid: dict[str, list]) -> list[tuple[str, RunConfig]]:
    """(name, config) for every combination of the grid's values, named NAME-eta0.1-seed2; every config checked."""
    swept = [setting for setting in SWEPT if grid.get(setting)]
    combinations = list(itertools.product(*(grid[setting] for setting in swept)))
    if len(combinations) > MAX_RUNS:
        raise NnobsError(f"a sweep of {len(combinations):,} runs refused: at most {MAX_RUNS:,}")
    planned = []
    for values in combinations:
        changed = dict(zip(swept, values))
        suffix = "-".join(f"{setting}{_word(value)}" for setting, value in changed.items())
        config = dataclasses.replace(base, **changed)
        config.check()
        planned.append((f"{name}-{suffix}" if suffix else name, config))
    return planned


def create(
    root: str | os.PathLike | None, planned: list[tuple[str, RunConfig]], launcher: LauncherSettings
) -> list[RunDir]:
    """Create every run of the plan, unstarted; nothing is created when a name is refused or taken."""
    runs = [RunDir.named(name, root) for name, _ in planned]  # a refused name refuses them all, before any is made
    taken = [run.name for run in runs if run.path.exists()]
    if taken:
        raise NnobsError(
            f"the sweep's runs {', '.join(taken)} exist already in {runs[0].path.parent}: pick another name"
        )
    for run, (_, config) in zip(runs, planned):
        new_run(run, config, launcher=launcher, start=False)
    return runs


def _free_folder(root: str | os.PathLike | None, population: Population) -> Path:
    """The population's folder, refused when a population of that name exists."""
    folder = folder_of(root, population.name)
    if folder.exists():
        raise NnobsError(f"a population named {population.name} exists already in {folder.parent}: pick another name")
    return folder


def create_population(
    root: str | os.PathLike | None, population: Population, base: RunConfig, launcher: LauncherSettings
) -> list[RunDir]:
    """Make a population's members (unstarted, each with its eta and the first interval as its target) and its
    folder; nothing is created when a name is taken or a setting refused."""
    folder = _free_folder(root, population)
    planned = [
        (name, dataclasses.replace(base, eta=eta, target=population.interval))
        for name, eta in zip(population.members, population.etas)
    ]
    for _, config in planned:
        config.check()
    runs = create(root, planned, launcher)
    save_population(folder, population)
    return runs


def create_script_population(
    root: str | os.PathLike | None, population: Population, command: list[str], cwd: str, launcher: LauncherSettings
) -> list[RunDir]:
    """Make a population of a script's runs: each member's launch recorded, its eta and the first interval queued as
    commands its script's nnobs.Run takes at its first start; nothing is created when a name is taken."""
    folder = _free_folder(root, population)
    runs = [RunDir.named(name, root) for name in population.members]
    taken = [run.name for run in runs if run.exists()]
    if taken:
        raise NnobsError(f"the population's runs {', '.join(taken)} exist already in {runs[0].path.parent}")
    if launcher.kind != "local":
        launcher.check()
    for run, eta in zip(runs, population.etas):
        if launcher.kind != "local":
            set_launcher(run, launcher)
        record_launch(run, command, cwd)
        queue_commands(run, [("eta", eta), ("target", population.interval)], by=POPULATION_BY)
    save_population(folder, population)
    return runs


def submit(runs: list[RunDir], launcher: LauncherSettings, parallel: int | None) -> list[JobRecord]:
    """Submit the runs as one Slurm job array, at most parallel of its tasks running at once."""
    from nnobs.launching.slurm import SlurmLauncher  # submitit is imported only for sweeps on Slurm

    return SlurmLauncher(launcher).submit(runs, by="sweep", parallel=parallel)


def train_locally(runs: list[RunDir], parallel: int, say: Callable[[str], None]) -> None:
    """Train the runs as local workers, at most parallel at once: each stopped at its target, the next started then."""
    waiting, training = list(runs), list[RunDir]()
    while waiting or training:
        while waiting and len(training) < parallel:
            run = waiting.pop(0)
            say(f"{run.name}: worker {start_worker(run, by='sweep')} started")
            training.append(run)
        for run in list(training):
            status = run_status(run, read_history(run))
            if (
                (state := state_of(status.state)) is not None and state.alive and state != State.IDLE
            ):  # still at it, or waiting to go on
                continue
            if status.state == "idle":
                stop_worker(run, by="sweep")
            loss = "-" if status.loss is None else f"{status.loss:.4g}"
            say(
                f"{run.name}: {'done' if status.state == 'idle' else status.label} at batch {status.batch:,}, loss {loss}"
            )
            training.remove(run)
        time.sleep(WATCH_EVERY_S)


def compare_url(base: str, runs: list[RunDir]) -> str:
    """The compare page's address for the runs: BASE/compare?runs=a&runs=b..."""
    return f"{base.rstrip('/')}/compare?{urlencode([('runs', run.name) for run in runs])}"
