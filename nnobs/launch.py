"""Starts a run's worker detached from whoever asked, prints its pid, and exits.

The asker waits for this short-lived process, so the worker is nobody's child: it is not left
a zombie under a long-lived server, and Ctrl-C on the asker's terminal never reaches it.
Only the standard library is imported here, to keep the hop cheap.
"""

import subprocess
import sys
from pathlib import Path


def main() -> None:
    run_dir = Path(sys.argv[1])
    with open(run_dir / "worker.log", "ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "nnobs.worker", *sys.argv[1:]],  # the run directory, and who asked
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session and process group: no signals from our terminal
            close_fds=True,
        )
    print(worker.pid)


if __name__ == "__main__":
    main()
