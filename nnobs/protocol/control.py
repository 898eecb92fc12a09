"""The control file: commands to the worker, appended under a lock and noticed by the worker cheaply."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from nnobs.protocol.checkpoint import load_checkpoint_meta
from nnobs.protocol.errors import CommandError, ControlFileError
from nnobs.protocol.files import Signature, file_signature, read_text, replace_atomically
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.locks import shared_lock
from nnobs.protocol.numbers import is_int
from nnobs.protocol.rundir import RunDir

LOCK_TIMEOUT_S = 10.0
# A command is about 150 bytes and applied ones are forgotten past COMMANDS_KEPT: a control file of megabytes holds
# no commands nnobs queued. Larger, it is refused unread, so that no one can make every reader parse gigabytes.
CONTROL_MOST_BYTES = 8 << 20

Command = dict[str, Any]  # {"seq": int, "id": str, "cmd": str, "value": ..., "t": float, "by": str}


def _new_content() -> dict[str, Any]:
    """A control file's content before its first command; file_id tells this file from any made before or after it."""
    return {"file_id": uuid.uuid4().hex[:12], "next_seq": 1, "commands": []}


def _read(path: Path) -> dict[str, Any]:
    try:
        text = read_text(path, CONTROL_MOST_BYTES)
    except FileNotFoundError:
        return _new_content()
    except (OSError, UnicodeDecodeError) as err:
        raise ControlFileError(f"cannot read {path.name}: {err}; move it away to steer the run again") from err
    if not text.strip():
        return _new_content()  # emptied by hand: no commands yet, as if it were missing
    try:
        content = parse_json(text)
    except ValueError as err:
        raise ControlFileError(f"{path} is not valid JSON ({err})") from err
    if (
        not isinstance(content, dict)
        or not is_int(content.get("next_seq"))
        or not isinstance(content.get("commands"), list)
    ):
        raise ControlFileError(f'{path} is not an object with "next_seq" and a "commands" list')
    return content


def _locked(path: Path):
    """The control file's lock, held by every writer while it reads, changes and replaces the file.

    Writers may be on different machines (the page on one login node, `nnobs set` on another or inside a job),
    so the lock excludes across hosts sharing the runs root; the worker only reads, and never takes it.
    """
    return shared_lock(f"{path}.lock", LOCK_TIMEOUT_S, "the control file")


def _write(path: Path, content: dict[str, Any]) -> None:
    replace_atomically(path, lambda f: f.write(json.dumps(content, indent=1).encode()))


def read_commands(path: Path) -> list[Command]:
    """Every command in the control file, oldest first. Safe without the lock: writers replace it atomically."""
    return _commands(_read(Path(path)))


def _commands(content: dict[str, Any]) -> list[Command]:
    return sorted(
        (c for c in content["commands"] if isinstance(c, dict) and is_int(c.get("seq"))), key=lambda c: c["seq"]
    )


def send_command(path: Path, cmd: str, value: Any = None, by: str = "") -> Command:
    """Append one command to the control file under its lock; return it with its seq and id.

    The value is not checked here: the worker is the authority and answers every command,
    refused ones included. Callers that want to refuse early use check_command.
    """
    return send_commands(path, [(cmd, value)], by=by)[0]


def send_commands(
    path: Path, commands: list[tuple[str, Any]], by: str = "", ids: list[str] | None = None
) -> list[Command]:
    """Append (cmd, value) pairs in one write under the control file's lock, numbered in order.

    One write, so the worker reads them in one poll and applies them at the same batch: `set --eta 500 --target
    21000` never trains on with the new target and the old eta in between. With ids (a sender that may send again
    after a crash: the population-based training's controller), each command is given its id, and one whose id is
    in the file already is not sent twice: the one there is returned.
    """
    path = Path(path)
    made = []
    for index, (cmd, value) in enumerate(commands):
        command_id = ids[index] if ids is not None else uuid.uuid4().hex[:12]
        command = {"cmd": cmd, "value": value, "id": command_id, "t": round(time.time(), 3), "by": by}
        try:
            json.dumps(command, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise CommandError(f"{cmd} {value!r} cannot be written as JSON: {err}") from err
        made.append(command)
    with _locked(path):
        content = _read(path)
        there = {c.get("id"): c for c in _commands(content)} if ids is not None else {}
        numbered, answer = [], []
        for command in made:
            if command["id"] in there:
                answer.append(there[command["id"]])
                continue
            numbered.append({"seq": content["next_seq"], **command})
            answer.append(numbered[-1])
            content["next_seq"] += 1
        if numbered:
            content["commands"].extend(numbered)
            _write(path, content)
    return answer


def forget_applied(path: Path, file_id: str | None, through_seq: int, keep: int) -> int:
    """Drop the commands numbered through_seq or lower, but the newest keep of all; the number dropped.

    Only for commands a worker applied and checkpointed (their answers live on in the run file),
    and only in the control file whose file_id the checkpoint names: never one made anew since.
    """
    path = Path(path)
    with _locked(path):
        content = _read(path)
        seqs = [c["seq"] for c in _commands(content)]
        if file_id is None or content.get("file_id") != file_id or len(seqs) <= keep:
            return 0
        cutoff = min(through_seq, seqs[-keep - 1])
        kept = [
            c for c in content["commands"] if not (isinstance(c, dict) and is_int(c.get("seq")) and c["seq"] <= cutoff)
        ]
        dropped = len(content["commands"]) - len(kept)
        if dropped:
            content["commands"] = kept
            _write(path, content)
        return dropped


def checkpointed_commands(run: RunDir) -> list[Command]:
    """The run's commands its checkpoint says were applied (by seq, in the control file it names): a worker that
    starts again never applies them again."""
    applied = load_checkpoint_meta(run.checkpoint) or {}
    try:
        content = _read(run.control_file)
    except ControlFileError:
        return []
    if not is_int(applied.get("last_seq")) or content.get("file_id") != applied.get("control_id"):
        return []
    return [c for c in _commands(content) if c["seq"] <= applied["last_seq"]]


def answer_of(command: Command) -> dict:
    """What an ack or a reject repeats of the command it answers: its id, seq, cmd, value and who sent it."""
    return {
        "id": str(command.get("id")),
        "seq": command.get("seq"),
        "cmd": command.get("cmd"),
        "value": command.get("value"),
        "by": str(command.get("by", "")),
    }


class ControlWatcher:
    """Hands the worker the commands it has not seen yet, reading the file only when it changed."""

    def __init__(self, path: Path, last_seq: int = 0, file_id: str | None = None):
        self.path = Path(path)
        self.last_seq = last_seq  # highest seq handed out so far
        self.file_id = file_id  # the file_id of the control file those seqs number (None: not known yet)
        self._signature: Signature | None = None

    def poll(self) -> list[Command]:
        """New commands, oldest first; [] when the file has not changed. Raises ControlFileError once per bad version."""
        signature = file_signature(self.path)
        if signature is None:
            return []
        if signature == self._signature:
            return []
        self._signature = signature
        content = _read(self.path)
        commands = _commands(content)
        if not commands:
            return []  # emptied: nothing to apply, and nothing yet to tell a new numbering by
        file_id = content.get("file_id")
        if (self.file_id is not None and file_id != self.file_id) or content["next_seq"] - 1 < self.last_seq:
            # The file was made anew (deleted, emptied, or replaced by hand): its numbering starts over, so must we.
            self.last_seq = 0
        self.file_id = file_id
        new = [c for c in commands if c["seq"] > self.last_seq]
        if new:
            self.last_seq = new[-1]["seq"]
        return new


COMMANDS_KEPT = 1000  # applied commands control.json keeps; older ones live on as answers in the run file


def queue_command(run: RunDir, cmd: str, value=None, by: str = "") -> Command:
    """Queue a command for the run's worker (see queue_commands)."""
    return queue_commands(run, [(cmd, value)], by=by)[0]


def queue_commands(
    run: RunDir, commands: list[tuple[str, Any]], by: str = "", ids: list[str] | None = None
) -> list[Command]:
    """Queue commands for the run's worker, applied together; every COMMANDS_KEPT commands, forget what it applied
    long ago.

    A run steered for days by a script would otherwise grow control.json without end, and with it
    the time every sender, the worker and every page spend reading it.
    """
    sent = send_commands(run.control_file, commands, by=by, ids=ids)
    if any(command["seq"] % COMMANDS_KEPT == 0 for command in sent):
        applied = load_checkpoint_meta(run.checkpoint)  # its settings alone: the arrays may be gigabytes
        if applied is not None and "last_seq" in applied:  # an unreadable one says nothing: keep everything
            forget_applied(run.control_file, applied.get("control_id"), applied["last_seq"], keep=COMMANDS_KEPT)
    return sent
