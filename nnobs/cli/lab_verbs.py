"""The verbs that make runs, or list them: new, fork, sweep, import, run (a script of your own) and list."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import time
from pathlib import Path

from nnobs.cli.formatting import runs_table, sorted_rows, started_words
from nnobs.cli.launcher_flags import add_launcher_flags, launcher_from_flags
from nnobs.cli.parser import NEW_RUN_FLAGS
from nnobs.cli.runs import named_run
from nnobs.lab import pbt, pbt_controller
from nnobs.lab import sweep as sweeps
from nnobs.lab.create import fork_run, landing_of, new_run
from nnobs.launching.follow import follow_log, import_log
from nnobs.launching.lifecycle import active_job, import_run, record_launch, set_launcher, start_worker, worker_pid
from nnobs.protocol import population as populations
from nnobs.protocol.commands import parse_eta_schedule
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import LauncherSettings
from nnobs.protocol.rundir import RunDir, runs_root
from nnobs.reading.origin import fork_origin
from nnobs.reading.scalar_logs import FORMAT_NAMES
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.overview import run_rows

LOCAL_PARALLEL = 2  # runs a local sweep trains at once unless told


def _config_field(flag: str) -> str:
    """The RunConfig field a `nnobs new` flag sets: --batch-size sets batch_size."""
    return flag[2:].replace("-", "_")


def new(args: argparse.Namespace) -> int:
    """nnobs new: the flags given, over the defaults, checked before anything is created."""
    run = named_run(args)
    given = {_config_field(flag): getattr(args, _config_field(flag)) for flag, *_ in NEW_RUN_FLAGS}
    schedule = parse_eta_schedule(args.eta_schedule) if args.eta_schedule else None
    if schedule and schedule[0][0] == 0:
        if args.eta is not None:
            raise NnobsError(
                "give --eta or an eta schedule with a step at batch 0, not both: that step is the eta to start"
            )
        given["eta"] = schedule[0][1]
    config = RunConfig(**{name: value for name, value in given.items() if value is not None})
    started = new_run(run, config, by="cli", launcher=launcher_from_flags(args, None))
    assert started is not None, "new_run starts the run it makes unless told not to"
    print(f"{run.name}: {started_words(run, started)}, training {config.task} with {config.net}")
    return 0


def fork(args: argparse.Namespace) -> int:
    """nnobs fork: a new run from another's checkpoint, with the settings given changed."""
    run = named_run(args)
    parent = RunDir.named(args.parent, args.runs)
    if args.at is not None and parent.exists():
        where = landing_of(parent, args.at)  # a fork throws nothing away: the parent's batch now is not needed
        if where.landed is not None:
            print(f"{run.name}: forking {parent.name} from {where.words()}")
        if where.far_below_asked and not args.yes:
            raise NnobsError(
                f"not forked: the checkpoint kept at batch {where.landed:,} is under half of batch {args.at:,}; "
                "add --yes to fork from it anyway"
            )
    pid = fork_run(parent, run, eta=args.eta, target=args.target, at=args.at, by="cli")
    origin = fork_origin(run) or {}
    print(f"{run.name}: forked from {parent.name} at batch {origin.get('batch', 0):,}; worker {pid} is alive")
    return 0


def sweep(args: argparse.Namespace) -> int:
    """nnobs sweep: the runs of every combination, made, then trained here or submitted as one job array; with
    --pbt, a population and its controller."""
    if args.pbt:
        return population_sweep(args)
    if args.command:
        raise NnobsError("a sweep of a script's runs is a population: add --pbt (a grid sweeps the built-in worker)")
    if args.eta_schedule:
        raise NnobsError("a sweep's runs take no --eta-schedule: their etas are what it sweeps")
    pbt_only = [flag for flag in PBT_FLAGS if getattr(args, flag) not in (None, False)]
    if pbt_only:
        raise NnobsError(f"--{pbt_only[0]} is for population-based training: add --pbt")
    grid: dict[str, list] = {}
    if args.eta:
        grid["eta"] = sweeps.value_list(args.eta, float)
    if args.seed:
        grid["seed"] = sweeps.value_list(args.seed, int)
    if not any(grid.values()):
        raise NnobsError("sweep needs --eta or --seed with values separated by commas, e.g. --eta 0.01,0.1,1")
    if args.parallel is not None and args.parallel < 1:
        raise NnobsError("--parallel must be at least 1")
    launcher = launcher_from_flags(args, None) or LauncherSettings()
    runs = sweeps.create(args.runs, sweeps.plan(args.run, _base_config(args), grid), launcher)
    print(f"{len(runs)} runs: {', '.join(run.name for run in runs)}")
    url = sweeps.compare_url(args.url or os.environ.get("NNOBS_URL") or sweeps.DEFAULT_URL, runs)
    if launcher.kind == "slurm":
        jobs = sweeps.submit(runs, launcher, args.parallel)
        print(f"submitted to Slurm as job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)")
        print(f"compare them: {url}")
        return 0
    print(f"compare them: {url}")
    sweeps.train_locally(runs, args.parallel or LOCAL_PARALLEL, print)
    return 0


def _base_config(args: argparse.Namespace) -> RunConfig:
    """A sweep's settings alike for all its runs: the flags given, over the defaults."""
    fields = {_config_field(flag) for flag, *_ in NEW_RUN_FLAGS} - set(sweeps.SWEPT)
    return RunConfig(**{name: getattr(args, name) for name in fields if getattr(args, name) is not None})


PBT_FLAGS = ("population", "interval", "quantile", "resample", "metric", "wait", "stop")
DEFAULT_MEMBERS = 8


def population_sweep(args: argparse.Namespace) -> int:
    """nnobs sweep --pbt: a population made and its controller started; or, for one that exists, its controller
    started again (or stopped)."""
    folder = populations.folder_of(args.runs, args.run)
    url_base = args.url or os.environ.get("NNOBS_URL") or sweeps.DEFAULT_URL
    if args.eta_schedule:
        raise NnobsError("a population's members take no --eta-schedule: their etas are what it searches")
    if folder.exists():
        given = [flag for flag in POPULATION_SETTINGS if getattr(args, flag.lstrip("-").replace("-", "_")) is not None]
        given += ["-- COMMAND"] if args.command else []
        if given:
            raise NnobsError(
                f"the population {args.run} exists already: {given[0]} cannot change it; pick another name"
            )
        plan = populations.load_population(folder)
        if args.stop:
            stopped = pbt_controller.stop_controller(args.runs, args.run)
            said = "stopped" if stopped else "was not running"
            print(f"{args.run}: controller {said}; its members idle at their targets")
            return 0
        offset = pbt_controller.log_size(folder)
        pid = pbt_controller.start_controller(args.runs, args.run)
        print(f"{args.run}: controller {pid} goes on with {len(plan.members)} members")
    elif args.stop:
        raise NnobsError(f"there is no population named {args.run} in {folder.parent.parent}")
    else:
        plan, pid = _new_population(args)
        offset = 0
    runs = [RunDir.named(name, args.runs) for name in plan.members]
    print(f"compare them: {sweeps.compare_url(url_base, runs)}")
    if args.wait and not pbt_controller.follow_log(folder, print, offset):
        return 1  # the controller is gone before the end: said, with where its log is
    return 0


# What a population is made with: on one that exists, any of them is refused rather than ignored.
POPULATION_SETTINGS = (
    *(flag for flag, *_ in NEW_RUN_FLAGS),
    "--population",
    "--interval",
    "--quantile",
    "--resample",
    "--metric",
    "--parallel",
    "--on",
)


def _new_population(args: argparse.Namespace) -> tuple[populations.Population, int]:
    if not args.eta:
        raise NnobsError("--pbt needs --eta LO..HI, the range its members' etas are drawn from, e.g. --eta 0.01..1")
    if args.seed is not None and "," in args.seed:
        raise NnobsError("--pbt takes one --seed: the population's, for its members' nets and its draws")
    eta_range = pbt.parse_range(args.eta)
    seed = sweeps.value_list(args.seed, int)[0] if args.seed else 1
    base = dataclasses.replace(_base_config(args), seed=seed)
    script = args.command
    if script:
        given = [
            flag
            for flag, *_ in NEW_RUN_FLAGS
            if flag not in ("--eta", "--seed", "--target")
            if getattr(args, _config_field(flag)) is not None
        ]
        if given:
            raise NnobsError(f"{given[0]} is a setting of the built-in worker: a script's population takes its own")
    count = DEFAULT_MEMBERS if args.population is None else args.population
    longest = f"{args.run}-m{max(count - 1, 0)}"
    if len(longest) > 64:
        raise NnobsError(
            f"population name {args.run!r} refused: its members' names ({longest}) would pass 64 characters"
        )
    metric = args.metric or ("loss" if script or base.task == "xor" else "test_loss")
    if not script and metric not in ("loss", "test_loss"):
        raise NnobsError(f"--metric {metric!r} refused: a built-in task's runs are ranked by test_loss or loss")
    if not script and metric == "test_loss" and base.task == "xor":
        raise NnobsError("--metric test_loss refused: the xor task has no test set; rank by loss")
    plan = populations.Population(
        name=args.run,
        members=[f"{args.run}-m{i}" for i in range(count)],
        etas=pbt.initial_etas(count, eta_range, seed),
        eta_range=eta_range,
        interval=max(1, base.target // 10) if args.interval is None else args.interval,
        target=base.target,
        quantile=0.25 if args.quantile is None else args.quantile,
        resample=0.25 if args.resample is None else args.resample,
        metric=metric,
        seed=seed,
        parallel=args.parallel,
        started=time.time(),
    )
    launcher = launcher_from_flags(args, None) or LauncherSettings()
    if script:
        runs = sweeps.create_script_population(args.runs, plan, script, os.getcwd(), launcher)
    else:
        runs = sweeps.create_population(args.runs, plan, base, launcher)
    print(f"{len(runs)} members: {', '.join(f'{run.name} (eta {eta:g})' for run, eta in zip(runs, plan.etas))}")
    pid = pbt_controller.start_controller(args.runs, args.run)
    where = " on Slurm" if launcher.kind == "slurm" else ""
    print(
        f"{args.run}: controller {pid} trains them{where} to batch {plan.target:,}, exploiting every {plan.interval:,} "
        f"batches by {plan.metric}; its log: {populations.folder_of(args.runs, args.run) / 'controller.log'}"
    )
    return plan, pid


def import_file(args: argparse.Namespace) -> int:
    """nnobs import: a read-only run of a run file, a TensorBoard log or a CSV file written elsewhere."""
    run = named_run(args)
    kind, where = log_source(args)
    if kind is None:
        if args.file is None:
            raise NnobsError("nnobs import needs FILE (a run file), --tensorboard LOGDIR or --csv FILE")
        print(f"{run.name}: {import_run(run, args.file):,} records imported from {args.file}, read-only")
        return 0
    if args.file is not None:
        raise NnobsError(f"give FILE or --{kind}, not both")
    records, loss = import_log(run, kind, where, args.loss)
    as_loss = f", {loss!r} as its loss" if loss else ", no tag taken as its loss (give one with --loss TAG)"
    print(f"{run.name}: {records:,} steps imported from the {FORMAT_NAMES[kind]} {where}{as_loss}; read-only")
    return 0


def follow(args: argparse.Namespace) -> int:
    """nnobs follow: show a log written elsewhere as a run, live."""
    run = named_run(args)
    kind, where = log_source(args)
    if kind is None:
        raise NnobsError("nnobs follow needs --tensorboard LOGDIR or --csv FILE")
    pid = follow_log(run, kind, where, args.loss)
    yet = "" if where.exists() else ", which does not exist yet: its scalars show once it does"
    print(
        f"{run.name}: following the {FORMAT_NAMES[kind]} {where}{yet} (follower pid {pid}); "
        f"`nnobs stop {run.name}` ends it"
    )
    return 0


def log_source(args: argparse.Namespace) -> tuple[str | None, Path]:
    """Which log --tensorboard or --csv names, and where; (None, .) when neither is given."""
    for kind in FORMAT_NAMES:
        if getattr(args, kind, None) is not None:
            return kind, getattr(args, kind)
    return None, Path()


def run_script(args: argparse.Namespace) -> int:
    """nnobs run: record how the script starts, then start it as the run's worker."""
    run = named_run(args)
    launcher, command, wandb = _script_launcher(run, args.command)
    pid = worker_pid(run)
    if pid is not None or active_job(run) is not None:
        raise NnobsError(
            f"{run.name} already has a live worker{f' (pid {pid})' if pid and pid > 0 else ''}; stop it first: "
            f"nnobs stop {run.name}"
        )
    if launcher is not None:
        set_launcher(run, launcher)
    recorded = record_launch(run, command, os.getcwd(), wandb=wandb)
    started = start_worker(run, by="cli")
    print(
        f"{run.name}: {started_words(run, started)}: {shlex.join(recorded)} in {os.getcwd()}, output in {run.worker_log}"
    )
    return 0


def _script_launcher(run: RunDir, command: list[str]) -> tuple[LauncherSettings | None, list[str], bool]:
    """nnobs run's flags, given before --: where it runs, and whether its `import wandb` is nnobs's; and the command
    after it."""
    if "--" not in command:
        return None, command, False
    at = command.index("--")
    flags = argparse.ArgumentParser(prog=f"nnobs run {run.name}", add_help=False, exit_on_error=False)
    add_launcher_flags(flags)
    flags.add_argument("--wandb", action="store_true")
    try:
        args, unknown = flags.parse_known_args(command[:at])
    except argparse.ArgumentError as err:
        raise NnobsError(f"nnobs run: {err}") from err
    if unknown:
        raise NnobsError(
            f"nnobs run: {' '.join(unknown)} refused: before -- come only --wandb and where it runs (--on, "
            "--partition, --time, --cpus, --gpus, --sbatch, --no-requeue); the command comes after --"
        )
    return launcher_from_flags(args, run), command[at + 1 :], args.wandb


def list_runs(args: argparse.Namespace) -> int:
    """nnobs list: every run under the runs root, as a table or a JSON list, in the order asked for."""
    rows = sorted_rows(run_rows(args.runs), args.sort)
    if args.json:
        print(json.dumps([row.as_dict() for row in rows]))
        return 0
    if not rows:
        print(f"no runs in {runs_root(args.runs)}")
        return 0
    for line in runs_table(rows):
        print(line)
    return 0
