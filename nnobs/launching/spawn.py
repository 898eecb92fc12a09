"""Starts a run's worker detached from whoever asked, prints its pid, and exits.

The worker is the built-in one (python -m nnobs.training.worker), or the command `nnobs run` recorded in
launch.json, run in its recorded directory. The asker waits for this short-lived process, so the
worker is nobody's child: it is not left a zombie under a long-lived server, and Ctrl-C on the
asker's terminal never reaches it. Only the standard library and nnobs's small file helpers are imported here, to
keep the hop cheap.
"""

import os
import subprocess
import sys
from pathlib import Path

from nnobs.protocol.files import SETTINGS_MOST_BYTES, open_file
from nnobs.protocol.jsontext import parse_json

# A folder whose `wandb` package is nnobs's W&B calls: first on the PYTHONPATH of a script run with `nnobs run --wandb`.
WANDB_SHIM = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "integrations", "wandb_shim"
)


def recorded_command(launch: Path) -> tuple[list[str], str, bool]:
    """The command and directory `nnobs run` recorded. It is run only from a file of the user who starts it, that no one
    else may write: a run directory shared with others must not let them choose what this user runs. The file is
    checked on the descriptor it is then read from: a link swapped in after a check by name would pass it."""
    try:
        with open_file(launch) as f:
            stat = os.fstat(f.fileno())
            if stat.st_uid != os.getuid() or stat.st_mode & 0o022:
                sys.exit(
                    f"{launch} is not yours alone (owner uid {stat.st_uid}, mode {stat.st_mode & 0o777:o}): its command "
                    "is not run; record it again with `nnobs run`"
                )
            text = f.read(SETTINGS_MOST_BYTES + 1)
    except OSError as err:  # a link or no regular file (UnsafeFile), or unreadable
        sys.exit(f"{launch}: {err}; its command is not run")
    try:
        if len(text) > SETTINGS_MOST_BYTES:
            raise ValueError(f"more than {SETTINGS_MOST_BYTES:,} bytes")
        recorded = parse_json(text)
        command, cwd, wandb = recorded["command"], recorded["cwd"], recorded.get("wandb", False)
    except (ValueError, KeyError, TypeError) as err:
        sys.exit(f"{launch} is unreadable ({err}): record the command again with `nnobs run`")
    if not (
        isinstance(command, list)
        and command
        and all(isinstance(a, str) for a in command)
        and isinstance(cwd, str)
        and isinstance(wandb, bool)
    ):
        sys.exit(f"{launch} holds no command line: record it again with `nnobs run`")
    return command, cwd, wandb


def worker_command(run_dir: Path, by: str) -> tuple[list[str], str, bool]:
    """What serves the run: the command `nnobs run` recorded, in its directory, else the built-in worker, in the run
    directory; and whether the script's `import wandb` is nnobs's. nnobs's own processes run with -P: the directory
    they start in never goes first on sys.path, so no package planted there (a shared folder's nnobs/) runs in place
    of this one."""
    launch = run_dir / "launch.json"
    if os.path.lexists(launch):  # a link there is refused by name, never taken for "no command recorded"
        return recorded_command(launch)
    where = os.path.abspath(run_dir)
    return [sys.executable, "-P", "-m", "nnobs.training.worker", where, by], where, False


def start_worker_process(run_dir: Path, by: str, env: dict[str, str], own_session: bool) -> subprocess.Popen:
    """Start what serves the run, its output appended to worker.log: on its own session (a local worker, out of reach
    of the asker's terminal) or in this process group (in a Slurm job, whose signals and kill must reach it)."""
    command, cwd, wandb = worker_command(run_dir, by)
    # The run a script serves, and who asked: its nnobs.Run reads them, whatever name its code gives.
    env = {**env, "NNOBS_RUN_DIR": os.path.abspath(run_dir), "NNOBS_STARTED_BY": by}
    if wandb:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [WANDB_SHIM, env.get("PYTHONPATH")]))
    return start_logged(command, cwd, env, run_dir / "worker.log", own_session)


def start_logged(
    command: list[str], cwd: str, env: dict[str, str], log_path: Path, own_session: bool
) -> subprocess.Popen:
    """Start command with no input, its output appended to log_path; on a session of its own when own_session."""
    with open_file(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log.fileno(),
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
            close_fds=True,
        )


def main() -> None:
    run_dir, by = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
    try:
        print(start_worker_process(run_dir, by, dict(os.environ), own_session=True).pid)
    except OSError as err:  # worker.log a link (UnsafeFile), a full disk: said in a line, not a traceback
        sys.exit(f"cannot start the worker: {err}")


if __name__ == "__main__":
    main()
