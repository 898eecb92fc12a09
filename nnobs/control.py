"""The control file: commands to the worker, appended under a lock and noticed by the worker cheaply."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from nnobs.errors import CommandError, ControlFileError
from nnobs.files import replace_atomically
from nnobs.shared_lock import shared_lock

MAX_TARGET = 10**12  # far beyond any run here; larger is a typo
MAX_ETA = 1e6
LOCK_TIMEOUT_S = 10.0

Command = dict[str, Any]  # {"seq": int, "id": str, "cmd": str, "value": ..., "t": float, "by": str}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


COMMANDS = ("target", "eta", "report_every", "pace", "min_free", "tell_state", "rewind", "reinit", "shutdown")
DEFAULT_MIN_FREE_MB = 100.0  # a run pauses while its filesystem has less free: it must never be what fills a disk
MAX_MIN_FREE_MB = 1e9
MAX_PACE = 1e6  # batches a second; more is no slow motion at all
MAX_SEED = 2**32 - 1  # numpy's RandomState takes seeds up to this


def check_command(cmd: Any, value: Any) -> Any:
    """The value the worker will apply for cmd, or CommandError saying why it would be refused."""
    if cmd in ("target", "report_every", "rewind"):
        what = {
            "target": "target must be a whole number of batches",
            "report_every": "report_every must be a whole number of batches (0 reports only on request)",
            "rewind": "rewind needs the whole number of the batch to go back to",
        }[cmd]
        if not _is_int(value) or not 0 <= value <= MAX_TARGET:
            raise CommandError(f"{what} from 0 to {MAX_TARGET:,}, not {value!r}")
        return value
    if cmd == "eta":
        if not _is_number(value) or not math.isfinite(value) or not 0 < value <= MAX_ETA:
            raise CommandError(f"eta must be a number above 0 and at most {MAX_ETA:g}, not {value!r}")
        return float(value)
    if cmd == "pace":
        if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= MAX_PACE:
            raise CommandError(f"pace must be batches a second from 0 (flat out) to {MAX_PACE:,.0f}, not {value!r}")
        return float(value)
    if cmd == "min_free":
        if not _is_number(value) or not math.isfinite(value) or not 0 <= value <= MAX_MIN_FREE_MB:
            raise CommandError(f"min_free must be megabytes from 0 (never pause) to {MAX_MIN_FREE_MB:,.0f}, not {value!r}")
        return float(value)
    if cmd == "reinit":
        if value is not None and (not _is_int(value) or not 0 <= value <= MAX_SEED):
            raise CommandError(f"reinit takes no seed (the run's own) or a seed from 0 to {MAX_SEED:,}, not {value!r}")
        return value
    if cmd in ("tell_state", "shutdown"):
        return None
    raise CommandError(f"unknown command {cmd!r}: expected {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]}")


def _new_content() -> dict[str, Any]:
    """A control file's content before its first command; file_id tells this file from any made before or after it."""
    return {"file_id": uuid.uuid4().hex[:12], "next_seq": 1, "commands": []}


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _new_content()
    except (OSError, UnicodeDecodeError) as err:
        raise ControlFileError(f"cannot read {path}: {err}") from err
    if not text.strip():
        return _new_content()  # emptied by hand: no commands yet, as if it were missing
    try:
        content = json.loads(text)
    except ValueError as err:
        raise ControlFileError(f"{path} is not valid JSON ({err})") from err
    if (
        not isinstance(content, dict)
        or not _is_int(content.get("next_seq"))
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
    return sorted((c for c in content["commands"] if isinstance(c, dict) and _is_int(c.get("seq"))), key=lambda c: c["seq"])


def send_command(path: Path, cmd: str, value: Any = None, by: str = "") -> Command:
    """Append one command to the control file under its lock; return it with its seq and id.

    The value is not checked here: the worker is the authority and answers every command,
    refused ones included. Callers that want to refuse early use check_command.
    """
    path = Path(path)
    command = {"cmd": cmd, "value": value, "id": uuid.uuid4().hex[:12], "t": round(time.time(), 3), "by": by}
    try:
        json.dumps(command, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise CommandError(f"{cmd} {value!r} cannot be written as JSON: {err}") from err
    with _locked(path):
        content = _read(path)
        command = {"seq": content["next_seq"], **command}
        content["next_seq"] += 1
        content["commands"].append(command)
        _write(path, content)
    return command


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
        kept = [c for c in content["commands"] if not (isinstance(c, dict) and _is_int(c.get("seq")) and c["seq"] <= cutoff)]
        dropped = len(content["commands"]) - len(kept)
        if dropped:
            content["commands"] = kept
            _write(path, content)
        return dropped


class ControlWatcher:
    """Hands the worker the commands it has not seen yet, reading the file only when it changed."""

    def __init__(self, path: Path, last_seq: int = 0, file_id: str | None = None):
        self.path = Path(path)
        self.last_seq = last_seq  # highest seq handed out so far
        self.file_id = file_id  # the file_id of the control file those seqs number (None: not known yet)
        self._signature: tuple[int, int, int] | None = None

    def poll(self) -> list[Command]:
        """New commands, oldest first; [] when the file has not changed. Raises ControlFileError once per bad version."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
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
