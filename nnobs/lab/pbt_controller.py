"""A population's controller: a detached process (alive while it holds controller.lock, as a worker holds
worker.lock) that trains the members round by round and makes and carries out population-based training's
decisions (nnobs.lab.pbt).

Each round it raises every member's target to the round's end and keeps at most `parallel` of them training
(a member done with the round is stopped to free its place when there are fewer places than members), waits for
each member's checkpoint at the round's end, scores them, writes the decision to decisions.jsonl (fsynced), and then
carries it out: the donor's checkpoint is linked into the member's exploits folder and an exploit command, with an id
made of the population, round and member, goes to the member. A controller killed at any moment and started again
reads the journal and goes on: a decision is never made twice (and would be the same), a command never sent twice.
A member a person stopped leaves the population; one a person steers keeps what it was given until its next exploit.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from nnobs.lab.pbt import SCORE_SHARE, decide
from nnobs.launching.daemon import daemon_pid, hold_lock, start_daemon, stop_daemon
from nnobs.launching.lifecycle import active_job, launcher_settings, start_worker, stop_worker, worker_pid
from nnobs.protocol.checkpoint import load_checkpoint_meta
from nnobs.protocol.control import queue_commands, read_commands
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.files import open_file
from nnobs.protocol.population import Journal, exploits_of, folder_of, load_population
from nnobs.protocol.records import RecordReader, pair
from nnobs.protocol.rundir import RunDir

BY = "pbt"  # who the controller's commands and starts say they are from
LOOK_EVERY_S = 0.25


def start_controller(root: str | os.PathLike | None, name: str) -> int:
    """Start the population's controller detached unless one lives; its pid."""
    folder = folder_of(root, name)
    lock, log = folder / "controller.lock", folder / "controller.log"
    return start_daemon("nnobs.lab.pbt_controller", [str(folder)], lock, log, "population's controller")


def controller_pid(root: str | os.PathLike | None, name: str) -> int | None:
    return daemon_pid(folder_of(root, name) / "controller.lock")


def stop_controller(root: str | os.PathLike | None, name: str) -> bool:
    return stop_daemon(folder_of(root, name) / "controller.lock")


def follow_log(folder: Path, say: Callable[[str], None]) -> None:
    """Say each line the controller writes to its log until the population is done, or its controller gone."""
    log = folder / "controller.log"
    offset = 0
    while True:
        gone = daemon_pid(folder / "controller.lock") is None  # before the last read: nothing it wrote is missed
        try:
            with open_file(log) as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            text = ""
        complete = text[: text.rfind("\n") + 1]
        offset += len(complete.encode())
        for line in complete.splitlines():
            say(line)
        if gone:
            if not Journal(folder / "decisions.jsonl").done:
                say(f"the controller of {folder.name} is gone before the end; see {log}")
            return
        time.sleep(LOOK_EVERY_S)


class Scores:
    """Each member's metric by batch, read from its run file as it grows."""

    def __init__(self, runs: list[RunDir], metric: str):
        self.metric = metric
        self.readers = {run.name: RecordReader(run.run_file) for run in runs}
        # batch -> (value, batches it is the mean of): the latest report of a batch wins (a resumed worker's)
        self.values: dict[str, dict[int, tuple[float, int]]] = {run.name: {} for run in runs}

    def read(self, member: str) -> None:
        values = self.values[member]
        for record in self.readers[member].read_new():
            if self.metric == "loss":
                loss, window = pair(record.get("loss")), pair(record.get("window"))
                if loss is not None and _is_number(loss[1]):
                    n, mean = (window[1][0], window[1][5]) if window and _window_ok(window[1]) else (1, loss[1])
                    values[loss[0]] = (float(mean), int(n))
            elif (metrics := pair(record.get("metrics"))) is not None and isinstance(metrics[1], dict):
                entry = metrics[1].get(self.metric)
                if isinstance(entry, list) and entry and _is_number(entry[0]):
                    values[metrics[0]] = (float(entry[0]), 1)

    def at(self, member: str, end: int, interval: int) -> float | None:
        """The member's score at a round's end: the metric logged at end (a test loss is measured at each target,
        on the whole held-out set); the training loss's mean over the round's last quarter of batches. None: none."""
        self.read(member)
        values = self.values[member]
        if self.metric != "loss":
            logged = [batch for batch in values if batch <= end]
            return values[max(logged)][0] if logged else None
        since = end - max(1, int(interval * SCORE_SHARE))
        window = [values[batch] for batch in values if since < batch <= end]
        total = sum(n for _, n in window)
        return sum(value * n for value, n in window) / total if total else None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _window_ok(window: object) -> bool:
    return isinstance(window, list) and len(window) == 6 and all(map(_is_number, window))


class Controller:
    def __init__(self, folder: Path):
        self.folder = folder
        self.population = load_population(folder)
        root = folder.parent.parent
        self.members = [RunDir.named(name, root) for name in self.population.members]
        self.journal = Journal(folder / "decisions.jsonl")
        self.scores = Scores(self.members, self.population.metric)
        self.left: set[str] = set()  # members a person stopped: out of the population
        self.slurm = launcher_settings(self.members[0]).kind == "slurm"

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def run(self) -> None:
        population = self.population
        ends = population.round_ends()
        for index, end in enumerate(ends):
            if index in self.journal.carried:
                continue
            if index not in self.journal.decided:
                self.bring_to(index, end)
                if index == len(ends) - 1:
                    break
                self.journal.append(self.decision(index, end))
            self.carry_out(index)
            self.journal.append({"carried": index, "t": round(time.time(), 3)})
        else:
            self.bring_to(len(ends) - 1, ends[-1])  # started again after the last exploit: the last round
        for member in self.members:
            if self.alive(member):
                stop_worker(member, by=BY)
        if not self.journal.done:
            scores, checkpoints = self.standing(population.target)
            etas = {name: eta for name, (_, eta) in checkpoints.items()}
            self.journal.append({"done": True, "scores": _written(scores), "etas": etas, "t": round(time.time(), 3)})
        self.say(f"{population.name}: every member trained to batch {population.target:,}")

    # -- a round ------------------------------------------------------------------------------

    def bring_to(self, index: int, end: int) -> None:
        """Train every member still in the population to batch end, at most `slots` at once."""
        self.say(f"round {index + 1}: training every member to batch {end:,}")
        for member in self.members:
            meta = load_checkpoint_meta(member.checkpoint) or {}
            if (meta.get("target") or 0) < end:
                queue_commands(member, [("target", end)], by=BY, ids=[f"{self.population.name}-r{index}-target"])
        while True:
            waiting, training = [], 0
            for member in self.members:
                if member.name in self.left:
                    continue
                reached, alive = self.batch_of(member) >= end, self.alive(member)
                if reached:
                    if alive and self.population.slots < len(self.members):
                        stop_worker(member, by=BY)  # its place goes to a member still training this round
                elif alive:
                    training += 1
                elif self.stopped_by_hand(member):
                    self.left.add(member.name)
                    self.say(f"{member.name} was stopped by hand: it leaves the population")
                else:
                    waiting.append(member)
            if not waiting and not training:
                return
            self.start(waiting[: max(0, self.population.slots - training)])
            time.sleep(LOOK_EVERY_S)

    def start(self, members: list[RunDir]) -> None:
        if not members:
            return
        if self.slurm:
            from nnobs.launching.slurm import SlurmLauncher  # submitit is imported only for populations on Slurm

            jobs = SlurmLauncher(launcher_settings(members[0])).submit(members, by=BY)
            self.say(f"submitted {', '.join(m.name for m in members)} as job array {jobs[0].job_id.split('_')[0]}")
            return
        for member in members:
            self.say(f"{member.name}: worker {start_worker(member, by=BY)} started")

    def alive(self, member: RunDir) -> bool:
        """A worker lives (or, on Slurm, a job waits or runs) for the member."""
        return worker_pid(member) is not None or (self.slurm and active_job(member) is not None)

    def batch_of(self, member: RunDir) -> int:
        meta = load_checkpoint_meta(member.checkpoint) or {}
        batch = meta.get("batch")
        return batch if isinstance(batch, int) else 0

    def stopped_by_hand(self, member: RunDir) -> bool:
        """The member's last shutdown was asked for by someone other than this controller."""
        try:
            shutdowns = [c for c in read_commands(member.control_file) if c.get("cmd") == "shutdown"]
        except NnobsError:
            return False
        return bool(shutdowns) and not str(shutdowns[-1].get("by", "")).startswith(BY)

    def decision(self, index: int, end: int) -> dict:
        """The round's decision: every member's score and checkpoint, and who takes whose."""
        scores, checkpoints = self.standing(end)
        etas = {name: eta for name, (_, eta) in checkpoints.items()}
        exploits = decide(self.population, index, scores, checkpoints, etas)
        for exploit in exploits:
            self.say(
                f"round {index + 1}: {exploit.member} takes {exploit.donor}'s checkpoint at batch {exploit.batch:,}, "
                f"eta {exploit.eta_before:g} -> {exploit.eta:g} ({exploit.how})"
            )
        return {
            "round": index,
            "batch": end,
            "scores": _written(scores),
            "etas": etas,
            "exploits": [exploit.as_dict() for exploit in exploits],
            "t": round(time.time(), 3),
        }

    def standing(self, end: int) -> tuple[dict[str, float | None], dict[str, tuple[int, float]]]:
        """Every member's score at a round's end, and its checkpoint's batch and eta."""
        present = [m for m in self.members if m.name not in self.left]
        scores = {m.name: self.scores.at(m.name, end, self.population.interval) for m in present}
        checkpoints = {}
        for member in present:
            meta = load_checkpoint_meta(member.checkpoint) or {}
            checkpoints[member.name] = (int(meta.get("batch") or 0), float(meta.get("eta") or math.nan))
        return scores, checkpoints

    def carry_out(self, index: int) -> None:
        """Link each donor's checkpoint into its member's exploits folder, then send the member its exploit."""
        root = self.members[0].path.parent
        for exploit in exploits_of(self.journal.decided[index]):
            member, donor = RunDir.named(exploit.member, root), RunDir.named(exploit.donor, root)
            into = member.exploit_file(exploit.donor, exploit.batch)
            if not into.exists():
                into.parent.mkdir(exist_ok=True)
                try:
                    os.link(donor.checkpoint, into)  # the file as it is now: the donor's next checkpoint replaces it
                except OSError:
                    shutil.copyfile(donor.checkpoint, into)
            value = {"from": exploit.donor, "batch": exploit.batch, "eta": exploit.eta}
            queue_commands(member, [("exploit", value)], by=BY, ids=[f"{self.population.name}-r{index}-{member.name}"])


def _written(scores: dict[str, float | None]) -> dict[str, float | None]:
    """Scores as JSON holds them: a NaN or an infinity (a diverged member) as null."""
    return {name: (None if s is None or not math.isfinite(s) else s) for name, s in scores.items()}


def main() -> None:
    folder = Path(sys.argv[1])
    hold_lock(folder / "controller.lock", "a controller lives already for this population")
    controller = Controller(folder)
    controller.say(f"nnobs population controller {os.getpid()} for {folder.name}")
    try:
        controller.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
