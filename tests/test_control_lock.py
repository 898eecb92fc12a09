"""The control file's lock: strict claims exclude writers by themselves (as between machines on NFS), a dead writer's
claim never blocks for good, and a live writer's is waited for, never broken."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, process_gone, python, run_together, wait_for
from nnobs.protocol.control import read_commands, send_command
from nnobs.protocol.errors import LockTimeout
from nnobs.protocol.locks import STALE_CLAIM_S, claims_path, host_claim

COUNTER = """
import sys
from pathlib import Path
from nnobs.protocol.locks import host_claim
lock, counter, rounds = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for _ in range(rounds):
    with host_claim(lock, 30, "the counter"):  # only the claim: as two machines whose flocks do not meet
        seen = int(counter.read_text())
        counter.write_text(str(seen + 1))  # read, then write in place: any overlap loses an increment
"""

HOLDER = """
import sys
from nnobs.protocol.locks import {take}
with {take}(sys.argv[1], 30, "the control file"):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def holding(lock: Path, take: str = "shared_lock", wrapper: tuple[str, ...] = ()) -> subprocess.Popen:
    """A real process holding the lock at lock (through take) until it reads a line, run through wrapper if given."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([*wrapper, sys.executable, "-c", HOLDER.format(take=take), str(lock)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == "held", f"the holder said {line!r}: {proc.stderr.read()}"
    return proc


def claim_files(lock: Path) -> list[Path]:
    return sorted(Path(f"{claims_path(lock)}.filelock", "claims").glob("*.claim"))


def kill_9(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: process_gone(proc.pid), what=f"holder {proc.pid} to die")


def test_strict_claims_alone_let_no_two_writers_in_at_once(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    run_together([python(COUNTER, str(tmp_path / "counter.lock"), str(counter), "40") for _ in range(4)])
    assert counter.read_text() == "160"
    assert claim_files(tmp_path / "counter.lock") == [], "every claim was let go"


def test_a_writer_killed_while_holding_the_lock_does_not_block_the_next(tmp_path):
    control = tmp_path / "control.json"
    holder = holding(Path(f"{control}.lock"))
    assert claim_files(Path(f"{control}.lock")), "the holder's claim is published"
    kill_9(holder)

    started = time.monotonic()
    command = send_command(control, "eta", 0.5, by="test")
    assert read_commands(control) == [command]
    assert time.monotonic() - started < 5, "the dead writer's claim was broken at once, not waited out"
    assert claim_files(Path(f"{control}.lock")) == []


def test_a_live_writers_claim_is_waited_for_and_named_never_broken(tmp_path):
    lock = tmp_path / "control.json.lock"
    holder = holding(lock, take="host_claim")
    with pytest.raises(LockTimeout, match=rf"locked by process {holder.pid} on {socket.gethostname()} \(waited 0.5 s"):
        with host_claim(lock, 0.5, "the control file"):
            pass
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    with host_claim(lock, 5, "the control file"):
        pass


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a writer under another host name needs root and unshare --uts")
def test_a_dead_writers_claim_from_another_machine_stands_until_it_is_stale(tmp_path):
    control = tmp_path / "control.json"
    lock = Path(f"{control}.lock")
    other_host = ("unshare", "--uts", "sh", "-c", 'hostname login2 && exec "$0" "$@"')
    holder = holding(lock, take="host_claim", wrapper=other_host)
    kill_9(holder)  # its process cannot be looked at from "another machine": only the claim's age tells

    with pytest.raises(LockTimeout, match=rf"process {holder.pid} on login2 .*older than {STALE_CLAIM_S:g} s"):
        with host_claim(lock, 0.5, "the control file"):
            pass
    published = time.time() - STALE_CLAIM_S - 1  # as if the claim had stood that long
    for claim in claim_files(lock):
        os.utime(claim, (published, published))

    command = send_command(control, "target", 7, by="test")
    assert [c["id"] for c in read_commands(control)] == [command["id"]]
    assert json.loads(control.read_text())["next_seq"] == 2
    assert claim_files(lock) == []
