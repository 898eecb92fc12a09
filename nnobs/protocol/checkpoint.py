"""Checkpoints: a run's whole state in one .npz file, replaced atomically, loaded without pickle.

The file holds the session's settings as JSON (meta) and, beside them, whatever arrays the
trainer saves of its net: the built-in worker its state vector (sv), a script its own bytes. A large model's bytes
are streamed into the file as they are made (a Streamed member, read back as bytes): a copy of them in memory first
would cost as much memory again as the model and its optimizer hold.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import (
    FILE_MODE,
    SETTINGS_MOST_BYTES,
    WrittenTemp,
    open_file,
    replace_atomically,
    write_temp,
)
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_count


class Streamed:
    """A checkpoint member written straight into the file by write(stream): a trainer's own bytes, made as written."""

    def __init__(self, write: Callable[[BinaryIO], object]):
        self.write = write

    def content(self) -> np.ndarray:
        """The bytes write() makes, in memory, as an array (to send elsewhere, or to keep a small one)."""
        buffer = io.BytesIO()
        self.write(buffer)
        return np.frombuffer(buffer.getbuffer(), dtype=np.uint8)


State = Mapping[str, "np.ndarray | Streamed"]  # what a trainer saves: named arrays, or members streamed as written


def in_memory(state: State) -> dict[str, np.ndarray]:
    """state with every streamed member made into its bytes."""
    return {name: value.content() if isinstance(value, Streamed) else value for name, value in state.items()}


def state_bytes(state: State) -> int | None:
    """The bytes state holds in memory; None when a member is streamed (its size is known once written)."""
    sizes = [value.nbytes for value in state.values() if isinstance(value, np.ndarray)]
    return sum(sizes) if len(sizes) == len(state) else None


@dataclass
class Checkpoint:
    """Everything a new worker generation needs to go on where the last one stopped."""

    batch: int  # batches trained
    eta: float
    target: int
    report_every: int
    gen: int  # generation of the worker that wrote it
    last_seq: int  # highest control command applied
    run_offset: int  # size of the run file when written: answers after it may need repeating
    state: State = field(repr=False)  # the trainer's own: {"sv": state vector} for the built-in net
    control_id: str | None = None  # file_id of the control file last_seq numbers: one made anew starts over
    pace: float = 0.0  # at most this many batches a second; 0: flat out (absent from older checkpoints)
    loss: float | None = None  # the latest loss when written (absent from older checkpoints)
    min_free_mb: float = 100.0  # training pauses while the run's filesystem has less free (absent from older ones)

    @property
    def sv(self) -> np.ndarray | None:
        """The built-in net's state vector, when this checkpoint holds one."""
        sv = self.state.get("sv")
        return sv if isinstance(sv, np.ndarray) else None


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write to a temporary file, fsync, then rename over the old one: a crash leaves the old or the new, whole."""
    write_checkpoint(path, ckpt).sync_into_place()


def write_checkpoint(path: Path, ckpt: Checkpoint, into: Path | None = None) -> WrittenTemp:
    """ckpt written into a temporary file beside path (into, a prepared one, when given), not yet synced or in place:
    its sync_into_place() may come later, on another thread, once training has gone on."""
    members = _members(ckpt)
    return write_temp(path, lambda f: write_npz(f, members), into)


def write_npz(f: BinaryIO, members: State) -> None:
    """An .npz archive as np.savez writes it (stored, not compressed), each array written from its own memory in
    pieces, each streamed member written as it is made."""
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in members.items():
            if isinstance(value, Streamed):
                with archive.open(name, mode="w", force_zip64=True) as member:
                    # torch.save writes many small pieces: each through the zip's own stream costs a call and a CRC
                    pieces = io.BufferedWriter(_RawWriter(member), buffer_size=STREAM_BUFFER_BYTES)  # type: ignore[arg-type]
                    value.write(pieces)
                    pieces.flush()
            else:
                with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


STREAM_BUFFER_BYTES = 1 << 20


class _RawWriter(io.RawIOBase):
    """A binary stream as the raw stream io.BufferedWriter buffers for (pieces it has gathered pass straight on)."""

    def __init__(self, out: BinaryIO):
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001  (a bytes-like object)
        self.out.write(data)
        return len(data)


def _members(ckpt: Checkpoint) -> State:
    """What the .npz holds: the settings as JSON (meta) and the trainer's own arrays."""
    meta = {
        f.name: getattr(ckpt, f.name) for f in fields(ckpt) if f.name != "state"
    }  # not asdict: it copies the arrays
    if "meta" in ckpt.state:
        raise ValueError("a trainer's checkpoint arrays cannot be called meta")
    return {"meta": np.array(json.dumps(meta)), **ckpt.state}


TRAINER_EXTRA_BYTES = 1 << 20  # beside the parameters: the built-in sampler's state is a few hundred bytes
NPZ_MAGIC = b"PK\x03\x04"  # what np.load takes for an .npz archive


def _declared_bytes(f) -> dict[str, int]:
    """The bytes each array of an .npz says it holds, read from the arrays' headers alone (nothing else is loaded).

    A file of a few hundred bytes may declare an array of 10^9 floats, which loading would then allocate: the sizes
    are checked before any array is read.
    """
    declared = {}
    with zipfile.ZipFile(f) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):  # a streamed member: bytes, read as they are
                declared[member] = archive.getinfo(member).file_size
                continue
            with archive.open(member) as array:
                version = np.lib.format.read_magic(array)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(array)
            declared[member.removesuffix(".npy")] = math.prod(shape) * dtype.itemsize
    return declared


def _check_sizes(f, most_state_bytes: int | None) -> None:
    """ValueError when the arrays declare more than a checkpoint of the run could hold: its net's parameters, and up to
    TRAINER_EXTRA_BYTES more of what else a trainer keeps (its sampler's state)."""
    start = f.read(6)
    f.seek(0)
    if not start.startswith(NPZ_MAGIC):
        # np.load decides by these first bytes: a bare array (whose header it would trust) followed by an archive is
        # not an archive to it. Pickles are left to np.load, which refuses them in its own words.
        if start.startswith(b"\x93NUMPY"):
            raise ValueError("it is a single array, not a checkpoint")
        return
    declared = _declared_bytes(f)
    if declared.get("meta", 0) > SETTINGS_MOST_BYTES:
        raise ValueError(f"its settings declare {declared['meta']:,} bytes")
    state_bytes = sum(size for name, size in declared.items() if name != "meta")
    if most_state_bytes is not None and state_bytes > most_state_bytes + TRAINER_EXTRA_BYTES:
        raise ValueError(f"its arrays declare {state_bytes:,} bytes, where the run's net has {most_state_bytes:,}")
    f.seek(0)


def load_checkpoint(path: Path, most_state_bytes: int | None = None) -> Checkpoint | None:
    """The saved checkpoint, or None when there is none yet. With most_state_bytes (what the run's net holds), one whose
    arrays declare more is refused before any is loaded; a checkpoint's settings are always bounded so."""
    try:
        with open_file(path) as f:
            _check_sizes(f, most_state_bytes)
            with np.load(f, allow_pickle=False) as saved:
                meta = parse_json(str(saved["meta"]))
                state: State = {name: _array(saved[name]) for name in saved.files if name != "meta"}
        return Checkpoint(state=state, **meta)
    except FileNotFoundError:
        return None
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        zipfile.BadZipFile,
    ) as err:  # TypeError: meta that is not Checkpoint's fields
        # numpy's own words for pickled content suggest loading it unsafely: never, for a file anyone could have put here.
        reason = "it holds pickled objects, which are never loaded" if "pickle" in str(err) else str(err)
        raise NnobsError(f"checkpoint {path} is unreadable ({reason}); move it away to start the run afresh") from err


def _array(value: np.ndarray | bytes) -> np.ndarray:
    """A member as loaded (an array, or a streamed member's bytes) as an array of its own."""
    return np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else value.copy()


def load_checkpoint_meta(path: Path) -> dict | None:
    """The checkpoint's settings alone (batch, eta, target, ...), without reading its arrays; None when unreadable."""
    try:
        with open_file(path) as f:
            _check_sizes(f, None)
            with np.load(f, allow_pickle=False) as saved:  # an .npz member is read only when asked for
                meta = parse_json(str(saved["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if not isinstance(meta, dict):
        return None
    # Only what is of the type a checkpoint writes: a file anyone could have put here must not take a reader down.
    whole = {k: meta[k] for k in ("batch", "target", "report_every", "last_seq") if is_count(meta.get(k))}
    numbers = {k: float(meta[k]) for k in ("eta", "pace") if is_count(meta.get(k)) or isinstance(meta.get(k), float)}
    control_id = {"control_id": meta["control_id"]} if isinstance(meta.get("control_id"), str) else {}
    return whole | numbers | control_id


# Checkpoints kept to rewind and fork to: the training side keeps one at batches spread evenly in log batches (12 a
# decade) and links each clock checkpoint here too; beyond these bounds the one whose going leaves the smallest gap,
# as a ratio of batches, goes first, so what stays is spread as evenly in log batches as their number allows.
KEPT_MOST = 160  # 12 a decade over 13 decades: a run of 10^12 batches keeps every decade's
MIB = 1024 * 1024
KEPT_MB = 256.0  # the default budget on disk, all told (nnobs.Run's kept_mb): XOR's are 1 KB each; a large net's keep
# fewer, as evenly spread, and one larger than the budget is not kept (checkpoint.npz is still there to resume from)
KEPT_BYTES = int(KEPT_MB * MIB)
KEPT_NEWEST = 4  # the newest few are never thinned: the last seconds of training, to go back a little
KEPT_NAME = re.compile(r"[0-9]{1,30}\.npz")  # a kept checkpoint's file: its batch, zero-padded


def kept_dir(path: Path) -> Path:
    """The directory of the kept checkpoints beside checkpoint path."""
    return Path(path).parent / "checkpoints"


def kept_path(path: Path, batch: int) -> Path:
    """Where the checkpoint kept at batch lies, beside checkpoint path."""
    return kept_dir(path) / f"{batch:015d}.npz"


def kept_batches(path: Path) -> list[int]:
    """Batches of the kept checkpoints beside path, oldest first."""
    return sorted(_kept_sizes(kept_dir(path)))


def _kept_sizes(folder: Path, current: Path | None = None) -> dict[int, int]:
    """The kept checkpoints in folder: their batches and sizes in bytes, in one pass over the directory (a fast run
    keeps several a second early on, each followed by a thinning that needs them all). One that is the checkpoint
    current itself (a hard link to it) takes no room of its own: 0."""
    try:
        same = os.stat(current, follow_symlinks=False) if current is not None else None
    except OSError:
        same = None
    try:
        with os.scandir(folder) as entries:
            return {int(e.name[:-4]): _size(e, same) for e in entries if KEPT_NAME.fullmatch(e.name)}
    except OSError:
        return {}


def keep_checkpoint(path: Path, batch: int, most_bytes: int = KEPT_BYTES) -> None:
    """Keep the checkpoint just saved at path (its batch given) for rewinding, and thin out the kept set.

    A hard link costs no space until checkpoint.npz is replaced by its successor.
    """
    folder = kept_dir(path)
    folder.mkdir(exist_ok=True)
    kept = kept_path(path, batch)
    tmp = folder / f".{kept.name}.tmp"
    tmp.unlink(missing_ok=True)
    sizes = _listing(folder, path)  # before this keep changes the folder
    try:
        os.link(path, tmp, follow_symlinks=False)  # a link planted there stays a link, which no load follows
        size = 0  # the checkpoint itself: it takes no room of its own until replaced
    except OSError:  # a filesystem without hard links
        with open_file(path) as saved:
            replace_atomically(tmp, lambda out: out.write(saved.read()))
        size = os.stat(tmp).st_size
    os.replace(tmp, kept)
    sizes[batch] = size
    _thin(folder, path, sizes, most_bytes)


def save_kept(path: Path, ckpt: Checkpoint, most_bytes: int = KEPT_BYTES) -> None:
    """Write ckpt straight into the kept set beside checkpoint path, and thin it out.

    Renamed into place but not synced: these are written many times a second early in a fast run, where a sync
    would cost more than the training; a crash may cost the newest of them, never checkpoint.npz.
    """
    folder = kept_dir(path)
    folder.mkdir(exist_ok=True)
    kept = kept_path(path, ckpt.batch)
    tmp = folder / f".{kept.name}.tmp"
    sizes = _listing(folder, path)  # before this write changes the folder
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        write_npz(out, _members(ckpt))
        size = out.tell()
    os.replace(tmp, kept)
    sizes[ckpt.batch] = size
    _thin(folder, path, sizes, most_bytes)


# The kept sets this process writes, as it last left them, by folder: the folder's mtime then, the identity of the
# checkpoint.npz its link shares, and every kept file's size. A fast run keeps several a second early on, and
# listing a folder of 160 of them with a stat each was half of what keeping one cost (0.4 of 0.8 ms, XOR's).
# Listed afresh whenever the folder changed since (a rewind's forgetting, anyone's file) or checkpoint.npz was
# replaced (the file its link shared now takes room of its own). A change by someone else within the same tick of
# the filesystem's clock as this process's last goes unseen until the next: it moves the byte count, never a file.
_listings: dict[Path, tuple[int, tuple[int, int] | None, dict[int, int]]] = {}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return found.st_ino, found.st_dev


def _listing(folder: Path, current: Path) -> dict[int, int]:
    """The kept checkpoints in folder and their sizes (_kept_sizes), from this process's last listing when valid."""
    known = _listings.get(folder)
    if known is not None:
        try:
            unchanged = os.stat(folder).st_mtime_ns == known[0] and _identity(current) == known[1]
        except OSError:
            unchanged = False
        if unchanged:
            return dict(known[2])
    return _kept_sizes(folder, current)


def _thin(folder: Path, path: Path, sizes: dict[int, int], most_bytes: int) -> None:
    """Drop kept checkpoints (listed as sizes) beyond KEPT_MOST, the one leaving the smallest gap in log batches first;
    then while they take more than most_bytes (the link to checkpoint.npz takes none), the same way, sparing the first
    and the newest few while others can go, and then the oldest: a large net's checkpoints keep as many as the budget
    holds. The listing left is remembered for the next keep."""
    batches, total = sorted(sizes), sum(sizes.values())

    def gap(i: int) -> float:
        return (batches[i + 1] + 1) / (batches[i - 1] + 1)

    def drop(i: int) -> None:
        nonlocal total
        gone = batches.pop(i)
        total -= sizes.pop(gone)
        (folder / f"{gone:015d}.npz").unlink(missing_ok=True)

    while len(batches) > max(KEPT_NEWEST + 2, KEPT_MOST):
        drop(min(range(1, len(batches) - KEPT_NEWEST), key=gap))
    while total > most_bytes:
        costly = [i for i, batch in enumerate(batches) if sizes[batch]]
        interior = [i for i in costly if 0 < i < len(batches) - KEPT_NEWEST]
        drop(min(interior, key=gap) if interior else costly[0])
    try:
        _listings[folder] = (os.stat(folder).st_mtime_ns, _identity(path), sizes)
    except OSError:
        _listings.pop(folder, None)


def _size(entry: os.DirEntry, current: os.stat_result | None) -> int:
    try:
        stat = entry.stat(follow_symlinks=False)
    except OSError:
        return 0
    if current is not None and (stat.st_ino, stat.st_dev) == (current.st_ino, current.st_dev):
        return 0
    return stat.st_size


def landing(path: Path, batch: int) -> int | None:
    """The batch a rewind or fork to batch lands on: the newest kept checkpoint at or before it; None when none is."""
    at_or_before = [b for b in kept_batches(path) if b <= batch]
    return at_or_before[-1] if at_or_before else None


def forget_kept_after(path: Path, batch: int) -> None:
    """Drop the kept checkpoints past batch: they belong to a line of training the run went back from."""
    _listings.pop(kept_dir(path), None)  # listed afresh at the next keep, however soon after its last
    for later in (b for b in kept_batches(path) if b > batch):
        (kept_dir(path) / f"{later:015d}.npz").unlink(missing_ok=True)


def load_kept(path: Path, batch: int, most_state_bytes: int | None = None) -> Checkpoint | None:
    """The newest kept checkpoint at or before batch, or None when none is kept there."""
    landed = landing(path, batch)
    return None if landed is None else load_checkpoint(kept_path(path, landed), most_state_bytes)
