"""A large checkpoint made durable and put in place on a thread of its own, and the next one's file made ready there.

Training waits only while the checkpoint's bytes go into the page cache, which is then the snapshot: the kernel holds
them, and training may change its tensors. The fsync that writes them to the disk (0.2 s for 432 MB on a local disk,
more on a slow or a network filesystem) and the rename that puts them in place run on this thread, as does the making of
the next checkpoint's file (prepared_temp). A crash before the rename leaves the checkpoint before, whole.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from nnobs.protocol.files import WrittenTemp, prepared_temp

Placed = Callable[[OSError | None], None]  # told on the training thread, by settle(): None, or why it failed


class CheckpointPlacer:
    """One checkpoint at a time on its way into place, and at most one prepared file waiting for the next."""

    def __init__(self, path: Path):
        self.path = path  # the checkpoint: checkpoint.npz
        self._pool: ThreadPoolExecutor | None = None  # its thread starts at the first use: small nets never need it
        self._placing: tuple[Future[None], Placed] | None = None
        self._preparing: Future[Path] | None = None
        self._prepared_size = 0

    def place(self, written: WrittenTemp, then: Placed) -> None:
        """Sync written into place on the thread; then(error) is called by the settle() that finds it done."""
        assert self._placing is None, "one checkpoint on its way at a time: settle() the one before"
        self._placing = (self._thread().submit(written.sync_into_place), then)

    def settle(self, wait: bool = True) -> None:
        """Tell the checkpoint on its way what became of it, once it has landed (waiting for that, when wait)."""
        if self._placing is None:
            return
        placing, then = self._placing
        if not wait and not placing.done():
            return
        self._placing = None
        error = placing.exception()
        if error is not None and not isinstance(error, OSError):
            raise error  # not the disk's: a fault of ours, as loud as it would be on the training thread
        then(error)

    def prepare(self, size: int) -> None:
        """Make a file of size bytes ready for the next checkpoint, unless one is ready or on its way."""
        if self._preparing is None and size > 0:
            self._prepared_size = size
            self._preparing = self._thread().submit(prepared_temp, self.path, size)

    @property
    def prepared_bytes(self) -> int:
        """The room the prepared file takes on the disk, the next checkpoint's already (the disk guard counts it)."""
        preparing = self._preparing
        failed = preparing is not None and preparing.done() and preparing.exception() is not None
        return 0 if preparing is None or failed else self._prepared_size

    @property
    def preparing(self) -> bool:
        """Whether a prepared file is ready or on its way."""
        return self._preparing is not None

    def take_prepared(self) -> Path | None:
        """The prepared file, when it is ready (it is the caller's from here); None otherwise."""
        preparing = self._preparing
        if preparing is None or not preparing.done():
            return None
        self._preparing = None
        # None where it failed (a full disk): the write then makes a new file
        return preparing.result() if preparing.exception() is None else None

    def close(self) -> None:
        """Wait for what is on its way (what landed is not told), and remove the prepared file."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        self._pool, self._placing = None, None
        prepared = self.take_prepared()
        if prepared is not None:
            os.unlink(prepared)

    def _thread(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnobs-checkpoint")
        return self._pool
