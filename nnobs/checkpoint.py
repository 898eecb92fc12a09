"""Checkpoints: the worker's whole state in one .npz file, replaced atomically, loaded without pickle."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nnobs.errors import NnobsError
from nnobs.files import replace_atomically


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
    sv: np.ndarray = field(repr=False)  # state vector, (n_params,)
    control_id: str | None = None  # file_id of the control file last_seq numbers: one made anew starts over


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    """Write to a temporary file, fsync, then rename over the old one: a crash leaves the old or the new, whole."""
    meta = {k: v for k, v in asdict(ckpt).items() if k != "sv"}
    replace_atomically(path, lambda f: np.savez(f, sv=np.asarray(ckpt.sv, dtype=float), meta=np.array(json.dumps(meta))))


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The saved checkpoint, or None when there is none yet."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            sv = saved["sv"].copy()
        return Checkpoint(sv=sv, **meta)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:  # TypeError: meta that is not Checkpoint's fields
        # numpy's own words for pickled content suggest loading it unsafely: never, for a file anyone could have put here.
        reason = "it holds pickled objects, which are never loaded" if "pickle" in str(err) else str(err)
        raise NnobsError(f"checkpoint {path} is unreadable ({reason}); move it away to start the run afresh") from err
