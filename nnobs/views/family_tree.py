"""A population as one picture (population-based training): every member's line with its exploits as jumps, and the
lineage of the best member, with the eta it trained with over the batches: the schedule the population found.

Made from the population's journal (each round's scores, etas and exploits: nnobs.protocol.population) and the
members' curves; pure, so that what the compare page draws can be checked without a browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from nnobs.protocol.population import Journal, Population
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.compare import Curves


@dataclass(frozen=True)
class Segment:
    """Batches start to end of the best lineage, trained by member with eta (set at start)."""

    start: int
    end: int
    member: str
    eta: float


@dataclass
class FamilyTree:
    best: str | None  # the member with the lowest score at the newest round's end (the target, once done)
    lineage: list[Segment]  # oldest first
    rounds: int  # decided so far
    done: bool


def family_tree(population: Population, journal: Journal, latest: int) -> FamilyTree:
    """The best member and its lineage back to the start, from the journal; latest: the newest batch trained."""
    decided = [journal.decided[index] for index in sorted(journal.decided)]
    standing = journal.final if journal.final is not None else (decided[-1] if decided else None)
    scores = standing.get("scores", {}) if standing else {}
    ranked = sorted((s, population.members.index(m), m) for m, s in scores.items() if _finite(s))
    best = ranked[0][2] if ranked else None
    lineage: list[Segment] = []
    if best is not None:
        current, end = best, max(latest, decided[-1]["batch"] if decided else 0)
        for entry in reversed(decided):
            exploit = next((e for e in journal.exploits(entry["round"]) if e.get("member") == current), None)
            eta = exploit["eta"] if exploit else entry["etas"].get(current, math.nan)
            lineage.append(Segment(entry["batch"], end, current, eta))
            current, end = (exploit["donor"] if exploit else current), entry["batch"]
        first_eta = population.etas[population.members.index(current)] if current in population.members else math.nan
        lineage.append(Segment(0, end, current, first_eta))
        lineage.reverse()
    return FamilyTree(best, lineage, len(decided), journal.done)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def member_lines(curves: dict[str, Curves], series: str) -> pd.DataFrame:
    """Every member's series ("test" or "loss") as it was reported: run, batch, value."""
    parts = [
        pd.DataFrame({"run": name, "batch": frame["batch"].astype("int64"), "value": frame["mean"].astype(float)})
        for name, c in curves.items()
        if len(frame := getattr(c, series))
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"run": [], "batch": [], "value": []})


def jumps(journal: Journal) -> pd.DataFrame:
    """One row an exploit: the member's score before it and its donor's, at the batch it happened, and what it was."""
    rows = []
    for index in sorted(journal.decided):
        entry = journal.decided[index]
        for exploit in journal.exploits(index):
            before, after = entry["scores"].get(exploit["member"]), entry["scores"].get(exploit["donor"])
            rows.append(
                {
                    "run": exploit["member"],
                    "batch": entry["batch"],
                    "before": before if _finite(before) else None,
                    "after": after if _finite(after) else None,
                    "what": f"{exploit['member']} took {exploit['donor']}'s checkpoint at batch {exploit['batch']:,}; "
                    f"eta {exploit['eta_before']:.3g} → {exploit['eta']:.3g} ({_how(exploit['how'])})",
                }
            )
    return pd.DataFrame(rows, columns=["run", "batch", "before", "after", "what"])


def _how(how: str) -> str:
    return "drawn afresh" if how == "resampled" else f"the donor's {how.replace('x', '× ')}"


def lineage_line(tree: FamilyTree, lines: pd.DataFrame) -> pd.DataFrame:
    """The best lineage's path through the members' lines: each segment's points of the member that trained it."""
    parts = []
    for segment in tree.lineage:
        own = lines[
            (lines["run"] == segment.member) & (lines["batch"] > segment.start) & (lines["batch"] <= segment.end)
        ]
        parts.append(own.assign(member=segment.member))
    if not parts:
        return pd.DataFrame({"run": [], "batch": [], "value": [], "member": []})
    return pd.concat(parts, ignore_index=True)


def schedule_frame(tree: FamilyTree) -> pd.DataFrame:
    """The best lineage's eta over batches, a step at each segment's start, the last held to its end."""
    rows = [{"batch": s.start, "eta": s.eta, "member": s.member} for s in tree.lineage]
    if tree.lineage:
        last = tree.lineage[-1]
        rows.append({"batch": last.end, "eta": last.eta, "member": last.member})
    return pd.DataFrame(rows, columns=["batch", "eta", "member"])


def schedule_text(tree: FamilyTree) -> str:
    """The schedule as `nnobs new --eta-schedule` takes it: "0:0.34,1000:0.41,3000:0.33"; steps that do not change
    the eta are left out."""
    steps: list[str] = []
    last: float | None = None
    for segment in tree.lineage:
        if segment.eta != last and _finite(segment.eta):
            steps.append(f"{segment.start}:{segment.eta:.6g}")
            last = segment.eta
    return ",".join(steps)


REPLAYED = ("task", "net", "seed", "target", "batch_size", "noise", "train_share")  # what a member's config gives


def replay_command(name: str, config: RunConfig, tree: FamilyTree) -> str:
    """`nnobs new` of an ordinary run that trains as the member did, with the best lineage's eta schedule and the
    population's target."""
    plain = RunConfig(task=config.task)  # the task's own net and batch size are left unsaid
    flags = [
        f"--{field.replace('_', '-')} {getattr(config, field)}"
        for field in REPLAYED
        if field == "task" or getattr(config, field) != getattr(plain, field)
    ]
    return " ".join(["nnobs new", name, *flags, "--eta-schedule", schedule_text(tree)])
