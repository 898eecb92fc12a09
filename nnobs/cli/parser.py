"""The `nnobs` command's argparse parser: every verb, its options and their help."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TypeAlias

from nnobs.cli.arg_types import tail_lines, whole_number
from nnobs.cli.launcher_flags import add_launcher_flags
from nnobs.lab import sweep
from nnobs.launching.base import STOP_GRACE_S
from nnobs.protocol.commands import COMMANDS
from nnobs.protocol.rundir import DEFAULT_RUN

Verbs: TypeAlias = "argparse._SubParsersAction[_VerbParser]"  # where each verb's sub-parser is added

TAIL_LINES = 10  # records tail prints when not told how many

EXIT_CODES = """\
exit codes: 0 done; 1 the worker rejected a command or did not answer it, or (status) no such run;
2 bad input, refused before anything is sent: a value the worker would refuse, a run name, a missing run"""

LIST_ORDERS = ("created", "name", "state", "batch", "loss", "best_loss", "test_loss", "rate")

# `nnobs new`'s settings: flag, type, metavar, help; each lands in the RunConfig field of its name.
NEW_RUN_FLAGS = (
    ("--task", str, "TASK", "what to learn: xor (the default), circle, noisy-xor, gauss, spiral, plane or sine"),
    (
        "--net",
        str,
        "SPEC",
        "the net: input width, then x<width> per layer with its activation's letter (t tanh, "
        "r relu, s sin, g sigmoid, none: identity), e.g. 2x8tx8tx1t",
    ),
    ("--eta", float, "X", "the learning rate at the start, above 0"),
    ("--batch-size", int, "N", "examples per batch"),
    ("--noise", float, "X", "how far the task's points stray from their clean places, 0 to 0.5"),
    ("--train-share", float, "X", "the share of the task's points trained on, 0.1 to 0.9; the rest are the test set"),
    ("--seed", int, "S", "seed of the net's first parameters and of the task's points and batches"),
    ("--target", int, "N", "batches to train before idling"),
    ("--report-every", int, "N", "a parameter snapshot every N batches (0: only when asked)"),
    ("--pace", float, "N", "at most N batches a second, to watch it slowly (0, the default: flat out)"),
    (
        "--eta-schedule",
        str,
        "B:X,...",
        "eta X from batch B on, for each pair (0:0.3,1000:0.36: a population's schedule, replayed)",
    ),
)

# The settings `nnobs set` changes: every command of the registry with a flag, in its order.
SETTINGS = tuple(name for name, command in COMMANDS.items() if command.flag is not None)


def setting_flag(setting: str) -> str:
    """The flag that spells a setting: report_every's is --report-every."""
    return "--" + setting.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The whole command: --runs, then one sub-parser per verb, in the order `nnobs --help` lists them."""
    parser = argparse.ArgumentParser(
        prog="nnobs",
        description="Start, watch and steer nnobs training runs: the page's twin, over the same files.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--runs", metavar="DIR", help="the runs root, where each run is a directory (default: $NNOBS_RUNS, else ./runs)"
    )
    verbs = parser.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_VerbParser)
    add_launcher_flags(
        _verb_on_run(
            verbs,
            "start",
            "start the run's worker (the process that trains) unless one is alive (or its Slurm "
            "job is queued); a new name creates the run",
        )
    )
    _add_lab_verbs(verbs)
    _add_steering_verbs(verbs)
    return parser


class _VerbParser(argparse.ArgumentParser):
    """A verb's parser, which refuses what it does not know itself: argparse would leave it to the top-level parser,
    whose usage names no verb's flags (`nnobs set --etaa` would print `nnobs [-h] [--runs DIR] ACTION`)."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, unknown = super().parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return parsed, unknown


def _verb(verbs: Verbs, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """A verb's sub-parser, with the exit codes after its help."""
    return verbs.add_parser(
        name,
        help=help_text,
        description=description,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _verb_on_run(verbs: Verbs, name: str, help_text: str) -> argparse.ArgumentParser:
    """A verb on one run, named by an optional RUN (default: the default run)."""
    p = _verb(verbs, name, help_text, help_text)
    p.add_argument(
        "run", nargs="?", default=DEFAULT_RUN, metavar="RUN", help=f"the run's name (default: {DEFAULT_RUN})"
    )
    return p


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    """--tensorboard LOGDIR or --csv FILE, and the tag that is the loss."""
    source = p.add_mutually_exclusive_group()
    source.add_argument("--tensorboard", metavar="LOGDIR", type=Path, help="a TensorBoard log directory")
    source.add_argument("--csv", metavar="FILE", type=Path, help="a CSV file with a header row")
    p.add_argument(
        "--loss",
        metavar="TAG",
        help="the scalar that is the training loss (default: loss, or one named like train/loss)",
    )


def _add_lab_verbs(verbs: Verbs) -> None:
    """run, import, new, sweep, fork and list: the verbs that make runs, or list them."""
    p = _verb(
        verbs,
        "run",
        "start your own training script detached, as the run's worker, and record how",
        "Start COMMAND (a script using nnobs.Run) detached from this shell, output to the run's "
        "worker.log, as the run's one worker; its command line and directory are recorded, so the page's "
        "Start and Restart and `nnobs restart` start it again, resuming from its checkpoint.",
    )
    p.add_argument(
        "run", metavar="RUN", help="the run's name (the script's nnobs.Run serves it, whatever name its code gives)"
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="[--wandb] [--on slurm ...] -- COMMAND",
        help="the command to start, after --; before it, --wandb (a script written for W&B: its `import wandb` is "
        "nnobs's) and where it runs (--on slurm, --time...: see start)",
    )
    p = _verb(
        verbs,
        "import",
        "make a read-only run of a run file, a TensorBoard log or a CSV file written elsewhere",
        "Copy FILE, one JSON record a line (the notebook's, say), or the scalars of a TensorBoard log "
        "(--tensorboard LOGDIR) or a CSV file (--csv FILE), into a new run RUN that the page and the CLI read; "
        "nothing serves it, so it cannot be started or steered.",
    )
    p.add_argument("run", metavar="RUN", help="the new run's name")
    p.add_argument("file", metavar="FILE", type=Path, nargs="?", help="the run file to import")
    _add_log_flags(p)
    p = _verb(
        verbs,
        "alert",
        "send alerts to a webhook or a command when runs crash, stall, diverge, cross a threshold...",
        "Add a rule (--webhook URL, Slack's incoming-webhook JSON with --slack, or --command CMD) and start the "
        "runs root's alert watcher, a small detached process that sends each alert once, whether or not a page is "
        "open; --off stops it and forgets the rules; with neither, says what is set and sent.",
    )
    to = p.add_mutually_exclusive_group()
    to.add_argument("--webhook", metavar="URL", help="POST each alert there as JSON")
    to.add_argument("--command", metavar="CMD", help="run CMD with each alert's JSON on its stdin")
    to.add_argument("--off", action="store_true", help="stop the watcher and forget every rule")
    to.add_argument("--start", action="store_true", help="start the watcher again with the rules set (after a reboot)")
    p.add_argument(
        "--slack", action="store_true", help='with --webhook: Slack\'s incoming-webhook JSON ({"text": ...})'
    )
    p.add_argument(
        "--when",
        metavar="STATES",
        help="comma-separated: crashed, stalled, diverged, not learning, loss rose, low disk, cannot write, "
        "spike (the loss 4 times its smoothed line), target reached, alert (a script's run.alert); "
        "default: all but target reached",
    )
    p.add_argument(
        "--threshold",
        metavar="METRIC>X",
        action="append",
        default=[],
        help="a metric crossing X: loss>5, test_loss<0.1",
    )
    p.add_argument("--run", metavar="RUN", action="append", help="only this run (repeat for more; default: every run)")
    p = _verb(
        verbs,
        "follow",
        "show a training that writes TensorBoard or CSV logs, live, as it writes them",
        "Make RUN show the scalars of a TensorBoard log (--tensorboard LOGDIR, the folder SummaryWriter writes "
        "to) or a CSV file (--csv FILE) and follow it: a detached follower adds what the log gains every half "
        "second. The training is not touched and cannot be steered; stop, start and restart end or resume "
        "following.",
    )
    p.add_argument("run", metavar="RUN", help="the run's name (a new one, or one that follows this log already)")
    _add_log_flags(p)
    p = _verb(
        verbs,
        "new",
        "create a run of a built-in task and net, and start it",
        "Create RUN training TASK with the net NET (e.g. 2x8tx8tx1t: 2 inputs, two hidden "
        "layers of 8 with tanh, one tanh output), and start its worker. Nothing is created when a "
        "setting is refused.",
    )
    p.add_argument("run", metavar="RUN", help="the new run's name")
    for flag, kind, meta, text in NEW_RUN_FLAGS:
        p.add_argument(flag, type=kind, metavar=meta, help=text)
    add_launcher_flags(p)
    _add_sweep(verbs)
    p = _verb(
        verbs,
        "fork",
        "start a new run from another run's checkpoint, with some settings changed",
        "Start NEW from FROM's latest checkpoint (or its newest kept one at or before "
        "--at), with the same task, net and batches to come, and the settings given changed. NEW "
        "records where it came from.",
    )
    p.add_argument("parent", metavar="FROM", help="the run to fork")
    p.add_argument("run", metavar="NEW", help="the new run's name")
    p.add_argument("--eta", type=float, metavar="X", help="the fork's learning rate (default: the parent's)")
    p.add_argument("--target", type=int, metavar="N", help="the fork's target batch (default: the parent's)")
    p.add_argument("--at", type=int, metavar="BATCH", help="fork from the newest kept checkpoint at or before BATCH")
    p.add_argument(
        "--yes", action="store_true", help="fork even when that checkpoint is under half of --at (refused without)"
    )
    p = _verb(
        verbs,
        "list",
        "one line per run: state, task and net, batch, loss, best loss, test loss and its batch, rate, heartbeat",
        "Every run under the runs root, in the order they were made.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead")
    p.add_argument(
        "--sort",
        choices=LIST_ORDERS,
        default="created",
        help="the order of the rows: when made (the default), name, state, batch, loss, best loss, test loss or rate "
        "(numbers highest first but the losses, lowest first; runs without one last). The loss is the mean of the "
        "newest 100 batches or more, the best the lowest that mean has been",
    )


def _add_sweep(verbs: Verbs) -> None:
    p = _verb(
        verbs,
        "sweep",
        "create one run per combination of etas and seeds, and train them all",
        "Create NAME-eta<X>-seed<S> for every combination of the etas and seeds given, "
        "with the other settings alike, and train them: locally at most --parallel at once (each "
        "stopped at its target, the next started), or --on slurm as one job array. Prints the compare "
        "page's address for them. Nothing is created when a setting or a name is refused.",
    )
    p.add_argument("run", metavar="NAME", help="the sweep's name: its runs are named NAME-eta0.1-seed2 and so on")
    p.add_argument("--eta", metavar="X,Y,...", help="learning rates, separated by commas")
    p.add_argument("--seed", metavar="S,T,...", help="seeds, separated by commas")
    for flag, kind, meta, text in NEW_RUN_FLAGS:
        if flag not in ("--eta", "--seed"):
            p.add_argument(flag, type=kind, metavar=meta, help=text)
    p.add_argument(
        "--parallel",
        type=whole_number,
        metavar="K",
        help="at most K runs train at once (locally default 2; on Slurm, the array's task limit)",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help=f"the monitor's address, for the compare link (default: $NNOBS_URL, else {sweep.DEFAULT_URL})",
    )
    pbt = p.add_argument_group(
        "population-based training",
        "--pbt makes NAME-m0 ... NAME-m<N-1>, each with an eta drawn log-uniformly from --eta LO..HI, and starts "
        "the population's controller: every --interval batches the bottom --quantile of the members by --metric "
        "take a top member's checkpoint in place, with its eta times 1.2 or 0.8, or (with probability --resample) "
        "one drawn afresh. After -- a command (`-- python train.py`): a population of that script's runs, which must "
        "save and load its state through nnobs.Run. `nnobs sweep NAME --pbt` alone starts a stopped controller "
        "again; --stop stops it.",
    )
    pbt.add_argument("--pbt", action="store_true", help="population-based training instead of a grid")
    pbt.add_argument("--population", type=whole_number, metavar="N", help="members (default 8)")
    pbt.add_argument(
        "--interval",
        type=whole_number,
        metavar="BATCHES",
        help="batches between exploits (default: a tenth of the target)",
    )
    pbt.add_argument(
        "--quantile", type=float, metavar="Q", help="share of members exploited each interval (default 0.25)"
    )
    pbt.add_argument(
        "--resample",
        type=float,
        metavar="P",
        help="probability of a fresh eta instead of a perturbed one (default 0.25)",
    )
    pbt.add_argument(
        "--metric",
        metavar="NAME",
        help="what ranks the members, lower better: test_loss (the default where the task has a test set) or loss; "
        "a script's, any metric it logs (default loss)",
    )
    pbt.add_argument("--wait", action="store_true", help="stay, saying each decision, until the population is done")
    pbt.add_argument(
        "--stop", action="store_true", help="stop the population's controller (its members idle at their targets)"
    )
    add_launcher_flags(p)


def _add_steering_verbs(verbs: Verbs) -> None:
    """status, set, tell-state, rewind, reinit, stop, restart and tail: the verbs on one existing run."""
    _verb_on_run(
        verbs,
        "status",
        "say how the run is doing: its state, batch, loss, learning rate, state-report interval, pace, "
        "worker generation and pid, and when the worker last wrote",
    ).add_argument("--json", action="store_true", help="print one JSON object instead")
    p = _verb_on_run(verbs, "set", "change the target, the learning rate, the state-report interval or the pace")
    for setting in SETTINGS:
        flag = COMMANDS[setting].flag
        assert flag is not None, f"{setting} is listed in SETTINGS for its flag"
        p.add_argument(setting_flag(setting), dest=setting, type=flag.kind, metavar=flag.metavar, help=flag.help)
    p.add_argument(
        "--no-wait", action="store_true", help="send and return at once, without waiting for the worker's answer"
    )
    _verb_on_run(verbs, "tell-state", "report the full parameter vector (the state vector) now")
    p = _verb_on_run(verbs, "rewind", "go back to the newest kept checkpoint at or before a batch, as a new generation")
    p.add_argument(
        "--to",
        type=int,
        required=True,
        metavar="BATCH",
        help="go back to the newest kept checkpoint at or before this batch",
    )
    p.add_argument(
        "--yes", action="store_true", help="rewind even when it throws away more than half of the run (refused without)"
    )
    p = _verb_on_run(verbs, "reinit", "start the net afresh from new parameters; the run's history so far is kept")
    p.add_argument(
        "--seed", type=int, metavar="S", help="draw the parameters with seed S (default: the run's own seed)"
    )
    _verb_on_run(
        verbs, "stop", f"shut the worker down and wait for its final record (kill -9 after {STOP_GRACE_S:.0f} s)"
    )
    _verb_on_run(
        verbs, "restart", "stop the worker if it is alive, then start a new generation from the last checkpoint"
    )
    p = _verb_on_run(verbs, "tail", "print the run's last records, one JSON object a line")
    p.add_argument(
        "-n",
        "--lines",
        type=tail_lines,
        default=("last", TAIL_LINES),
        metavar="N",
        help=f"print the last N records (default: {TAIL_LINES}); +K: from the K-th record on, so +1 prints every one",
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then keep printing new records as the worker writes them (Ctrl-C ends)",
    )
