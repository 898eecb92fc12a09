"""Alerts that reach you: what happened to a run that someone who is not looking should hear of.

Decided from the rows the overview reads (state, batch, loss) and the small history it keeps of each run (latest
metrics, generation, target, events), so that watching every run of a root costs what its overview costs. Each alert
has a key naming what happened (run, what, generation, batch): a watcher restarted after it recorded one never makes
it again, and what a run did while no watcher ran is told when one starts again, by the state it left (alert_state).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nnobs.protocol.errors import NnobsError
from nnobs.protocol.events import EventKind
from nnobs.reading.history import RunHistory
from nnobs.views.overview import RunRow

# The run states an alert can be about, as the page's badges say them; "target reached" and a metric crossing a
# threshold besides, and a script's own alert (run.alert).
STATES = ("crashed", "stalled", "diverged", "not learning", "loss rose", "low disk", "cannot write")
KINDS = (*STATES, "spike", "target reached", "threshold", "alert")
DEFAULT_WHEN = (*STATES, "spike", "alert")  # what a rule tells unless --when chooses
# A spike: the loss (the mean of its newest 100 batches or more, as the page shows it) SPIKE_FACTOR times its smoothed
# line or more, the line being that mean's moving average over the watcher's looks (in log, each look weighing
# SPIKE_WEIGHT): one minibatch's loss is noise, and would spike on every hard batch.
SPIKE_FACTOR = 4.0
SPIKE_WEIGHT = 0.2
WELL_FOR_S = 60.0  # how long a run is well before the same trouble again is news
THRESHOLD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.-]{0,63})\s*([<>])\s*(\S+)\s*")


@dataclass(frozen=True)
class Threshold:
    """A metric (the loss, or one a run logs) crossing a value: "loss>5", "test_loss<0.1"."""

    metric: str
    above: bool  # alert when it rises above value; else when it falls below
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{'>' if self.above else '<'}{self.value:g}"

    def crossed(self, value: float) -> bool:
        return value > self.value if self.above else value < self.value


def parse_threshold(text: str) -> Threshold:
    """ "loss>5" as a Threshold; anything else refused, saying how to write it."""
    found = THRESHOLD.fullmatch(text)
    value = float(found[3]) if found and _is_number(found[3]) else math.nan
    if not found or not math.isfinite(value):
        raise NnobsError(
            f"threshold {text!r} refused: write METRIC>VALUE or METRIC<VALUE, e.g. loss>5 or test_loss<0.1"
        )
    return Threshold(found[1], found[2] == ">", value)


def _is_url(text: str) -> bool:
    """An http(s) URL that urllib can send to: a host, a port that is a number, ASCII only."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018  (raises on a port that is no number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and text.isascii() and " " not in text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class Rule:
    """Where alerts go and which: a webhook (Slack's incoming-webhook JSON, or plain JSON) or a command."""

    webhook: str | None = None
    slack: bool = False
    command: list[str] | None = None
    when: list[str] = field(default_factory=lambda: list(DEFAULT_WHEN))
    thresholds: list[str] = field(default_factory=list)  # as written: "loss>5"
    runs: list[str] | None = None  # None: every run of the root

    def __post_init__(self) -> None:
        if (self.webhook is None) == (self.command is None):
            raise NnobsError("an alert goes to a webhook (--webhook URL) or to a command (--command CMD): one of them")
        if self.webhook is not None and not _is_url(self.webhook):
            raise NnobsError(f"webhook {self.webhook!r} refused: give an http:// or https:// URL")
        if self.command is not None and not self.command:
            raise NnobsError("--command needs a command to run, e.g. --command 'mail -s nnobs me@example.org'")
        unknown = [kind for kind in self.when if kind not in KINDS]
        if unknown:
            raise NnobsError(f"no alert for {', '.join(map(repr, unknown))}: choose from {', '.join(KINDS)}")
        self.limits = [parse_threshold(t) for t in self.thresholds]
        self.thresholds = [str(limit) for limit in self.limits]  # "loss > 5" as "loss>5": the alerts' own spelling

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "limits"}

    def wants(self, alert: Alert) -> bool:
        if self.runs is not None and alert.run not in self.runs:
            return False
        if alert.kind == "threshold":
            return alert.key.split(":")[1] in self.thresholds  # the key names the threshold crossed
        return alert.kind in self.when

    def describe(self) -> str:
        to = f"POST to {self.webhook}" + (" (Slack)" if self.slack else "") if self.webhook else f"run {self.command}"
        which = ", ".join(self.when + self.thresholds)
        return f"{to}: {which}" + (f", for {', '.join(self.runs)}" if self.runs else ", for every run")


@dataclass
class Alert:
    key: str  # what happened, named once: run, what, generation, batch
    run: str
    kind: str
    batch: int
    text: str  # one line: what happened, in the page's words
    t: float


def alerts_of(
    row: RunRow, history: RunHistory | None, seen: dict[str, Any], limits: list[Threshold], now: float, baseline: bool
) -> list[Alert]:
    """What happened to a run since seen (the state its last look left, updated here): a state it came into, its
    target reached, a threshold crossed, a script's alert. The watcher's first look ever (baseline) only sets seen:
    what the runs were before anyone watched is no news; a run that appears later is news from its first look."""
    gen = history.gen if history is not None and history.gen is not None else 0
    found: list[Alert] = []

    def happened(kind: str, what: str, text: str) -> None:
        found.append(Alert(f"{row.name}:{what}:{gen}:{row.batch}", row.name, kind, row.batch, text, now))

    label, was = row.label, seen.get("label")
    if label not in STATES:
        # Training, idle, stopped: a state alerted later is a new trouble once the run has been well a while, or
        # in a new generation; a run that flickers between stalled and training under load is told once.
        well, well_since = seen.get("well"), seen.setdefault("well_since", now)
        if well is None or well[0] != gen or now - well_since >= WELL_FOR_S:
            seen["well"] = [gen, row.batch]
    else:
        seen.pop("well_since", None)
    if label in STATES and label != was and f"{label}:{seen.get('well')}" not in seen.setdefault("told", []):
        # once per trouble: a run going from loss rose to not learning and back, never well between, is told each once
        seen["told"] = [*seen["told"][-20:], f"{label}:{seen.get('well')}"]
        because = f": {row.error}" if row.error else ""
        happened(label, label, f"{row.name} is {label} at batch {row.batch:,}{because}")
    _spike(row, gen, seen, happened)
    target = history.target if history is not None else None
    if label == "idle" and target and row.batch >= target and seen.get("target") != [gen, target]:
        if was != "idle":  # reached while watched (an idle run's first look says nothing new)
            happened("target reached", f"target {target}", f"{row.name} reached its target, batch {target:,}")
        seen["target"] = [gen, target]
    sides = seen.setdefault("sides", {})
    for limit in limits:
        value, name = row.loss if limit.metric == "loss" else _latest(history, limit.metric), str(limit)
        if value is None or not math.isfinite(value):
            sides.setdefault(name, False)  # no value yet: its first one across the limit crosses it
            continue
        crossed = limit.crossed(value)
        # A value first seen across the limit, where none was seen before it (a run's, or a new threshold's first
        # look), is where the run was, not a crossing.
        if crossed and sides.get(name, True) is False:
            happened("threshold", name, f"{row.name}: {limit.metric} is {value:.4g} at batch {row.batch:,} ({name})")
        sides[name] = crossed
    # A script's alerts newer than the newest told: by time, as the history a look reads holds only a run's head and
    # tail, and a count of them would go wrong when its middle is skipped.
    told = seen.get("alert_t", 0.0)
    for index, event in enumerate(history.events if history is not None else []):
        if event.kind == EventKind.ALERT and (event.t or 0.0) > told:
            key = f"{row.name}:alert:{event.gen}:{event.batch}.{index}"
            found.append(Alert(key, row.name, "alert", event.batch, event.detail, now))
            seen["alert_t"] = max(seen.get("alert_t", 0.0), event.t or 0.0)
    seen["label"] = label
    return [] if baseline else found


def _spike(row: RunRow, gen: int, seen: dict[str, Any], happened: Callable[[str, str, str], None]) -> None:
    """A loss far above its smoothed line, told once a spike: again only once the loss is back under the line's
    SPIKE_FACTOR times. The line does not follow a spike up: it is what the loss was before. A new generation (a
    restart, a rewind, a reinit, an exploit) starts a new line: its loss is another net's."""
    if seen.get("line_gen") != gen:
        seen["line_gen"], seen["line"], seen["spiking"] = gen, None, False
    loss, line = row.loss, seen.get("line")
    if loss is None or not math.isfinite(loss) or loss <= 0:
        return
    if line is not None and loss >= SPIKE_FACTOR * line:
        if not seen.get("spiking"):
            seen["spiking"] = True
            text = f"{row.name}: the loss spiked to {loss:.4g} at batch {row.batch:,}, {loss / line:.0f} times its line"
            happened("spike", "spike", text)
        return
    seen["spiking"] = False
    seen["line"] = (
        loss if line is None else math.exp((1 - SPIKE_WEIGHT) * math.log(line) + SPIKE_WEIGHT * math.log(loss))
    )


def _latest(history: RunHistory | None, metric: str) -> float | None:
    track = history.metrics.get(metric) if history is not None else None
    return track.latest[1] if track is not None and track.latest else None
