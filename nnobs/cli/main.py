"""The `nnobs` command: start, watch and steer runs from a shell, over the same code as the page."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from nnobs.lab import sweep
from nnobs.lab.create import fork_run, new_run
from nnobs.launching.base import STOP_GRACE_S
from nnobs.launching.lifecycle import (
    active_job,
    import_run,
    launcher_settings,
    record_launch,
    restart_worker,
    run_status,
    set_launcher,
    start_worker,
    started_outside,
    stop_worker,
    worker_pid,
)
from nnobs.launching.status import RunStatus
from nnobs.protocol.commands import check_command
from nnobs.protocol.control import queue_command
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.jobs import KINDS, JobRecord, LauncherSettings, sbatch_options
from nnobs.protocol.records import RecordReader
from nnobs.protocol.rundir import DEFAULT_RUN, RunDir, is_imported, list_runs, runs_root
from nnobs.protocol.states import state_of
from nnobs.reading.history import RunHistory
from nnobs.reading.origin import fork_origin
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views import wording
from nnobs.views.overview import run_rows

ANSWER_TIMEOUT_S = 10.0
TAIL_LINES = 10  # records tail prints when not told how many
TAIL_BLOCK = 64 * 1024  # tail reads a long file backwards from its end in blocks of this many bytes
FOLLOW_EVERY_S = 0.2  # how often tail -f looks for new records

EXIT_CODES = """\
exit codes: 0 done; 1 the worker rejected a command or did not answer it, or (status) no such run;
2 bad input, refused before anything is sent: a value the worker would refuse, a run name, a missing run"""


# What an acknowledged command did, where the batch alone does not say it.
AFTERWARDS = {
    "rewind": " (the kept checkpoint it went back to; training goes on from there as a new generation)",
    "reinit": " (fresh parameters from there on, as a new generation)",
}


# `nnobs new`'s settings: flag, type, metavar, help; each lands in the RunConfig field of its name.
NEW_RUN_FLAGS = (
    ("--task", str, "TASK", "what to learn: xor (the default), circle, noisy-xor, gauss, spiral, plane or sine"),
    ("--net", str, "SPEC", "the net: input width, then x<width> per layer with its activation's letter (t tanh, "
     "r relu, s sin, g sigmoid, none: identity), e.g. 2x8tx8tx1t"),
    ("--eta", float, "X", "the learning rate at the start, above 0"),
    ("--batch-size", int, "N", "examples per batch"),
    ("--noise", float, "X", "how far the task's points stray from their clean places, 0 to 0.5"),
    ("--train-share", float, "X", "the share of the task's points trained on, 0.1 to 0.9; the rest are the test set"),
    ("--seed", int, "S", "seed of the net's first parameters and of the task's points and batches"),
    ("--target", int, "N", "batches to train before idling"),
    ("--report-every", int, "N", "a parameter snapshot every N batches (0: only when asked)"),
)


def _tail_count(text: str) -> tuple[str, int]:
    """-n's value: N for the last N records, +K for every record from the K-th on (as Unix tail)."""
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number N (the last N records) or +K (from the K-th on), not {text!r}")
    return ("from", max(number, 1)) if text.startswith("+") else ("last", number)


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _launcher_flags(p: argparse.ArgumentParser) -> None:
    """--on and what a Slurm job asks for; without --on a run keeps the launcher it has (a new run: local)."""
    p.add_argument("--on", choices=KINDS, help="where the worker runs: local (this machine) or slurm (a job on the "
                   "cluster, through submitit); default: the launcher the run has, else local")
    p.add_argument("--partition", metavar="P", help="the Slurm partition (default: the cluster's)")
    p.add_argument("--time", metavar="LIMIT", help="the job's time limit, as Slurm writes it: 1:00:00, 90, 2-12 "
                   "(default 1:00:00; at its end the run checkpoints and the job is requeued)")
    p.add_argument("--cpus", type=_count, metavar="N", help="CPUs for the worker (sbatch --cpus-per-task)")
    p.add_argument("--gpus", type=_count, metavar="N", help="GPUs for the worker (sbatch --gpus-per-node)")
    p.add_argument("--sbatch", metavar="OPTIONS", help="more sbatch options in their long form, given after an =: --sbatch=\"--qos=high --account=lab\"")
    p.add_argument("--no-requeue", action="store_true", help="end the job on preemption or at its time limit, "
                   "after a checkpoint, instead of requeueing it")


def _launcher(args: argparse.Namespace, run: RunDir | None) -> LauncherSettings | None:
    """The launcher the flags ask for (over the run's own when --on is not given); None when no flag is given."""
    given = {"partition": args.partition, "time": args.time, "cpus": args.cpus, "gpus": args.gpus}
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnobs",
        description="Start, watch and steer nnobs training runs: the page's twin, over the same files.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", metavar="DIR", help="the runs root, where each run is a directory (default: $NNOBS_RUNS, else ./runs)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("run", nargs="?", default=DEFAULT_RUN, metavar="RUN", help=f"the run's name (default: {DEFAULT_RUN})")
        return p

    _launcher_flags(action("start", "start the run's worker (the process that trains) unless one is alive (or its Slurm "
                           "job is queued); a new name creates the run"))
    p = sub.add_parser("run", help="start your own training script detached, as the run's worker, and record how",
                       description="Start COMMAND (a script using nnobs.Run) detached from this shell, output to the run's "
                       "worker.log, as the run's one worker; its command line and directory are recorded, so the page's "
                       "Start and Restart and `nnobs restart` start it again, resuming from its checkpoint.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="the run's name (the script's nnobs.Run serves it, whatever name its code gives)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="[--on slurm ...] -- COMMAND",
                   help="the command to start, after --; before it, where it runs (--on slurm, --time...: see start)")
    p = sub.add_parser("import", help="make a read-only run of a run file written elsewhere (the notebook's, say)",
                       description="Copy FILE, one JSON record a line, into a new run RUN that the page and the CLI "
                       "read; nothing serves it, so it cannot be started or steered.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="the new run's name")
    p.add_argument("file", metavar="FILE", type=Path, help="the run file to import")
    p = sub.add_parser("new", help="create a run of a built-in task and net, and start it",
                       description="Create RUN training TASK with the net NET (e.g. 2x8tx8tx1t: 2 inputs, two hidden "
                       "layers of 8 with tanh, one tanh output), and start its worker. Nothing is created when a "
                       "setting is refused.", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="the new run's name")
    for flag, kind, meta, text in NEW_RUN_FLAGS:
        p.add_argument(flag, type=kind, metavar=meta, help=text)
    _launcher_flags(p)
    p = sub.add_parser("sweep", help="create one run per combination of etas and seeds, and train them all",
                       description="Create NAME-eta<X>-seed<S> for every combination of the etas and seeds given, "
                       "with the other settings alike, and train them: locally at most --parallel at once (each "
                       "stopped at its target, the next started), or --on slurm as one job array. Prints the compare "
                       "page's address for them. Nothing is created when a setting or a name is refused.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="NAME", help="the sweep's name: its runs are named NAME-eta0.1-seed2 and so on")
    p.add_argument("--eta", metavar="X,Y,...", help="learning rates, separated by commas")
    p.add_argument("--seed", metavar="S,T,...", help="seeds, separated by commas")
    for flag, kind, meta, text in NEW_RUN_FLAGS:
        if flag not in ("--eta", "--seed"):
            p.add_argument(flag, type=kind, metavar=meta, help=text)
    p.add_argument("--parallel", type=_count, metavar="K", help="at most K runs train at once (locally default 2; "
                   "on Slurm, the array's task limit)")
    p.add_argument("--url", metavar="URL", help=f"the monitor's address, for the compare link (default: $NNOBS_URL, "
                   f"else {sweep.DEFAULT_URL})")
    _launcher_flags(p)
    p = sub.add_parser("fork", help="start a new run from another run's checkpoint, with some settings changed",
                       description="Start NEW from FROM's latest checkpoint (or its newest kept one at or before "
                       "--at), with the same task, net and batches to come, and the settings given changed. NEW "
                       "records where it came from.", epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parent", metavar="FROM", help="the run to fork")
    p.add_argument("run", metavar="NEW", help="the new run's name")
    p.add_argument("--eta", type=float, metavar="X", help="the fork's learning rate (default: the parent's)")
    p.add_argument("--target", type=int, metavar="N", help="the fork's target batch (default: the parent's)")
    p.add_argument("--at", type=int, metavar="BATCH", help="fork from the newest kept checkpoint at or before BATCH")
    p = sub.add_parser("list", help="one line per run: state, task and net, batch, loss, test loss, rate, heartbeat",
                       description="Every run under the runs root, in the order they were made.", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead")
    p.add_argument("--sort", choices=LIST_ORDERS, default="created",
                   help="the order of the rows: when made (the default), name, state, batch, loss, test loss or rate "
                   "(numbers highest first but the losses, lowest first; runs without one last)")
    action(
        "status",
        "say how the run is doing: its state, batch, loss, learning rate, state-report interval, pace, "
        "worker generation and pid, and when the worker last wrote",
    ).add_argument("--json", action="store_true", help="print one JSON object instead")
    p = action("set", "change the target, the learning rate, the state-report interval or the pace")
    p.add_argument("--target", type=int, metavar="N", help="train until batch N, then idle")
    p.add_argument("--eta", type=float, metavar="X", help="the learning rate, above 0")
    p.add_argument("--report-every", type=int, metavar="N",
                   help="report the full parameter vector every N batches (0: only when asked, by tell-state)")
    p.add_argument("--pace", type=float, metavar="N", help="train at most N batches a second, to watch it slowly (0: flat out)")
    p.add_argument("--min-free", type=float, metavar="MB",
                   help="pause (LOW DISK) while the run's filesystem has less than MB megabytes free (default 100; 0: never)")
    p.add_argument("--no-wait", action="store_true", help="send and return at once, without waiting for the worker's answer")
    action("tell-state", "report the full parameter vector (the state vector) now")
    p = action("rewind", "go back to the newest kept checkpoint at or before a batch, as a new generation")
    p.add_argument("--to", type=int, required=True, metavar="BATCH", help="go back to the newest kept checkpoint at or before this batch")
    p = action("reinit", "start the net afresh from new parameters; the run's history so far is kept")
    p.add_argument("--seed", type=int, metavar="S", help="draw the parameters with seed S (default: the run's own seed)")
    action("stop", f"shut the worker down and wait for its final record (kill -9 after {STOP_GRACE_S:.0f} s)")
    action("restart", "stop the worker if it is alive, then start a new generation from the last checkpoint")
    p = action("tail", "print the run's last records, one JSON object a line")
    p.add_argument("-n", "--lines", type=_tail_count, default=("last", TAIL_LINES), metavar="N",
                   help=f"print the last N records (default: {TAIL_LINES}); +K: from the K-th record on, so +1 prints every one")
    p.add_argument("-f", "--follow", action="store_true", help="then keep printing new records as the worker writes them (Ctrl-C ends)")
    return parser


def _describe(command: dict) -> str:
    """A command as the user would say it: "pace 100", "eta 0.05", "tell_state"."""
    value = command["value"]
    if value is None:
        return command["cmd"]
    return f"{command['cmd']} {value:g}" if isinstance(value, float) else f"{command['cmd']} {value}"


def _await_answers(run: RunDir, answers: RecordReader, sent: list[dict], timeout: float = ANSWER_TIMEOUT_S) -> int:
    """Print the worker's answer to each command sent, reading only what is appended; 0 if all were acknowledged.

    Waits up to timeout, or only until no worker is alive: a dead run answers nothing until it is started.
    """
    deadline = time.monotonic() + timeout
    history = RunHistory()
    while True:
        alive = worker_pid(run) is not None  # looked at before reading, so an answer written as it exits is read
        history.add_lines(answers.read_new_lines())
        if all(c["id"] in history.answers for c in sent) or not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    code = 0
    for command in sent:
        answer = history.answers.get(command["id"])
        if answer is None:
            queued = None if alive else active_job(run)
            why = (f"no answer from the worker within {timeout:.0f} s" if alive
                   else f"job {queued.job_id} is queued: its worker applies it when it starts" if queued
                   else "no worker is alive to answer; the next start applies it")
            print(f"{_describe(command)}: pending: {why}")
            code = 1
        elif answer.ok:
            print(f"{_describe(command)}: acknowledged at batch {answer.batch:,}{AFTERWARDS.get(command['cmd'], '')}")
        else:
            print(f"{_describe(command)}: rejected: {answer.reason}")
            code = 1
    return code


def _send(run: RunDir, commands: list[tuple[str, object]], wait: bool = True) -> int:
    for cmd, value in commands:
        check_command(cmd, value)  # refuse here, with the worker's own words, before anything is written
    answers = RecordReader(run.run_file)
    answers.offset = run.run_file.stat().st_size if run.run_file.exists() else 0  # answers come after this
    sent = [queue_command(run, cmd, value, by="cli") for cmd, value in commands]
    for command in sent:
        print(f"sent {_describe(command)} (command {command['id']})")
    return _await_answers(run, answers, sent) if wait else 0


def _format_status(run: RunDir, status: RunStatus) -> str:
    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    loss = "diverged (no longer a number)" if status.diverged else num(status.loss, ".6g")
    if status.best_loss is not None:
        loss += f", best {status.best_loss:.6g}"
    if status.report_every is None:
        reports = "-"
    elif status.report_every == 0:
        reports = "only when asked (tell-state)"
    else:
        reports = f"every {status.report_every:,} batches"
    if status.target is not None and status.batch > status.target:
        batch = f"{status.batch:,}, past the target of {status.target:,} (lowered since): it waits until the target is raised"
    else:
        batch = f"{status.batch:,} of {num(status.target, ',')} (the target)"
    pace = "flat out" if not status.pace else f"at most {status.pace:,g} batches a second"
    meaning = state.meaning if (state := state_of(status.label)) else ""
    lines = [
        f"run           {status.run}, in {os.path.abspath(run.path)}",
        f"state         {status.label}" + (f": {meaning}" if meaning else ""),
        f"batch         {batch}",
        f"loss          {loss}",
        f"eta           {num(status.eta, 'g')} (the learning rate)",
        f"state report  {reports} (the parameters, or a large net's summary)",
        f"pace          {pace}",
        f"generation    {num(status.generation, 'd')} (each start of the worker is one)",
    ]
    if status.job_id is not None:
        why = f": {status.reason}" if status.reason else ""
        lines.append(f"slurm job     {status.job_id} ({(status.job_state or 'unknown to the scheduler now').lower()}{why})")
    if status.pid is not None:
        lines += [f"worker pid    {status.pid}", f"heartbeat     {wording.ago(status.heartbeat_age_s)} (a live worker writes at least once a second)"]
    elif status.launcher == "slurm" and status.state not in ("queued", "stopped", "crashed"):
        lines.append(f"heartbeat     {wording.ago(status.heartbeat_age_s)} (a live worker writes at least once a second)")
    else:
        lines += ["worker pid    - (no worker is alive)", f"last record   {wording.ago(status.heartbeat_age_s)}"]
    if status.write_error:
        lines.append(f"cannot write  {status.write_error}")
    if status.state == "low disk":
        lines.append(f"low disk      {_low_disk(status)}")
    if status.error:
        lines.append(f"error         {status.error}")
    if status.skipped_lines:
        lines.append(f"skipped       {status.skipped_lines:,} unreadable lines of run.jsonl")
    return "\n".join(lines)


def _low_disk(status: RunStatus) -> str:
    """The low-disk pause in words: "3.2 MB free on the run's filesystem, below its floor (nnobs set --min-free)"."""
    free = "-" if status.free_bytes is None else f"{status.free_bytes / 1024 / 1024:.1f} MB"
    return f"{free} free on the run's filesystem, below its floor; it goes on when space is freed (or lower it: set --min-free)"


def _no_such_run(run: RunDir) -> str:
    """Why a run is not there, naming where it was looked for and what is there instead."""
    root = os.path.abspath(run.path.parent)
    if not os.path.isdir(root):
        return f"no run named {run.name!r}: the runs root {root} does not exist (choose it with --runs DIR or $NNOBS_RUNS)"
    there = list_runs(root)
    others = f"runs there: {', '.join(there)}" if there else "no runs there"
    return f"no run named {run.name!r} in {root} ({others}); `nnobs start {run.name}` creates it"


def _status(run: RunDir, as_json: bool) -> int:
    status = run_status(run, read_history(run))
    missing = not run.exists() and status.pid is None
    if missing:
        status = dataclasses.replace(status, state="absent")  # a directory without a config is no run
    if as_json:
        print(json.dumps({**status.as_dict(), "label": status.label}))
    elif not missing:  # a table of dashes would only hide the message
        print(_format_status(run, status))
    if missing:
        print(f"nnobs: {_no_such_run(run)}", file=sys.stderr)
        return 1
    return 0


def _is_record(line: bytes) -> bool:
    """True for a line holding a JSON object; torn lines and garbage are left out, as every reader does."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _last_records(path: Path, count: int) -> tuple[list[bytes], int]:
    """The last count records of the file, oldest first, and the offset just past its last complete line.

    Reads backwards from the end in blocks, so a long run file costs what its last lines cost. A line
    after the last newline is still being written (or was torn by a kill): it is left for a follower.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return [], 0
    with f:
        pos = os.fstat(f.fileno()).st_size
        complete_end: int | None = None  # where the last complete line ends, once seen
        carry = b""  # bytes from pos on not yet cut into lines: the end of a line whose start lies before pos
        found: list[bytes] = []  # newest first
        while pos > 0 and (complete_end is None or len(found) < count):
            step = min(TAIL_BLOCK, pos)
            pos -= step
            carry = os.pread(f.fileno(), step, pos) + carry
            if complete_end is None:
                newline = carry.rfind(b"\n")
                if newline < 0:
                    continue
                complete_end, carry = pos + newline + 1, carry[:newline]
            lines = carry.split(b"\n")
            carry = lines.pop(0) if pos > 0 else b""  # at the file's start the first line is whole
            for line in reversed(lines):
                if len(found) == count:
                    break
                if line.strip() and _is_record(line):
                    found.append(line)
    return found[::-1], complete_end or 0


def _write_records_from(path: Path, first: int, out) -> int:
    """Write every record from the first-th on (counting from 1) to out; return the offset past the last complete line."""
    seen = offset = 0
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return 0
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # still being written: a follower prints it once it is whole
            offset += len(line)
            if line.strip() and _is_record(line):
                seen += 1
                if seen >= first:
                    out.write(line)
    return offset


def _tail(run: RunDir, lines: tuple[str, int], follow: bool) -> int:
    out = sys.stdout.buffer
    how, count = lines
    if how == "last":
        records, offset = _last_records(run.run_file, count)
        out.writelines(record + b"\n" for record in records)
    else:
        offset = _write_records_from(run.run_file, count, out)
    out.flush()
    if not follow:
        return 0
    reader = RecordReader(run.run_file)
    reader.offset = offset
    try:
        while True:
            new = [line + b"\n" for line in reader.read_new_lines().splitlines() if line.strip() and _is_record(line)]
            if new:
                out.writelines(new)
                out.flush()
            time.sleep(FOLLOW_EVERY_S)
    except KeyboardInterrupt:
        return 0


def _stop(run: RunDir) -> int:
    if worker_pid(run) is None and active_job(run) is None:
        status = run_status(run, read_history(run))
        print(f"{run.name}: no worker is alive ({status.label}, at batch {status.batch:,}); nothing to stop")
        return 0
    stopped = stop_worker(run, by="cli stop")
    if not stopped:
        print(f"{run.name}: the worker did not stop in time", file=sys.stderr)
        return 1
    status = run_status(run, read_history(run))
    how = f" ({stopped.how})" if stopped.how else ""
    if status.state == "crashed":  # no shutdown record: it had to be killed
        print(f"{run.name}: killed at batch {status.batch:,}: it did not obey the shutdown within "
              f"{STOP_GRACE_S:.0f} s{how}; start resumes from its last checkpoint")
    else:
        print(f"{run.name}: stopped at batch {status.batch:,}{how}")
    return 0


def _started(run: RunDir, started: int | JobRecord) -> str:
    """What a start gave, in words: "worker 1234 is alive", or "job 17 on Slurm is queued (Priority)"."""
    if not isinstance(started, JobRecord):
        return f"worker {started} is alive"
    status = run_status(run, read_history(run))
    where = f" ({status.reason})" if status.state == "queued" and status.reason else ""
    return f"job {started.job_id} on Slurm is {status.label}{where}; its output is in {run.worker_log}"


def _script_launcher(run: RunDir, command: list[str]) -> tuple[LauncherSettings | None, list[str]]:
    """nnobs run's launcher flags, given before --, and the command after it."""
    if "--" not in command:
        return None, command
    at = command.index("--")
    flags = argparse.ArgumentParser(prog=f"nnobs run {run.name}", add_help=False, exit_on_error=False)
    _launcher_flags(flags)
    try:
        args, unknown = flags.parse_known_args(command[:at])
    except argparse.ArgumentError as err:
        raise NnobsError(f"nnobs run: {err}") from err
    if unknown:
        raise NnobsError(f"nnobs run: {' '.join(unknown)} refused: before -- come only where it runs (--on, --partition, "
                         "--time, --cpus, --gpus, --sbatch, --no-requeue); the command comes after --")
    return _launcher(args, run), command[at + 1 :]


def _run_script(run: RunDir, command: list[str]) -> int:
    """nnobs run: record how the script starts, then start it as the run's worker."""
    launcher, command = _script_launcher(run, command)
    pid = worker_pid(run)
    if pid is not None or active_job(run) is not None:
        raise NnobsError(f"{run.name} already has a live worker{f' (pid {pid})' if pid and pid > 0 else ''}; stop it first: "
                         f"nnobs stop {run.name}")
    if launcher is not None:
        set_launcher(run, launcher)
    recorded = record_launch(run, command, os.getcwd())
    started = start_worker(run, by="cli")
    print(f"{run.name}: {_started(run, started)}: {shlex.join(recorded)} in {os.getcwd()}, output in {run.worker_log}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """nnobs sweep: the runs of every combination, made, then trained here or submitted as one job array."""
    grid = {"eta": sweep.value_list(args.eta, float) if args.eta else None,
            "seed": sweep.value_list(args.seed, int) if args.seed else None}
    if not any(grid.values()):
        raise NnobsError("sweep needs --eta or --seed with values separated by commas, e.g. --eta 0.01,0.1,1")
    if args.parallel is not None and args.parallel < 1:
        raise NnobsError("--parallel must be at least 1")
    launcher = _launcher(args, None) or LauncherSettings()
    fields = {flag[2:].replace("-", "_") for flag, *_ in NEW_RUN_FLAGS} - set(sweep.SWEPT)
    base = RunConfig(**{name: getattr(args, name) for name in fields if getattr(args, name) is not None})
    runs = sweep.create(args.runs, sweep.plan(args.run, base, grid), launcher)
    print(f"{len(runs)} runs: {', '.join(run.name for run in runs)}")
    url = sweep.compare_url(args.url or os.environ.get("NNOBS_URL") or sweep.DEFAULT_URL, runs)
    if launcher.kind == "slurm":
        jobs = sweep.submit(runs, launcher, args.parallel)
        print(f"submitted to Slurm as job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} tasks)")
        print(f"compare them: {url}")
        return 0
    print(f"compare them: {url}")
    sweep.train_locally(runs, args.parallel or 2, print)
    return 0


def _new(run: RunDir, args: argparse.Namespace) -> int:
    """nnobs new: the flags given, over the defaults, checked before anything is created."""
    given = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_")) for flag, *_ in NEW_RUN_FLAGS}
    config = RunConfig(**{name: value for name, value in given.items() if value is not None})
    started = new_run(run, config, by="cli", launcher=_launcher(args, None))
    print(f"{run.name}: {_started(run, started)}, training {config.task} with {config.net}")
    return 0


LIST_ORDERS = ("created", "name", "state", "batch", "loss", "test_loss", "rate")


def _sorted_rows(rows: list, by: str) -> list:
    """Rows in the order asked for; a run without the value asked for goes last, whatever the order."""
    if by in ("created", "name", "state"):
        key = {"created": lambda r: (r.created, r.name), "name": lambda r: r.name, "state": lambda r: (r.label, r.name)}[by]
        return sorted(rows, key=key)
    sign = 1 if by in ("loss", "test_loss") else -1  # lowest loss first; most batches, fastest first
    return sorted(rows, key=lambda r: (getattr(r, by) is None, sign * (getattr(r, by) or 0), r.name))


def _list(root: str | None, as_json: bool, by: str = "created") -> int:
    rows = _sorted_rows(run_rows(root), by)
    if as_json:
        print(json.dumps([row.as_dict() for row in rows]))
        return 0
    if not rows:
        print(f"no runs in {runs_root(root)}")
        return 0
    table = [("RUN", "STATE", "TASK", "NET", "BATCH", "LOSS", "TEST LOSS", "BATCHES/S", "HEARTBEAT")]
    for row in rows:
        table.append((row.name, row.label, row.task, _clip(row.net, 32), f"{row.batch:,}", _num(row.loss, ".4g"),
                      _num(row.test_loss, ".4g"), _num(row.rate, ",.0f"), wording.ago(row.heartbeat_age_s)))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_action(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.runs, args.json, args.sort)
    if args.action == "sweep":
        return _sweep(args)
    run = RunDir.named(args.run, args.runs)
    if args.action == "start":
        launcher = _launcher(args, run)
        if launcher is not None:
            set_launcher(run, launcher)
        print(f"{run.name}: {_started(run, start_worker(run, by='cli'))}")
        return 0
    if args.action == "status":
        return _status(run, args.json)
    if args.action == "run":
        return _run_script(run, args.command)
    if args.action == "new":
        return _new(run, args)
    if args.action == "fork":
        parent = RunDir.named(args.parent, args.runs)
        pid = fork_run(parent, run, eta=args.eta, target=args.target, at=args.at, by="cli")
        origin = fork_origin(run) or {}
        print(f"{run.name}: forked from {parent.name} at batch {origin.get('batch', 0):,}; worker {pid} is alive")
        return 0
    if args.action == "import":
        print(f"{run.name}: {import_run(run, args.file):,} records imported from {args.file}, read-only")
        return 0
    if not run.exists():
        raise NnobsError(_no_such_run(run))
    if is_imported(run) and args.action not in ("tail", "stop"):
        raise NnobsError(started_outside(run))
    if args.action == "set":
        settings = (("target", args.target), ("eta", args.eta), ("report_every", args.report_every), ("pace", args.pace),
                    ("min_free", args.min_free))
        commands = [(cmd, value) for cmd, value in settings if value is not None]
        if not commands:
            raise NnobsError("set needs at least one of --target, --eta, --report-every, --pace, --min-free")
        return _send(run, commands, wait=not args.no_wait)
    if args.action == "tell-state":
        return _send(run, [("tell_state", None)])
    if args.action == "rewind":
        return _send(run, [("rewind", args.to)])
    if args.action == "reinit":
        return _send(run, [("reinit", args.seed)])
    if args.action == "stop":
        return _stop(run)
    if args.action == "restart":
        said: list[str] = []
        started = restart_worker(run, by="cli", said=said)
        status = run_status(run, read_history(run))
        how = "".join(f" (stopping, {how})" for how in said)
        trouble = f"; it waits: {status.write_error or _low_disk(status)}" if status.state in ("cannot write", "low disk") else ""
        if isinstance(started, JobRecord):
            print(f"{run.name}: {_started(run, started)}; it resumes from the checkpoint at batch {status.batch:,}{how}")
        else:
            print(f"{run.name}: worker {started}, generation {status.generation}, at batch {status.batch:,}{how}{trouble}")
        return 0
    return _tail(run, args.lines, args.follow)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not complain of the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = run_action(args)
        sys.stdout.flush()  # here, where a closed pipe can still be told apart from a failure
        return code
    except BrokenPipeError:  # whoever read our output has gone (`nnobs tail | head`): nothing is wrong
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        return 130
    except NnobsError as err:
        print(f"nnobs: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a directory we may not write, a full disk: name the file, spare the traceback
        where = f" on {err.filename}" if err.filename else ""
        print(f"nnobs: {args.action} failed{where}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
