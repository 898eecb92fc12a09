"""The `nnobs` command: start, watch and steer runs from a shell, over the same code as the page."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from nnobs.cli import alert_verb, lab_verbs, run_verbs
from nnobs.cli.parser import build_parser
from nnobs.cli.tail import tail
from nnobs.protocol.errors import NnobsError

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # refused before anything was sent: a value, a run name, a missing run
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell counts it

# Each verb's function: it takes the parsed arguments and returns the exit code.
VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start": run_verbs.start,
    "run": lab_verbs.run_script,
    "import": lab_verbs.import_file,
    "follow": lab_verbs.follow,
    "alert": alert_verb.alert,
    "new": lab_verbs.new,
    "sweep": lab_verbs.sweep,
    "fork": lab_verbs.fork,
    "list": lab_verbs.list_runs,
    "status": run_verbs.status,
    "set": run_verbs.set_settings,
    "tell-state": run_verbs.tell_state,
    "rewind": run_verbs.rewind,
    "reinit": run_verbs.reinit,
    "stop": run_verbs.stop,
    "restart": run_verbs.restart,
    "tail": tail,
}


def run_action(args: argparse.Namespace) -> int:
    """Do the verb the arguments name; its exit code."""
    return VERBS[args.action](args)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not complain of the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """`nnobs sweep ... -- COMMAND`: the arguments before the first --, and the script's command after it (a sweep
    of a script's runs); `nnobs run` takes its command itself."""
    if "--" in argv:
        at = argv.index("--")
        verbs = [arg for arg in argv[:at] if arg in VERBS]
        if verbs and verbs[0] == "sweep":
            return argv[:at], argv[at + 1 :]
    return argv, []


def main(argv: list[str] | None = None) -> int:
    """Parse argv (default: the command line), do the verb, and return the exit code; refusals are told on stderr."""
    argv, command = _split_command(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command = command if args.action == "sweep" else getattr(args, "command", None)
    try:
        code = run_action(args)
        sys.stdout.flush()  # here, where a closed pipe can still be told apart from a failure
        return code
    except BrokenPipeError:  # whoever read our output has gone (`nnobs tail | head`): nothing is wrong
        _quiet_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except NnobsError as err:
        print(f"nnobs: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:  # a directory we may not write, a full disk: name the file, spare the traceback
        where = f" on {err.filename}" if err.filename else ""
        print(f"nnobs: {args.action} failed{where}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
