"""A lock for a file that writers on several machines change (NFS): it excludes them all and never wedges on a dead one.

Two locks, taken in this order and held together:
- a flock on `path`, as before: it excludes writers on this machine, the kernel drops it when its holder dies,
  and a hand edit or an older nnobs takes the same one;
- a strict claim (filelock's StrictSoftFileLock) at `path.hosts`: hard links published on the shared directory,
  which exclude writers on every machine mounting it, whatever the mount does with flock (`local_lock=flock`
  or `nolock` make flock local to each machine; Lustre and many FUSE mounts lack it).
A strict claim is never broken by the library on its own (fail-closed), so a writer killed while holding it would
block every later one: here a claim is broken when its owner is provably gone (on this machine, its process no
longer runs), or when it has stood for STALE_CLAIM_S, far beyond the milliseconds a writer holds it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock, StrictSoftFileClaim, StrictSoftFileLock, Timeout

from nnobs.protocol.errors import LockTimeout, hold

# A writer holds the lock while it reads, changes, fsyncs and renames one small file: milliseconds, seconds on a
# slow NFS server. A claim standing a minute is a dead writer's on another machine (where its process cannot be
# looked at). The age is the claim file's mtime, stamped by the file server, against this machine's clock:
# hosts kept by NTP agree within far less than this.
STALE_CLAIM_S = 60.0
_POLL_S = 0.2  # how long one try at the claim waits before looking for stale ones


def claims_path(path: Path | str) -> Path:
    """Where the strict claims for the lock at path live (a sentinel file, and `<it>.filelock/claims/`)."""
    return Path(f"{path}.hosts")


@contextmanager
def shared_lock(path: Path | str, timeout: float, what: str) -> Iterator[None]:
    """Hold the lock at path against writers on this and every other machine; LockTimeout after timeout seconds."""
    deadline = time.monotonic() + timeout
    with hold(FileLock(str(path), timeout=timeout), what):
        with host_claim(path, max(0.0, deadline - time.monotonic()), what):
            yield


@contextmanager
def host_claim(path: Path | str, timeout: float, what: str) -> Iterator[None]:
    """Hold only the strict claim of the lock at path (the part that excludes other machines)."""
    lock = StrictSoftFileLock(str(claims_path(path)), timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            lock.acquire(timeout=min(_POLL_S, max(0.0, deadline - time.monotonic())))
            break
        except Timeout:
            standing = break_stale_claims(lock)
            if time.monotonic() >= deadline:
                owners = dict.fromkeys(
                    f"process {c.pid} on {c.hostname}" for c in standing
                )  # intent and held: one owner
                holders = ", ".join(owners) or "a writer that has just let go"
                raise LockTimeout(
                    f"{what} is locked by {holders} (waited {timeout:.2g} s for {lock.lock_file}; "
                    f"a claim older than {STALE_CLAIM_S:g} s is taken as a dead writer's and broken)"
                ) from None
    try:
        yield
    finally:
        lock.release()


def break_stale_claims(lock: StrictSoftFileLock) -> list[StrictSoftFileClaim]:
    """Remove the claims whose writers are gone; return the claims left standing."""
    standing = []
    for claim in lock.claims:
        if _owner_gone(claim) or _age_s(lock, claim) > STALE_CLAIM_S:
            with suppress(FileNotFoundError):  # another waiter broke it first
                lock.force_break(claim.name)
        else:
            standing.append(claim)
    return standing


def _owner_gone(claim: StrictSoftFileClaim) -> bool:
    """True when the claim was made on this machine by a process that no longer runs."""
    if claim.hostname != socket.gethostname():
        return False  # another machine's process cannot be looked at from here
    try:
        os.kill(claim.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:
        with open(f"/proc/{claim.pid}/stat") as f:  # a zombie has exited, only not been reaped
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, IndexError):
        return True


def _age_s(lock: StrictSoftFileLock, claim: StrictSoftFileClaim) -> float:
    """Seconds since the claim was published; 0 when it is already gone."""
    # The claims directory is filelock's on-disk protocol ("filelock-strict-v1"): <lock file>.filelock/claims/.
    try:
        published = os.stat(Path(f"{os.path.realpath(lock.lock_file)}.filelock", "claims", claim.name)).st_mtime
    except FileNotFoundError:
        return 0.0
    return time.time() - published
