"""Scalars other loggers wrote (TensorBoard event files, CSV files), read as they grow and made into run records:
what `nnobs import` and `nnobs follow` show of a training that logs elsewhere.

TensorBoard's files are read with TensorBoard's own reader (the `tensorboard` package, the extra
nnobs[tensorboard]): its record format and its summaries' migrations are TensorBoard's to keep. A CSV file has a
header row; its step column (step, global_step, batch, iteration, epoch or _step) numbers the rows (their order does
where there is none), a time column (wall_time, time, timestamp, _timestamp) stamps them, and every other column of
numbers is a scalar.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import open_file
from nnobs.protocol.schema import METRIC_NAME

FORMAT_NAMES = {"tensorboard": "TensorBoard log", "csv": "CSV file"}  # the logs read, as said to people
EVENT_FILES = "events.out.tfevents.*"
STEP_COLUMNS = ("step", "global_step", "batch", "iteration", "epoch", "_step")
TIME_COLUMNS = ("wall_time", "time", "timestamp", "_timestamp")
HELD_OUT = ("val", "valid", "test", "eval")  # a loss tag naming held-out data is a metric, not the training loss


@dataclass(frozen=True)
class Scalar:
    step: int
    t: float  # wall time it was written (NaN where the log has none)
    tag: str
    value: float


class TensorBoardLog:
    """A TensorBoard log directory read as it grows: each call gives the scalars written since the last, from every
    event file under it (add_scalars writes one a subfolder), in the order of their steps."""

    def __init__(self, logdir: Path):
        try:
            from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
            from tensorboard.util.tensor_util import make_ndarray
        except ImportError as err:
            raise NnobsError("reading TensorBoard logs needs TensorBoard: pip install 'nnobs[tensorboard]'") from err
        self.logdir = Path(logdir)
        self._loader, self._as_array = EventFileLoader, make_ndarray
        self._files: dict[Path, object] = {}
        self._scalar_tags: dict[Path, set[str]] = {}  # a file's tags its first value said are scalars

    def where(self) -> str:
        return str(self.logdir.resolve())

    def new_scalars(self) -> list[Scalar]:
        if not self.logdir.is_dir():
            if self.logdir.exists():
                raise NnobsError(
                    f"{self.logdir} is no directory: give the folder SummaryWriter writes to (its log_dir)"
                )
            return []  # not written yet: a log followed from before its training starts
        for path in sorted(self.logdir.rglob(EVENT_FILES)):
            if path not in self._files and path.is_file():
                self._files[path] = self._loader(str(path))
        found = []
        for path, loader in self._files.items():
            folder = path.parent.relative_to(self.logdir).as_posix()
            for event in loader.Load():  # type: ignore[attr-defined]
                scalar_tags = self._scalar_tags.setdefault(path, set())
                for value in event.summary.value:
                    # A tag's first value says what it is; TensorBoard's writers may leave that out of the others.
                    if value.metadata.plugin_data.plugin_name == "scalars":
                        scalar_tags.add(value.tag)
                    if value.tag not in scalar_tags or not value.HasField("tensor"):
                        continue  # histograms, images, text: not scalars
                    array = self._as_array(value.tensor)
                    if array.size != 1:
                        continue
                    tag = value.tag if folder == "." else f"{folder}/{value.tag}"
                    found.append(Scalar(int(event.step), float(event.wall_time), tag, _as_written(array)))
        return sorted(found, key=lambda s: (s.step, s.t))


class CsvLog:
    """A CSV file of scalars read as it grows: each call gives the rows completed since the last."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._offset = 0
        self._file: tuple[int, int] | None = None  # inode and device of the file read
        self._header: list[str] | None = None
        self._rows = 0

    def where(self) -> str:
        return str(self.path.resolve())

    def new_scalars(self) -> list[Scalar]:
        try:
            with open_file(self.path) as f:
                stat = os.fstat(f.fileno())
                if (stat.st_ino, stat.st_dev) != self._file or stat.st_size < self._offset:
                    # Written anew (a logger that rewrites its whole file when a column comes): read from its header
                    self._file, self._offset, self._header, self._rows = (stat.st_ino, stat.st_dev), 0, None, 0
                f.seek(self._offset)
                text = f.read()
        except FileNotFoundError:
            return []  # not written yet: a log followed from before its training starts
        except OSError as err:
            raise NnobsError(f"cannot read {self.path}: {err.strerror or err}") from err
        complete = text[: text.rfind(b"\n") + 1]  # a row still being written waits for the next call
        self._offset += len(complete)
        try:
            rows = list(csv.reader(io.StringIO(complete.decode(errors="replace").replace("\0", ""))))
        except csv.Error as err:
            raise NnobsError(f"{self.path} is no CSV file nnobs can read: {err}") from err
        if self._header is None:
            if not rows:
                return []
            self._header = [name.strip() for name in rows.pop(0)]
        lowered = [name.lower() for name in self._header]
        step_at = next((lowered.index(c) for c in STEP_COLUMNS if c in lowered), None)
        time_at = next((lowered.index(c) for c in TIME_COLUMNS if c in lowered), None)
        found = []
        for row in rows:
            if not row:
                continue
            self._rows += 1
            step = _number(row[step_at]) if step_at is not None and step_at < len(row) else self._rows
            if step is None:
                continue  # a row without its step: nothing to place it at
            t = _number(row[time_at]) if time_at is not None and time_at < len(row) else None
            for i, (name, cell) in enumerate(zip(self._header, row)):
                if i not in (step_at, time_at) and (value := _number(cell)) is not None:
                    found.append(Scalar(int(step), math.nan if t is None else t, name, value))
        return found


def _number(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _as_written(array: np.ndarray) -> float:
    """A scalar as its logger wrote it: a float32 by its shortest spelling (0.1, not 0.10000000149011612)."""
    value = array.reshape(())[()]
    return float(str(value)) if isinstance(value, np.float32) else float(value)


def metric_name(tag: str) -> str:
    """A tag as a metric's name (train/acc: train.acc): what run.log takes, 64 characters at most."""
    if METRIC_NAME.fullmatch(tag):
        return tag
    name = re.sub(r"[^A-Za-z0-9_.-]", ".", tag)
    name = name if re.match(r"[A-Za-z_]", name) else f"_{name}"
    return name[:64]


def loss_tag(tags: list[str], asked: str | None = None) -> str | None:
    """The tag that is the training loss: the one asked for, else "loss", else one whose last part is loss (train/loss),
    else the first that names a loss of no held-out data; None when no tag does."""
    if asked is not None:
        return asked if asked in tags else None
    if "loss" in tags:
        return "loss"

    def parts(tag: str) -> list[str]:
        return [p for p in re.split(r"[/._\- ]", tag.lower()) if p]

    trained = [t for t in tags if not set(parts(t)) & set(HELD_OUT)]
    return next((t for t in trained if parts(t)[-1:] == ["loss"]), None) or next(
        (t for t in trained if "loss" in t.lower()), None
    )


def records_of(scalars: list[Scalar], loss: str | None) -> list[tuple[dict, float]]:
    """Run records of scalars, one a step (scalars of one step in a row share it): the loss tag's value as the loss,
    the others as metrics; each with the wall time it was written (the newest of its scalars)."""
    records: list[tuple[dict, float]] = []
    for step, same_step in _runs_of_steps(scalars):
        record: dict = {}
        metrics = {}
        for scalar in same_step:
            if scalar.tag == loss:
                record["loss"] = [step, scalar.value]
            else:
                metrics[metric_name(scalar.tag)] = [scalar.value]
        if metrics:
            record["metrics"] = [step, metrics]
        times = [s.t for s in same_step if not math.isnan(s.t)]
        records.append((record, max(times) if times else math.nan))
    return records


def _runs_of_steps(scalars: list[Scalar]) -> list[tuple[int, list[Scalar]]]:
    runs: list[tuple[int, list[Scalar]]] = []
    for scalar in scalars:
        if runs and runs[-1][0] == scalar.step:
            runs[-1][1].append(scalar)
        else:
            runs.append((scalar.step, [scalar]))
    return runs
