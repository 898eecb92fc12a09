"""The worker keeps its run's fold cache: a reader opening the run for the first time, however long it is, resumes
from the cache and parses only its tail (at most SAVE_AFTER_BYTES and a few seconds' records).

The worker writes every record, so it is the one that always has them: a thread of its own folds the run file as a
reader would (the same RunWatcher) each time it has grown by KEEP_EVERY_BYTES, and saves the cache. Half of what
makes a reader save it (SAVE_AFTER_BYTES): a first open folds the tail and does not write the cache again. The
default run writes 1.78 GB a day, about 20 KB a second: a fold of 8 MB every 7 minutes, with the cache's load and
save (a day-long run's cache is 144 MB, and as much memory while it is folded). A run file shorter than
KEEP_EVERY_BYTES gets no cache (a reader parses it in a moment; a small net's kept states made one of 3 MB beside a
16 KB file), and none is saved where it would take the disk below the run's floor (min_free_mb).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from nnobs.protocol.slot import tell_log
from nnobs.reading.foldcache import cache_path
from nnobs.reading.watcher import SAVE_AFTER_BYTES, RunWatcher
from nnobs.training.disk_guard import MB, free_bytes

KEEP_EVERY_BYTES = SAVE_AFTER_BYTES // 2
CHECK_EVERY_S = 5.0  # how often the run file's size is looked at
STOP_WAIT_S = 2.0  # the most a worker's end waits for a fold under way


class FoldKeeper:
    """Folds the run file and saves its fold cache each time it has grown by KEEP_EVERY_BYTES, on a thread of its own.

    A run resumed with a long file and no cache is folded here once, SAVE_AFTER_BYTES at a time (the cache saved after
    each), in the background: from then on, each fold is the last KEEP_EVERY_BYTES and the cache's load and save.
    """

    def __init__(self, run_file: Path, min_free_mb: float = 0.0):
        self.run_file = run_file
        self.min_free = min_free_mb * MB  # the run's disk floor: a cache is not saved where it would go below it
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="nnobs-fold", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop folding: a fold under way ends at its next SAVE_AFTER_BYTES, waited for STOP_WAIT_S at most (its
        cache is written to a file of its own and renamed into place: one cut short is never seen)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)

    def _keep(self) -> None:
        folded = -1  # the run file's size the last fold reached; -1: not looked at yet
        while not self._stopped.wait(CHECK_EVERY_S):
            try:
                size = os.path.getsize(self.run_file)
                if size - max(folded, 0) < KEEP_EVERY_BYTES:
                    continue  # a reader parses that much in a moment: no cache is worth its room on the disk
                # A watcher of its own each time, from the cache saved last: the history is not held in between
                # (a day-long run's is a few hundred MB).
                watcher = RunWatcher(self.run_file)
                while not self._stopped.is_set():
                    watcher.refresh(most_bytes=SAVE_AFTER_BYTES)  # the cache is saved once that much was folded
                    if watcher.reader.offset >= size:
                        break
                if watcher.reader.offset > max(folded, watcher.resumed_at) and self._room_for_cache():
                    watcher.save()
                folded = watcher.reader.offset
            except Exception as err:  # observing never kills training: readers fold the file themselves
                tell_log(
                    f"nnobs: keeping the fold cache failed ({type(err).__name__}: {err}); readers fold the run file"
                )
                return

    def _room_for_cache(self) -> bool:
        """Whether saving the cache leaves the run's floor free: it is written beside the old one, then renamed over
        it, so it needs as much room again as the old one (KEEP_EVERY_BYTES when there is none yet)."""
        if not self.min_free:
            return True
        free = free_bytes(self.run_file.parent)
        cache = cache_path(self.run_file)
        try:
            size = sum(f.stat().st_size for f in cache.iterdir()) if cache.is_dir() else cache.stat().st_size
        except OSError:
            size = KEEP_EVERY_BYTES
        return free is None or free - size >= self.min_free
