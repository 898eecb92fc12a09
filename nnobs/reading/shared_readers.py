"""The server's readers of run files: one shared per run file, released once nobody asked for it for a while.

`watcher_for(run_file)` gives the run page's full reader (a RunWatcher); `curves_for(run_file)` the
loss and metric outlines of a run for comparisons, from an outline-only reader whose memory is
bounded however long the run. Both start from the run's fold cache (foldcache.py) when it fits.
Page sessions run in threads: every function here may be called from any of them.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from nnobs.reading.history import RunHistory
from nnobs.reading.watcher import RunWatcher

RELEASE_AFTER_S = 120.0  # a reader nobody asked for this long is dropped, and its memory with it
MAX_KEPT = 32  # readers kept at most, of each kind: beyond, the one asked for least recently goes
SWEEP_EVERY_S = RELEASE_AFTER_S / 4  # how often idle readers are looked for while nobody asks for any
RunCurves = RunHistory  # an outline-only history: loss_outline, metrics, loss_times, markers, batch, loss, ...


class Readers:
    """Shared RunWatchers by run file, all full or all outline-only; the clock can be a test's."""

    def __init__(
        self,
        outline_only: bool = False,
        clock: Callable[[], float] = time.monotonic,
        release_after_s: float = RELEASE_AFTER_S,
        max_kept: int = MAX_KEPT,
    ):
        self.outline_only = outline_only
        self.clock = clock
        self.release_after_s = release_after_s
        self.max_kept = max_kept
        self._kept: OrderedDict[str, tuple[RunWatcher, float]] = OrderedDict()  # least recently asked first
        self._lock = threading.Lock()

    def get(self, run_file: str | os.PathLike) -> RunWatcher:
        """The reader of run_file (however its path is spelt), made on the first ask."""
        key = os.path.abspath(run_file)  # not realpath: a link in a run's directory is never followed, not even here
        with self._lock:
            now = self.clock()
            self._release_idle(now)
            watcher = self._kept.pop(key, (None, 0.0))[0] or RunWatcher(key, outline_only=self.outline_only)
            self._kept[key] = (watcher, now)
            while len(self._kept) > self.max_kept:
                self._kept.popitem(last=False)
        return watcher

    def release_idle(self) -> int:
        """Drop the readers nobody asked for in release_after_s; how many were dropped."""
        with self._lock:
            return self._release_idle(self.clock())

    def kept(self) -> list[str]:
        """The run files with a reader now, least recently asked first."""
        with self._lock:
            return list(self._kept)

    def _release_idle(self, now: float) -> int:
        idle = [key for key, (_, asked) in self._kept.items() if now - asked >= self.release_after_s]
        for key in idle:
            del self._kept[key]  # a session still drawing from it keeps it until done; then it is garbage
        return len(idle)


_WATCHERS = Readers()
_CURVES = Readers(outline_only=True)
_sweeper_started = threading.Lock()
_sweeper: threading.Thread | None = None


def watcher_for(run_file: str | os.PathLike) -> RunWatcher:
    """The process's one reader of run_file for the run page: call refresh() on it holding its lock."""
    _start_sweeper()
    return _WATCHERS.get(run_file)


def curves_for(run_file: str | os.PathLike) -> RunCurves:
    """run_file's curves as of now: a copy of its outline-only history, the caller's to keep (no lock needed).

    Its loss_outline, metrics (test_loss among them), markers and loss_times (wall time by batch, in
    buckets) are bounded however long the run; batch, loss, best_loss, last_t and the settings are the latest.
    """
    _start_sweeper()
    watcher = _CURVES.get(run_file)
    with watcher.lock:
        return copy.deepcopy(watcher.refresh())


def _start_sweeper() -> None:
    """Release idle readers even while no session asks for any; started on the first ask, not on import."""
    global _sweeper
    with _sweeper_started:
        if _sweeper is None:
            _sweeper = threading.Thread(target=_sweep, name="nnobs-readers", daemon=True)
            _sweeper.start()


def _sweep() -> None:
    while True:
        time.sleep(SWEEP_EVERY_S)
        _WATCHERS.release_idle()
        _CURVES.release_idle()
