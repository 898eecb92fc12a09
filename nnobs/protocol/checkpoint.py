"""Checkpoints: a run's whole state in one .npz file, replaced atomically, loaded without pickle.

The file holds the session's settings as JSON (meta) and, beside them, whatever arrays the
trainer saves of its net: the built-in worker its state vector (sv), a script its own bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import FILE_MODE, SETTINGS_MOST_BYTES, open_file, replace_atomically
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_count


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
    state: dict[str, np.ndarray] = field(repr=False)  # the trainer's own: {"sv": state vector} for the built-in net
    control_id: str | None = None  # file_id of the control file last_seq numbers: one made anew starts over
    pace: float = 0.0  # at most this many batches a second; 0: flat out (absent from older checkpoints)
    loss: float | None = None  # the latest loss when written (absent from older checkpoints)
    min_free_mb: float = 100.0  # training pauses while the run's filesystem has less free (absent from older ones)

    @property
    def sv(self) -> np.ndarray | None:
        """The built-in net's state vector, when this checkpoint holds one."""
        return self.state.get("sv")


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write to a temporary file, fsync, then rename over the old one: a crash leaves the old or the new, whole."""
    arrays = _arrays(ckpt)
    replace_atomically(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # the stub takes **arrays for allow_pickle


def _arrays(ckpt: Checkpoint) -> dict[str, np.ndarray]:
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
                state = {name: saved[name].copy() for name in saved.files if name != "meta"}
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
KEPT_BYTES = 256 * 1024 * 1024  # on disk, all told: XOR's are 1 KB each; a large net's keep fewer, as evenly spread
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


def _kept_sizes(folder: Path) -> dict[int, int]:
    """The kept checkpoints in folder: their batches and sizes in bytes, in one pass over the directory (a fast run
    keeps several a second early on, each followed by a thinning that needs them all)."""
    try:
        with os.scandir(folder) as entries:
            return {int(e.name[:-4]): _size(e) for e in entries if KEPT_NAME.fullmatch(e.name)}
    except OSError:
        return {}


def keep_checkpoint(path: Path, batch: int) -> None:
    """Keep the checkpoint just saved at path (its batch given) for rewinding, and thin out the kept set.

    A hard link costs no space until checkpoint.npz is replaced by its successor.
    """
    folder = kept_dir(path)
    folder.mkdir(exist_ok=True)
    kept = kept_path(path, batch)
    tmp = folder / f".{kept.name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp, follow_symlinks=False)  # a link planted there stays a link, which no load follows
    except OSError:  # a filesystem without hard links
        with open_file(path) as saved:
            replace_atomically(tmp, lambda out: out.write(saved.read()))
    os.replace(tmp, kept)
    thin_kept(path)


def save_kept(path: Path, ckpt: Checkpoint) -> None:
    """Write ckpt straight into the kept set beside checkpoint path, and thin it out.

    Renamed into place but not synced: these are written many times a second early in a fast run, where a sync
    would cost more than the training; a crash may cost the newest of them, never checkpoint.npz.
    """
    folder = kept_dir(path)
    folder.mkdir(exist_ok=True)
    kept = kept_path(path, ckpt.batch)
    tmp = folder / f".{kept.name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        np.savez(out, **_arrays(ckpt))  # type: ignore[arg-type]  # the stub takes **arrays for allow_pickle
    os.replace(tmp, kept)
    thin_kept(path)


def thin_kept(path: Path) -> None:
    """Drop kept checkpoints beyond KEPT_MOST or KEPT_BYTES, the one leaving the smallest gap in log batches first."""
    folder = kept_dir(path)
    sizes = _kept_sizes(folder)
    batches, total = sorted(sizes), sum(sizes.values())
    while len(batches) > KEPT_NEWEST + 2 and (len(batches) > KEPT_MOST or total > KEPT_BYTES):
        interior = range(1, len(batches) - KEPT_NEWEST)
        gone = batches.pop(min(interior, key=lambda i: (batches[i + 1] + 1) / (batches[i - 1] + 1)))
        total -= sizes.pop(gone)
        (folder / f"{gone:015d}.npz").unlink(missing_ok=True)


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0


def landing(path: Path, batch: int) -> int | None:
    """The batch a rewind or fork to batch lands on: the newest kept checkpoint at or before it; None when none is."""
    at_or_before = [b for b in kept_batches(path) if b <= batch]
    return at_or_before[-1] if at_or_before else None


def forget_kept_after(path: Path, batch: int) -> None:
    """Drop the kept checkpoints past batch: they belong to a line of training the run went back from."""
    for later in (b for b in kept_batches(path) if b > batch):
        (kept_dir(path) / f"{later:015d}.npz").unlink(missing_ok=True)


def load_kept(path: Path, batch: int, most_state_bytes: int | None = None) -> Checkpoint | None:
    """The newest kept checkpoint at or before batch, or None when none is kept there."""
    landed = landing(path, batch)
    return None if landed is None else load_checkpoint(kept_path(path, landed), most_state_bytes)
