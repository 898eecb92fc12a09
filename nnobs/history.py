"""A run's records folded into the series and latest values that status, charts and the CLI show."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nnobs.records import Record, RecordReader

LIFECYCLE = ("started", "target_reached", "shutdown", "error", "control_error")


@dataclass
class Answer:
    """The worker's answer to one command."""

    ok: bool
    batch: int
    reason: str = ""
    t: float | None = None  # wall time of the answer


@dataclass
class Event:
    """A lifecycle event: started, target_reached, shutdown, error, control_error."""

    kind: str
    batch: int
    gen: int | None
    t: float | None
    detail: str = ""


@dataclass
class RunHistory:
    """Series and latest values of one run; feed it records in file order with add()."""

    loss_batches: list[int] = field(default_factory=list)
    loss_values: list[float] = field(default_factory=list)  # NaN where the loss diverged
    sv_batches: list[int] = field(default_factory=list)
    sv_rows: list[list[float]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)  # by command id
    batch: int = 0
    loss: float | None = None
    eta: float | None = None
    target: int | None = None
    report_every: int | None = None
    gen: int | None = None
    pid: int | None = None
    last_t: float | None = None  # wall time of the newest record: the heartbeat
    diverged: bool = False
    n_records: int = 0

    def add(self, records: list[Record]) -> None:
        for record in records:
            self._add_one(record)

    def _add_one(self, record: Record) -> None:
        self.n_records += 1
        t = _number(record.get("t"))
        if t is not None:
            self.last_t = t
        if isinstance(record.get("gen"), int):
            self.gen = record["gen"]
        if "loss" in record and (pair := _pair(record["loss"])):
            batch, value = pair
            self.diverged = value is None or bool(record.get("diverged"))
            self.loss = None if self.diverged else _number(value)
            self.batch = batch
            self.loss_batches.append(batch)
            self.loss_values.append(np.nan if self.loss is None else self.loss)
        if "sv" in record and (pair := _pair(record["sv"])) and isinstance(pair[1], list):
            self.sv_batches.append(pair[0])
            self.sv_rows.append([np.nan if v is None else v for v in pair[1]])
        for topic in ("eta", "target", "report_every"):
            if topic in record and (pair := _pair(record[topic])) and _number(pair[1]) is not None:
                setattr(self, topic, pair[1])
        if "event" in record and (pair := _pair(record["event"])) and isinstance(pair[1], str):
            self._add_event(pair[0], pair[1], record, t)
        for topic, ok in (("ack", True), ("reject", False)):
            if topic in record and (pair := _pair(record[topic])) and isinstance(pair[1], dict):
                answer = pair[1]
                self.answers[str(answer.get("id"))] = Answer(ok, pair[0], str(answer.get("reason", "")), t)

    def _add_event(self, batch: int, kind: str, record: Record, t: float | None) -> None:
        detail = str(record.get("error", ""))
        if kind == "started":
            self.pid = record.get("pid") if isinstance(record.get("pid"), int) else None
            self.diverged = False
            if record.get("resumed_from") is not None:
                detail = f"resumed from the checkpoint at batch {record['resumed_from']:,}"
        self.events.append(Event(kind, batch, self.gen, t, detail))

    @property
    def last_lifecycle(self) -> Event | None:
        """The newest event other than a control-file warning."""
        return next((e for e in reversed(self.events) if e.kind != "control_error"), None)

    def loss_series(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.loss_batches, dtype=np.int64), np.asarray(self.loss_values, dtype=float)

    def sv_series(self) -> tuple[np.ndarray, np.ndarray]:
        """Batches (n,) and state vectors (n, n_params) of the reports whose length matches the newest one."""
        if not self.sv_rows:
            return np.empty(0, dtype=np.int64), np.empty((0, 0))
        width = len(self.sv_rows[-1])
        keep = [i for i, row in enumerate(self.sv_rows) if len(row) == width]
        return np.asarray([self.sv_batches[i] for i in keep], dtype=np.int64), np.asarray(
            [self.sv_rows[i] for i in keep], dtype=float
        )


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _pair(value: Any) -> tuple[int, Any] | None:
    """A topic's [batch, value], or None when the record does not have that shape."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int):
        return value[0], value[1]
    return None


class RunWatcher:
    """A run file's reader and its history, refreshed incrementally; one per run, shared by every viewer."""

    def __init__(self, path):
        self.reader = RecordReader(path)
        self.history = RunHistory()
        # Page sessions run in threads of their own: hold this while refreshing and reading the history.
        self.lock = threading.Lock()

    def refresh(self) -> RunHistory:
        """Fold in what was appended since the last refresh; start over if the file was replaced or shrank."""
        restarts = self.reader.restarts
        records = self.reader.read_new()
        if self.reader.restarts != restarts:
            self.history = RunHistory()
        self.history.add(records)
        return self.history
