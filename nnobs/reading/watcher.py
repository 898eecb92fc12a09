"""A run file's reader and its folded history, refreshed incrementally and resumed from the fold cache."""

from __future__ import annotations

import threading
import time

from nnobs.protocol.records import RecordReader
from nnobs.protocol.rundir import RunDir
from nnobs.reading import foldcache
from nnobs.reading.history import RunHistory

READ_BYTES = 16 << 20  # a refresh folds the run file this much at a time: parsing a day-long file never holds it all
SAVE_AFTER_BYTES = 16 << 20  # the fold cache is saved once this much was folded since: a reopened run parses no more
SAVE_EVERY_S = 10.0  # while a long fold goes on, at most this often, so that an interrupted first open is not lost


class RunWatcher:
    """A run file's reader and its history, refreshed incrementally; one per run, shared by every viewer.

    The first refresh starts from the fold cache beside the run file when it covers a prefix of the
    file as it is now (see foldcache.py), and the cache is saved again once SAVE_AFTER_BYTES more
    were folded: a long run is parsed from the start once, not on every open.
    """

    def __init__(self, path, outline_only: bool = False, use_cache: bool = True):
        self.reader = RecordReader(path)
        self.outline_only = outline_only
        self.history = RunHistory(outline_only=outline_only)
        # Page sessions run in threads of their own: hold this while refreshing and reading the history.
        self.lock = threading.Lock()
        self.use_cache = use_cache
        self.resumed_at = 0  # the offset the fold cache let the first refresh start from (0: none did)
        self._opened = False
        self._unsaved = 0  # bytes folded since the fold cache was saved or loaded

    def refresh(self, most_bytes: int | None = None) -> RunHistory:
        """Fold in what was appended since the last refresh (most_bytes of it at most: the rest next time); start
        over if the file was replaced or shrank."""
        if not self._opened:
            self._opened = True
            if self.use_cache:
                self._resume()
        saved_at, folded = time.monotonic(), 0
        while True:
            restarts = self.reader.restarts
            chunk = self.reader.read_new_lines(READ_BYTES)
            if self.reader.restarts != restarts:
                self.history, self._unsaved = RunHistory(outline_only=self.outline_only), 0
            if not chunk:
                break
            self.history.fold(chunk)
            self._unsaved += len(chunk)
            folded += len(chunk)
            if most_bytes is not None and folded >= most_bytes:
                break
            if self._unsaved >= SAVE_AFTER_BYTES and time.monotonic() - saved_at >= SAVE_EVERY_S:
                self.save()
                saved_at = time.monotonic()
        if self._unsaved >= SAVE_AFTER_BYTES or (self._unsaved and folded >= SAVE_AFTER_BYTES):  # or a long open's end
            self.save()
        self.history.settle()
        return self.history

    def _resume(self) -> None:

        found = foldcache.load(self.reader.path, self.outline_only)
        if found is not None:
            self.history, covered = found
            self.reader.resume(covered.offset, covered.inode, covered.head)
            self.resumed_at = covered.offset

    def save(self) -> None:
        """Save the fold cache of what is folded now."""

        if self.use_cache:
            foldcache.save(self.reader.path, self.history, self.reader.offset, self.reader.inode)
        self._unsaved = 0


def read_history(run: RunDir) -> RunHistory:
    """The whole run file, folded: from its fold cache when one is there, in bounded chunks, the cache saved anew."""
    return RunWatcher(run.run_file).refresh()
