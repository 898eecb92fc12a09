"""The control file: concurrent senders all land, values are checked, the watcher reads only changes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from conftest import python, run_together
from nnobs.protocol.control import ControlWatcher, read_commands, send_command, send_commands
from nnobs.protocol.commands import check_command
from nnobs.protocol.errors import CommandError, ControlFileError

SENDER = """
import json, sys
from nnobs.protocol.control import send_command
path, who, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
ids = [send_command(path, "target", n, by=who)["id"] for n in range(count)]
print(json.dumps(ids))
"""


@pytest.fixture
def control_file(tmp_path: Path) -> Path:
    return tmp_path / "control.json"


def test_concurrent_sender_processes_lose_no_command(control_file):
    senders = [python(SENDER, str(control_file), f"sender-{k}", "50") for k in range(4)]
    sent_ids = [i for out in run_together(senders) for i in json.loads(out)]

    content = json.loads(control_file.read_text())  # whole, valid JSON
    commands = content["commands"]
    assert sorted(c["id"] for c in commands) == sorted(sent_ids) and len(set(sent_ids)) == 200
    assert [c["seq"] for c in commands] == list(range(1, 201))
    assert content["next_seq"] == 201
    for k in range(4):  # each sender's own commands keep their order
        assert [c["value"] for c in commands if c["by"] == f"sender-{k}"] == list(range(50))


def test_send_command_returns_the_command_with_its_seq_and_id(control_file):
    first = send_command(control_file, "eta", 0.5, by="test")
    second = send_command(control_file, "tell_state")
    assert (first["seq"], first["cmd"], first["value"], first["by"]) == (1, "eta", 0.5, "test")
    assert second["seq"] == 2 and second["id"] != first["id"]
    assert read_commands(control_file) == [first, second]


@pytest.mark.parametrize(
    "cmd, value, applied",
    [
        ("eta", 0.05, 0.05),
        ("eta", 2, 2.0),
        ("target", 0, 0),
        ("target", 5000, 5000),
        ("report_every", 0, 0),
        ("report_every", 100, 100),
        ("tell_state", None, None),
        ("shutdown", None, None),
    ],
)
def test_check_command_accepts_good_values(cmd, value, applied):
    result = check_command(cmd, value)
    assert result == applied and type(result) is type(applied)


@pytest.mark.parametrize(
    "cmd, value, message",
    [
        ("eta", 0, "eta must be a number above 0"),
        ("eta", -0.1, "eta must be a number above 0"),
        ("eta", float("nan"), "eta must be a number above 0"),
        ("eta", float("inf"), "eta must be a number above 0"),
        ("eta", "fast", "not 'fast'"),
        ("eta", True, "not True"),
        ("target", -1, "target must be a whole number"),
        ("target", 2.5, "not 2.5"),
        ("target", True, "not True"),
        ("target", "100", "not '100'"),
        ("report_every", -5, "report_every must be a whole number"),
        ("warp", 9, "unknown command 'warp'"),
    ],
)
def test_check_command_refuses_bad_values_saying_why(cmd, value, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        check_command(cmd, value)


def test_send_command_refuses_values_json_cannot_hold(control_file):
    with pytest.raises(CommandError, match="cannot be written as JSON"):
        send_command(control_file, "eta", float("nan"))
    assert not control_file.exists()


def test_watcher_returns_only_new_commands(control_file):
    watcher = ControlWatcher(control_file)
    assert watcher.poll() == []  # no file yet
    a = send_command(control_file, "target", 10)
    assert watcher.poll() == [a]
    b, c = send_command(control_file, "eta", 0.2), send_command(control_file, "tell_state")
    assert watcher.poll() == [b, c]
    assert watcher.last_seq == c["seq"]


def test_commands_sent_together_are_one_write_numbered_in_order_and_refused_whole(control_file):
    watcher = ControlWatcher(control_file)
    first = send_command(control_file, "pace", 0)
    assert watcher.poll() == [first]
    with pytest.raises(CommandError, match="cannot be written as JSON"):
        send_commands(control_file, [("target", 100), ("eta", float("inf"))])
    assert read_commands(control_file) == [first], "nothing of a refused pair is written"
    eta, target = send_commands(control_file, [("eta", 500.0), ("target", 21000)])
    assert [eta["seq"], target["seq"]] == [first["seq"] + 1, first["seq"] + 2]
    assert watcher.poll() == [eta, target], "read in one poll, so applied at the same batch"


def test_watcher_starting_after_a_seq_skips_what_was_applied(control_file):
    applied = send_command(control_file, "target", 10)
    new = send_command(control_file, "eta", 0.2)
    assert ControlWatcher(control_file, last_seq=applied["seq"]).poll() == [new]


def test_watcher_does_not_read_an_unchanged_file(control_file):
    send_command(control_file, "target", 10)
    watcher = ControlWatcher(control_file)
    assert len(watcher.poll()) == 1
    # Spoil the content in place, keeping inode, size and mtime: a watcher that read the file
    # now would raise ControlFileError; one that trusts the unchanged signature returns [].
    stat = os.stat(control_file)
    with open(control_file, "r+b") as f:
        f.write(b"#" * stat.st_size)
    os.utime(control_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(control_file).st_ino, os.stat(control_file).st_size) == (stat.st_ino, stat.st_size)

    assert watcher.poll() == []
    with pytest.raises(ControlFileError):
        read_commands(control_file)  # the spoiled content is really there


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2, 3]", b'{"next_seq": 1}', b'{"next_seq": "1", "commands": []}', b"\xff\xfe\x00"],
    ids=["not-json", "a-list", "no-commands", "seq-not-int", "not-utf8"],
)
def test_malformed_control_file_raises_and_is_left_intact(control_file, content):
    control_file.write_bytes(content)

    with pytest.raises(ControlFileError, match=re.escape(control_file.name)):
        read_commands(control_file)
    with pytest.raises(ControlFileError):
        ControlWatcher(control_file).poll()
    with pytest.raises(ControlFileError):
        send_command(control_file, "target", 10)
    assert control_file.read_bytes() == content


def test_watcher_reports_a_malformed_version_once_then_reads_the_repaired_file(control_file):
    control_file.write_text("{not json")
    watcher = ControlWatcher(control_file)
    with pytest.raises(ControlFileError):
        watcher.poll()
    assert watcher.poll() == []  # same bad version: not raised again

    control_file.unlink()
    command = send_command(control_file, "target", 10)
    assert watcher.poll() == [command]


def test_many_processes_creating_one_run_at_once_all_succeed(tmp_path):
    code = """
import sys
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run
from nnobs.training.builtin.tasks import RunConfig
run = RunDir.named("shared", sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
for _ in range(20):
    create_run(run, RunConfig(seed=int(sys.argv[2])))
print(run.config.read_text().count("seed"))
"""
    outputs = run_together([python(code, str(tmp_path), str(seed)) for seed in range(6)])
    assert outputs == ["1\n"] * 6
    assert not [p for p in (tmp_path / "shared").iterdir() if p.name != "config.json"], "no temporary file left"
