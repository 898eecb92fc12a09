"""A population's files (population-based training): population.json, what `nnobs sweep --pbt` asked for, and
decisions.jsonl, the controller's journal of each round's decision, in the runs root's .populations folder."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnobs.protocol.commands import MAX_ETA, MAX_TARGET
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import create_once, open_file
from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int, is_number
from nnobs.protocol.rundir import RunDir, check_run_name, runs_root

BY = "pbt"  # who a population's controller says its commands and starts are from
FOLDER = ".populations"  # in the runs root: one folder a population, beside its members' runs
PERTURBATION_FACTORS = (1.2, 0.8)
MAX_MEMBERS = 256


def folder_of(root: str | os.PathLike | None, name: str) -> Path:
    return runs_root(root) / FOLDER / check_run_name(name)


@dataclass
class Population:
    """What `nnobs sweep --pbt` asked for; kept as population.json in the population's folder."""

    name: str
    members: list[str]
    etas: list[float]  # each member's eta at the start
    eta_range: tuple[float, float]
    interval: int  # batches between two looks at the population
    target: int  # batches each member trains in all
    quantile: float = 0.25
    resample: float = 0.25
    metric: str = "test_loss"  # lower is better; "loss" is the training loss
    seed: int = 1
    parallel: int | None = None  # members training at once; None: all
    factors: tuple[float, ...] = PERTURBATION_FACTORS
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        """Every field checked: what `nnobs sweep --pbt` asked, or a population.json written by hand."""
        if not isinstance(self.members, list) or not all(isinstance(m, str) for m in self.members):
            raise NnobsError(f"members must be a list of run names, not {self.members!r}")
        for member in self.members:
            check_run_name(member)
        if not _numbers(self.etas) or len(self.etas) != len(self.members):
            raise NnobsError(f"etas must be a number for each member, not {self.etas!r}")
        if not _numbers(self.eta_range) or len(self.eta_range) != 2:
            raise NnobsError(f"eta_range must be [LO, HI], not {self.eta_range!r}")
        if not _numbers(self.factors) or not self.factors:
            raise NnobsError(f"factors must be numbers to perturb an eta by, not {self.factors!r}")
        for name in ("interval", "target", "seed"):
            if not is_int(getattr(self, name)):
                raise NnobsError(f"{name} must be a whole number, not {getattr(self, name)!r}")
        if not _numbers([self.quantile, self.resample]) or not isinstance(self.metric, str):
            raise NnobsError("quantile and resample must be numbers, metric a name")
        if self.parallel is not None and not is_int(self.parallel):
            raise NnobsError(f"parallel must be a whole number, not {self.parallel!r}")
        self.eta_range = (float(self.eta_range[0]), float(self.eta_range[1]))
        self.factors = tuple(float(f) for f in self.factors)
        if (
            not 0 < self.eta_range[0] < self.eta_range[1] <= MAX_ETA
            or min(self.factors) <= 0
            or min(self.etas, default=1) <= 0
        ):
            raise NnobsError(f"etas must be above 0 and at most {MAX_ETA:g}, LO below HI, factors above 0")
        if len(set(self.members)) != len(self.members):
            raise NnobsError("a population's members have names of their own: one is given twice")
        if not 2 <= len(self.members) <= MAX_MEMBERS:
            raise NnobsError(f"a population has 2 to {MAX_MEMBERS} members, not {len(self.members)}")
        if not 1 <= self.interval < self.target <= MAX_TARGET:
            raise NnobsError(
                f"--interval {self.interval:,} refused: a whole number of batches from 1 to below the target "
                f"({self.target:,}), so that there is a round to exploit after"
            )
        if not 0 < self.quantile <= 0.5:
            raise NnobsError(f"--quantile {self.quantile:g} refused: a share of the population above 0, at most 0.5")
        if not 0 <= self.resample <= 1:
            raise NnobsError(f"--resample {self.resample:g} refused: a probability from 0 to 1")
        if self.parallel is not None and self.parallel < 1:
            raise NnobsError("--parallel must be at least 1")

    @property
    def slots(self) -> int:
        return min(self.parallel or len(self.members), len(self.members))

    def round_ends(self) -> list[int]:
        """The batch each round ends at: every interval, and the target."""
        ends = list(range(self.interval, self.target, self.interval))
        return [*ends, self.target]

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def _numbers(values: Any) -> bool:
    return isinstance(values, (list, tuple)) and all(is_number(v) and math.isfinite(v) for v in values)


def population_names(root: str | os.PathLike | None = None) -> list[str]:
    """The populations of the runs root, by name."""
    try:
        return sorted(
            entry.name for entry in os.scandir(runs_root(root) / FOLDER) if entry.is_dir(follow_symlinks=False)
        )
    except OSError:
        return []


def population_of(run: RunDir) -> Population | None:
    """The population the run is a member of (NAME-m3 of NAME), or None."""
    name, dash_m, index = run.name.rpartition("-m")
    if not dash_m or not index.isdigit():
        return None
    try:
        population = load_population(run.path.parent / FOLDER / check_run_name(name))
    except NnobsError:
        return None
    return population if run.name in population.members else None


def save_population(folder: Path, population: Population) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    create_once(folder / "population.json", population.as_json().encode())


def load_population(folder: Path) -> Population:
    try:
        with open_file(folder / "population.json") as f:
            return Population(**parse_json(f.read().decode()))
    except FileNotFoundError:
        raise NnobsError(f"there is no population named {folder.name} in {folder.parent.parent}") from None
    except (OSError, ValueError, TypeError, NnobsError) as err:
        raise NnobsError(f"{folder / 'population.json'} is unreadable: {err}") from err


@dataclass(frozen=True)
class Exploit:
    """One member taking another's checkpoint: from which run and batch, its eta before and after, and how."""

    member: str
    donor: str
    batch: int  # the donor's checkpoint's
    eta_before: float  # the member's own, as it was
    eta: float  # the new one
    how: str  # "x1.2", "x0.8" or "resampled"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Journal:
    """decisions.jsonl: each round's decision, written (and fsynced) before it is carried out, then a line once it
    was. A controller started again reads it and goes on: decided rounds are not decided again, carried ones not
    carried again."""

    def __init__(self, path: Path):
        self.path = path
        self.decided: dict[int, dict[str, Any]] = {}
        self.carried: set[int] = set()
        self.done = False
        self.final: dict[str, Any] | None = None  # the last round's scores and etas, once done
        self.left: dict[str, str] = {}  # members out of the population (stopped by hand, failing to start), why
        self.rejected: dict[tuple[int, str], str] = {}  # (round, member) -> why its worker refused the exploit
        try:
            with open_file(path) as f:
                lines = f.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash as it was written: the round is decided again, the same way
            self._take(entry)

    def _take(self, entry: Any) -> None:
        if not isinstance(entry, dict):
            return  # a line that is no entry (written by hand): nothing to go on from
        if isinstance(entry.get("left"), str):
            self.left[entry["left"]] = str(entry.get("why", ""))
        elif isinstance(entry.get("rejected"), dict):
            rejected = entry["rejected"]
            self.rejected[(rejected.get("round"), rejected.get("member"))] = str(rejected.get("why", ""))
        elif is_int(entry.get("carried")):
            self.carried.add(entry["carried"])
        elif entry.get("done"):
            self.done, self.final = True, entry
        elif isinstance(entry.get("round"), int):
            self.decided[entry["round"]] = entry

    def exploits(self, index: int) -> list[dict[str, Any]]:
        """The exploits of round index that were carried out: those a worker refused left out."""
        entry = self.decided.get(index, {})
        return [e for e in entry.get("exploits", []) if (index, e.get("member")) not in self.rejected]

    def append(self, entry: dict[str, Any]) -> None:
        with open_file(self.path, "ab") as f:
            torn = (
                os.fstat(f.fileno()).st_size > 0 and _last_byte(self.path) != b"\n"
            )  # a line a crash cut short: ended, not joined
            f.write((("\n" if torn else "") + json.dumps(entry) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self._take(entry)


def _last_byte(path: Path) -> bytes:
    with open_file(path) as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def exploits_of(entry: dict[str, Any]) -> list[Exploit]:
    return [Exploit(**exploit) for exploit in entry.get("exploits", [])]
