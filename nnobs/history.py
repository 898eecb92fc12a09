"""A run's records folded into the series and latest values that status, charts and the CLI show."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnobs.records import Record, RecordReader
from nnobs.series import Column, MinMaxBuckets

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


HEARTBEAT_KEYS = frozenset(("loss", "t", "gen"))
MAX_POINTS = 2000  # loss points sent to the browser: the min and max of 1,000 buckets
SV_BUCKETS = 200  # buckets per parameter line: its min and max in each
SV_KEPT = 256  # parameters whose trajectories are kept for the charts; a larger net keeps its latest vector whole


class RunHistory:
    """Series and latest values of one run; feed it records in file order with add().

    Memory stays bounded for state vectors: their trajectories are kept as min/max buckets of
    the first SV_KEPT parameters, and only the latest vector is kept whole. The loss is kept
    whole in compact arrays (16 bytes a report), with buckets beside it for the chart.
    """

    def __init__(self, max_points: int = MAX_POINTS):
        self.loss_batches = Column(np.int64)
        self.loss_values = Column(float)  # NaN where the loss diverged
        self.loss_buckets = MinMaxBuckets(1, max_points // 2)
        self.sv_batches = Column(np.int64)  # batch of every state report
        self.sv_buckets: MinMaxBuckets | None = None  # over the first SV_KEPT parameters
        self.sv_latest: np.ndarray | None = None  # the newest state vector, whole
        self.events: list[Event] = []
        self.answers: dict[str, Answer] = {}  # by command id
        self.batch = 0
        self.loss: float | None = None
        self.eta: float | None = None
        self.target: int | None = None
        self.report_every: int | None = None
        self.gen: int | None = None
        self.pid: int | None = None
        self.last_t: float | None = None  # wall time of the newest record: the heartbeat
        self.diverged = False
        self.n_records = 0

    def add(self, records: list[Record]) -> None:
        loss_batches, loss_values, sv_batches, sv_rows = [], [], [], []
        for record in records:
            t = record.get("t")
            if t is not None and _number(t) is not None:
                self.last_t = t
            gen = record.get("gen")
            if isinstance(gen, int):
                self.gen = gen
            loss = _pair(record.get("loss"))
            if loss:
                batch, value = loss
                self.diverged = value is None or bool(record.get("diverged"))
                self.loss = None if self.diverged else _number(value)
                self.batch = batch
                loss_batches.append(batch)
                loss_values.append(np.nan if self.loss is None else self.loss)
            if not loss or not HEARTBEAT_KEYS.issuperset(record):  # most records are a bare loss report
                self._add_rest(record, t, sv_batches, sv_rows)
        self.n_records += len(records)
        if loss_batches:
            self.loss_batches.extend(loss_batches)
            self.loss_values.extend(loss_values)
            self.loss_buckets.extend(np.array(loss_batches), np.array(loss_values)[:, None])
        if sv_rows:
            self._add_state_vectors(sv_batches, sv_rows)

    def _add_rest(self, record: Record, t, sv_batches: list, sv_rows: list) -> None:
        sv = _pair(record.get("sv"))
        if sv and isinstance(sv[1], list):
            sv_batches.append(sv[0])
            sv_rows.append(sv[1])
        for topic in ("eta", "target", "report_every"):
            pair = _pair(record.get(topic))
            if pair and _number(pair[1]) is not None:
                setattr(self, topic, pair[1])
        event = _pair(record.get("event"))
        if event and isinstance(event[1], str):
            self._add_event(event[0], event[1], record, t)
        for topic, ok in (("ack", True), ("reject", False)):
            pair = _pair(record.get(topic))
            if pair and isinstance(pair[1], dict):
                answer = pair[1]
                self.answers[str(answer.get("id"))] = Answer(ok, pair[0], str(answer.get("reason", "")), t)

    def _add_state_vectors(self, batches: list[int], rows: list[list]) -> None:
        width = len(rows[-1])
        same = [i for i, row in enumerate(rows) if len(row) == width]  # a report of another net is dropped
        if self.sv_latest is None or len(self.sv_latest) != width:  # the first report, or the net changed
            self.sv_batches = Column(np.int64)
            self.sv_buckets = MinMaxBuckets(min(width, SV_KEPT), SV_BUCKETS)
        kept = np.array([[np.nan if v is None else v for v in rows[i][:SV_KEPT]] for i in same], dtype=float)
        self.sv_batches.extend([batches[i] for i in same])
        self.sv_buckets.extend(np.array([batches[i] for i in same]), kept)
        self.sv_latest = np.array([np.nan if v is None else v for v in rows[same[-1]]], dtype=float)

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
        """Every reported loss: batches (n,) and values (n,), NaN where diverged."""
        return self.loss_batches.values(), self.loss_values.values()


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
