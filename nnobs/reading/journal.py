"""A run's journal: its lifecycle events, the worker's answers to commands, and the markers they leave on the charts."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from nnobs.protocol import events
from nnobs.protocol.commands import marker_label
from nnobs.protocol.events import EventKind
from nnobs.protocol.numbers import number
from nnobs.protocol.population import BY as POPULATION_BY
from nnobs.protocol.records import Record, pair

MAX_MARKERS = 200  # the newest are kept; a chart with more would be unreadable anyway


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
    by: str = ""  # who asked for it, when someone did: "page", "cli", ...


@dataclass
class Marker:
    """Where something changed the run: a command took effect, or a worker generation began."""

    batch: int
    label: str  # e.g. "eta 0.05", "target 5,000", "gen 2"
    kind: str  # "command" or "generation"
    number: int  # counts the batches with markers from the first: a stable place for their label


def new_markers() -> deque[Marker]:
    """An empty list of markers that keeps the newest MAX_MARKERS."""
    return deque(maxlen=MAX_MARKERS)


@dataclass(eq=False)
class Journal:
    """What the run file's rare lines say, parsed as JSON one by one: events, answers and markers.

    Going back forgets the markers after the batch gone back to; events and answers stay, as they happened.
    """

    events: list[Event] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)  # by command id
    markers: deque[Marker] = field(default_factory=new_markers)
    marked_batches: int = 0  # batches with markers so far: the number the next one's gets
    gen: int | None = None  # the worker generation that wrote the newest line

    def extend(self, records: list[Record]) -> bool:
        """Fold in records of file order; whether a new pace took effect (a rate measured before says nothing of it)."""
        paced = False
        for record in records:
            t = number(record.get("t"))
            event = pair(record.get("event"))
            if event and isinstance(event[1], str):
                if isinstance(record.get("gen"), int):
                    self.gen = record["gen"]
                self._add_event(event[0], event[1], record, t)
            for topic, ok in (("ack", True), ("reject", False)):
                answer = pair(record.get(topic))
                if answer and isinstance(answer[1], dict):
                    self.answers[str(answer[1].get("id"))] = Answer(ok, answer[0], str(answer[1].get("reason", "")), t)
                    # A population's controller raises every member's target each round: its rhythm, not news.
                    rhythm = answer[1].get("by") == POPULATION_BY and answer[1].get("cmd") == "target"
                    label = "" if rhythm else marker_label(answer[1].get("cmd"), answer[1].get("value"), record)
                    if ok and label:
                        self.mark(answer[0], label, "command")
                    paced = paced or (ok and answer[1].get("cmd") == "pace")
        return paced

    def go_back(self, batch: int) -> None:
        """The run went back to batch: forget the markers after it."""
        while self.markers and self.markers[-1].batch > batch:
            self.markers.pop()

    def _add_event(self, batch: int, kind: str, record: Record, t: float | None) -> None:
        detail = str(record.get("error", ""))
        if kind in events.NEW_LINE:
            self.mark(batch, f"gen {self.gen}", "generation")
        if kind == EventKind.ETA_SCHEDULED and (eta := pair(record.get("eta"))) and isinstance(eta[1], (int, float)):
            self.mark(batch, f"eta {eta[1]:g} (schedule)", "command")
        if kind == EventKind.STARTED and isinstance(record.get("resumed_from"), int):
            detail = f"resumed from the checkpoint at batch {record['resumed_from']:,}"
        self.events.append(Event(kind, batch, self.gen, t, detail, str(record.get("by") or "")))

    def mark(self, batch: int, label: str, kind: str) -> None:
        """Add a marker; markers at the batch of the one before share its number, and so its label's place."""
        if not self.markers or self.markers[-1].batch != batch:
            self.marked_batches += 1
        self.markers.append(Marker(batch, label, kind, self.marked_batches))

    @property
    def last_lifecycle(self) -> Event | None:
        """The newest event other than a control-file warning."""
        return next(
            (e for e in reversed(self.events) if e.kind not in (EventKind.CONTROL_ERROR, EventKind.ALERT)), None
        )
