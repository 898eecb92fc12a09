"""The `nnobs` command: start, watch and steer runs from a shell, over the same code as the page."""

from __future__ import annotations

import argparse
import json
import sys
import time

from nnobs.control import check_command
from nnobs.errors import NnobsError
from nnobs.history import RunHistory
from nnobs.records import RecordReader
from nnobs.runs import (
    DEFAULT_RUN,
    STOP_GRACE_S,
    RunDir,
    queue_command,
    read_history,
    restart_worker,
    run_status,
    start_worker,
    stop_worker,
)

ANSWER_TIMEOUT_S = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnobs", description="Start, watch and steer nnobs training runs.")
    parser.add_argument("--runs", metavar="DIR", help="runs root (default: $NNOBS_RUNS or ./runs)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("run", nargs="?", default=DEFAULT_RUN, help=f"run name (default: {DEFAULT_RUN})")
        return p

    action("start", "start the run's worker if none is alive")
    action("status", "state, batch, target, eta, loss, generation, pid, heartbeat age").add_argument(
        "--json", action="store_true", help="print one JSON object"
    )
    p = action("set", "change target batches, learning rate or state-report interval")
    p.add_argument("--target", type=int, help="train until this many batches")
    p.add_argument("--eta", type=float, help="learning rate, > 0")
    p.add_argument("--report-every", type=int, help="state-vector report every N batches (0: off)")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the worker's answer")
    action("tell-state", "ask for a state-vector report now")
    action("stop", "shut the worker down and wait for its final record")
    action("restart", "start a new worker generation from the last checkpoint")
    action("tail", "print the run's records").add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    return parser


def _await_answers(answers: RecordReader, ids: list[str], timeout: float = ANSWER_TIMEOUT_S) -> int:
    """Print the worker's answer to each command id, reading only what is appended; 0 if all were acknowledged."""
    deadline = time.monotonic() + timeout
    history = RunHistory()
    while True:
        history.add_lines(answers.read_new_lines())
        if all(i in history.answers for i in ids) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    code = 0
    for command_id in ids:
        answer = history.answers.get(command_id)
        if answer is None:
            print(f"{command_id}: pending (no answer from the worker within {timeout:.0f} s; is it running?)")
            code = 1
        elif answer.ok:
            print(f"{command_id}: acknowledged at batch {answer.batch:,}")
        else:
            print(f"{command_id}: rejected: {answer.reason}")
            code = 1
    return code


def _send(run: RunDir, commands: list[tuple[str, object]], wait: bool = True) -> int:
    for cmd, value in commands:
        check_command(cmd, value)  # refuse here, with the worker's own words, before anything is written
    answers = RecordReader(run.run_file)
    answers.offset = run.run_file.stat().st_size if run.run_file.exists() else 0  # answers come after this
    sent = [queue_command(run, cmd, value, by="cli") for cmd, value in commands]
    for command in sent:
        print(f"sent {command['cmd']}{'' if command['value'] is None else ' ' + str(command['value'])} as {command['id']}")
    return _await_answers(answers, [c["id"] for c in sent]) if wait else 0


def _format_status(status) -> str:
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    loss = "diverged" if status.diverged else num(status.loss, ".6g")
    lines = [
        f"run        {status.run}",
        f"state      {status.state}",
        f"batch      {status.batch:,} of {num(status.target, ',')}",
        f"loss       {loss}",
        f"eta        {num(status.eta, 'g')}",
        f"generation {num(status.generation, 'd')}",
        f"pid        {num(status.pid, 'd')}",
        f"heartbeat  {num(status.heartbeat_age_s, '.1f')} s ago",
    ]
    if status.error:
        lines.append(f"error      {status.error}")
    if status.skipped_lines:
        lines.append(f"skipped    {status.skipped_lines:,} unreadable lines of run.jsonl")
    return "\n".join(lines)


def _tail(run: RunDir, follow: bool) -> int:
    reader = RecordReader(run.run_file)
    try:
        while True:
            for record in reader.read_new():
                print(json.dumps(record), flush=True)
            if not follow:
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0


def run_action(args: argparse.Namespace) -> int:
    run = RunDir.named(args.run, args.runs)
    if args.action == "start":
        print(f"{run.name}: worker {start_worker(run, by='cli')} is alive")
        return 0
    if args.action in ("set", "tell-state", "stop", "restart", "tail") and not run.exists():
        raise NnobsError(f"no run named {run.name!r} in {run.path.parent}; `nnobs start {run.name}` creates it")
    if args.action == "status":
        status = run_status(run, read_history(run))
        print(json.dumps(status.as_dict()) if args.json else _format_status(status))
        return 0
    if args.action == "set":
        commands = [(c, v) for c, v in (("target", args.target), ("eta", args.eta), ("report_every", args.report_every)) if v is not None]
        if not commands:
            raise NnobsError("set needs at least one of --target, --eta, --report-every")
        return _send(run, commands, wait=not args.no_wait)
    if args.action == "tell-state":
        return _send(run, [("tell_state", None)])
    if args.action == "stop":
        if stop_worker(run, by="cli stop"):
            status = run_status(run, read_history(run))
            if status.state == "crashed":  # no shutdown record: it had to be killed
                print(f"{run.name}: killed at batch {status.batch:,}: it did not obey the shutdown within "
                      f"{STOP_GRACE_S:.0f} s; start resumes from its last checkpoint")
            else:
                print(f"{run.name}: stopped at batch {status.batch:,}")
            return 0
        print(f"{run.name}: the worker did not stop in time", file=sys.stderr)
        return 1
    if args.action == "restart":
        pid = restart_worker(run, by="cli")
        status = run_status(run, read_history(run))
        print(f"{run.name}: worker {pid}, generation {status.generation}, at batch {status.batch:,}")
        return 0
    return _tail(run, args.follow)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run_action(args)
    except NnobsError as err:
        print(f"nnobs: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a directory we may not write, a full disk: name the file, spare the traceback
        where = f" on {err.filename}" if err.filename else ""
        print(f"nnobs: {args.action} failed{where}: {err.strerror or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
