"""The worker keeps its run's fold cache: a reader opening the run for the first time, however long it is, resumes
from the cache and parses only its tail (at most SAVE_AFTER_BYTES and a few seconds' records).

The worker writes every record, so it is the one that always has them: a thread of its own folds the run file as a
reader would (the same RunWatcher) each time it has grown by SAVE_AFTER_BYTES, and saves the cache. The default run
writes 1.78 GB a day, about 20 KB a second: a fold of 16 MB every 13 minutes, a few tenths of a second each.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from nnobs.protocol.slot import tell_log
from nnobs.reading.watcher import SAVE_AFTER_BYTES, RunWatcher

CHECK_EVERY_S = 5.0  # how often the run file's size is looked at


class FoldKeeper:
    """Folds the run file and saves its fold cache each time it has grown by SAVE_AFTER_BYTES, on a thread of its own."""

    def __init__(self, run_file: Path):
        self.run_file = run_file
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="nnobs-fold", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop folding; a fold under way ends first (it is bounded: SAVE_AFTER_BYTES at a time)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _keep(self) -> None:
        folded = -1  # the run file's size the last fold reached; -1: not looked at yet
        while not self._stopped.wait(CHECK_EVERY_S):
            try:
                if 0 <= folded and os.path.getsize(self.run_file) - folded < SAVE_AFTER_BYTES:
                    continue
                # A watcher of its own each time, from the cache saved last: the history is not held in between
                # (a day-long run's is a few hundred MB).
                watcher = RunWatcher(self.run_file)
                watcher.refresh()  # folds what is new, and saves the cache once SAVE_AFTER_BYTES were folded
                folded = watcher.reader.offset
            except Exception as err:  # observing never kills training: readers fold the file themselves
                tell_log(
                    f"nnobs: keeping the fold cache failed ({type(err).__name__}: {err}); readers fold the run file"
                )
                return
