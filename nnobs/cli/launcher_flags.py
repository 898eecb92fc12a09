"""--on and what a Slurm job asks for: the flags, and the launcher settings they ask for."""

from __future__ import annotations

import argparse
import dataclasses

from nnobs.cli.arg_types import whole_number
from nnobs.launching.lifecycle import launcher_settings
from nnobs.protocol.jobs import KINDS, LauncherSettings, sbatch_options
from nnobs.protocol.rundir import RunDir


def add_launcher_flags(p: argparse.ArgumentParser) -> None:
    """--on and what a Slurm job asks for; without --on a run keeps the launcher it has (a new run: local)."""
    p.add_argument(
        "--on",
        choices=KINDS,
        help="where the worker runs: local (this machine) or slurm (a job on the "
        "cluster, through submitit); default: the launcher the run has, else local",
    )
    p.add_argument("--partition", metavar="P", help="the Slurm partition (default: the cluster's)")
    p.add_argument(
        "--time",
        metavar="LIMIT",
        help="the job's time limit, as Slurm writes it: 1:00:00, 90, 2-12 "
        "(default 1:00:00; at its end the run checkpoints and the job is requeued)",
    )
    p.add_argument("--cpus", type=whole_number, metavar="N", help="CPUs for the worker (sbatch --cpus-per-task)")
    p.add_argument(
        "--gpus", "--gpus-per-node", type=whole_number, metavar="N", help="GPUs for the worker (sbatch --gpus-per-node)"
    )
    p.add_argument(
        "--nodes",
        type=whole_number,
        metavar="N",
        help="nodes for a script started with torchrun: each runs one torchrun agent, "
        "joined by torchrun's rendezvous (give torchrun --nproc_per_node, not --standalone)",
    )
    p.add_argument(
        "--tasks-per-node",
        type=whole_number,
        metavar="N",
        help="torchrun agents per node (default 1): more than one on one node stands for as many nodes",
    )
    p.add_argument(
        "--sbatch",
        metavar="OPTIONS",
        help='more sbatch options in their long form, given after an =: --sbatch="--qos=high --account=lab"',
    )
    p.add_argument(
        "--no-requeue",
        action="store_true",
        help="end the job on preemption or at its time limit, after a checkpoint, instead of requeueing it",
    )


def launcher_from_flags(args: argparse.Namespace, run: RunDir | None) -> LauncherSettings | None:
    """The launcher the flags ask for (over the run's own when --on is not given); None when no flag is given."""
    given = {
        "partition": args.partition,
        "time": args.time,
        "cpus": args.cpus,
        "gpus": args.gpus,
        "nodes": args.nodes,
        "tasks_per_node": args.tasks_per_node,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.sbatch is not None:
        given["sbatch"] = sbatch_options(args.sbatch)
    if args.no_requeue:
        given["requeue"] = False
    if args.on is None and not given:
        return None
    recorded = launcher_settings(run) if run is not None else LauncherSettings()
    base = recorded if args.on is None or args.on == recorded.kind else LauncherSettings(kind=args.on)
    return dataclasses.replace(base, **given).check()
