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
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from nnobs.lab.pbt import SCORE_SHARE, decide
from nnobs.launching.daemon import daemon_pid, hold_lock, start_daemon, stop_daemon
from nnobs.launching.lifecycle import (
    active_job,
    launcher_settings,
    run_status,
    start_worker,
    stop_worker,
    worker_pid,
)
from nnobs.protocol.checkpoint import load_checkpoint_meta
from nnobs.protocol.control import checkpointed_commands, queue_commands, read_commands
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.files import open_file, replace_atomically
from nnobs.protocol.population import BY, Journal, exploits_of, folder_of, load_population
from nnobs.protocol.records import RecordReader, pair
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import RunWatcher

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


def log_size(folder: Path) -> int:
    """The controller's log's size now: where following it starts for a controller started again."""
    try:
        return os.lstat(folder / "controller.log").st_size
    except FileNotFoundError:
        return 0


def follow_log(folder: Path, say: Callable[[str], None], offset: int = 0) -> bool:
    """Say each line the controller writes to its log from offset until its controller is gone; whether the
    population was done by then (if not, that is said too)."""
    log = folder / "controller.log"
    while True:
        gone = daemon_pid(folder / "controller.lock") is None  # before the last read: nothing it wrote is missed
        try:
            with open_file(log) as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        complete = chunk[: chunk.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            say(line)
        if gone:
            if Journal(folder / "decisions.jsonl").done:
                return True
            say(f"the controller of {folder.name} is gone before the end; see {log}")
            return False
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


RESTART_WAIT_S = (1.0, 30.0)  # a member that crashed or failed to start waits this long, doubling, to start again
MOST_FAILURES = 10  # starts that fail in a row before a member leaves (waits of 1 to 30 s: minutes of an outage)


class Controller:
    def __init__(self, folder: Path):
        self.folder = folder
        self.population = load_population(folder)
        root = folder.parent.parent
        self.members = [RunDir.named(name, root) for name in self.population.members]
        self.journal = Journal(folder / "decisions.jsonl")
        self.scores = Scores(self.members, self.population.metric)
        self.watchers = {m.name: RunWatcher(m.run_file, outline_only=True) for m in self.members}
        self.failures: dict[str, int] = {}  # starts in a row that did not train
        self.start_after: dict[str, float] = {}  # monotonic time before which a failing member is not started
        self.slurm = launcher_settings(self.members[0]).kind == "slurm"

    def say(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    @property
    def present(self) -> list[RunDir]:
        """The members still in the population."""
        return [m for m in self.members if m.name not in self.journal.left]

    def run(self) -> None:
        population = self.population
        ends = population.round_ends()
        for index, end in enumerate(ends[:-1]):
            if index in self.journal.carried:
                continue
            if index not in self.journal.decided:
                self.bring_to(index, end)
                self.journal.append(self.decision(index, end))
            self.carry_out(index)
            self.journal.append({"carried": index, "t": round(time.time(), 3)})
        self.bring_to(len(ends) - 1, ends[-1])
        for member in self.present:
            if self.alive(member):
                self.stop(member)
        for member in self.members:
            forget_taken(member)
        if not self.journal.done:
            scores, checkpoints = self.standing(population.target)
            done = {"done": True, "scores": _written(scores), "etas": _etas(checkpoints), "t": round(time.time(), 3)}
            self.journal.append(done)
        self.say(f"{population.name}: every member trained to batch {population.target:,}")

    # -- a round ------------------------------------------------------------------------------

    def bring_to(self, index: int, end: int) -> None:
        """Train every member still in the population to batch end, at most `slots` at once. A member that cannot get
        there (its loss diverged: it waits for a new eta; a person lowered its target) is done with the round where
        it is, and scores nothing; one whose worker ends before it (a crash) is started again, waiting longer each
        time, and leaves after MOST_FAILURES."""
        self.say(f"round {index + 1}: training every member to batch {end:,}")
        raised = f"{self.population.name}-r{index}-target"
        for member in self.present:
            meta = load_checkpoint_meta(member.checkpoint) or {}
            if (meta.get("target") or 0) < end:
                try:
                    queue_commands(member, [("target", end)], by=BY, ids=[raised])
                except (NnobsError, OSError) as err:
                    self.leave(member, f"its control file takes no command: {err}")
        finished: set[str] = set()  # done with this round where they are: not started again for it
        started: set[str] = set()  # started for this round: a worker of theirs that ends early has failed
        while True:
            waiting, training = [], 0
            for member in self.present:
                history = self.watchers[member.name].refresh()
                status = run_status(member, history)
                alive = self.alive(member)
                if not alive and self.stopped_by_hand(member, status.state):
                    self.leave(member, "stopped by hand")
                    continue
                lowered = status.state == "idle" and raised in history.answers  # by hand, after this round's raise
                if self.batch_of(member) >= end or (alive and (status.diverged or lowered)):
                    finished.add(member.name)
                if member.name in finished:
                    self.failures.pop(member.name, None)
                    if alive and self.population.slots < len(self.present):
                        self.stop(member)  # its place goes to a member still training this round
                elif alive:
                    training += 1
                    if status.state == "training":
                        self.failures.pop(member.name, None)
                elif member.name in started:
                    started.discard(member.name)
                    self.failed(member, f"its worker ended at batch {status.batch:,}, {status.label}")
                else:
                    waiting.append(member)
            if not waiting and not training:
                for decided in sorted(self.journal.decided):
                    self.check_answers(decided)
                return
            now = time.monotonic()
            ready = [m for m in waiting if self.start_after.get(m.name, 0.0) <= now]
            for member in self.start(ready[: max(0, self.population.slots - training)]):
                started.add(member.name)
            time.sleep(LOOK_EVERY_S)

    def start(self, members: list[RunDir]) -> list[RunDir]:
        """Start the members' workers (on Slurm, one job array); those started."""
        if not members:
            return []
        if self.slurm:
            from nnobs.launching.slurm import SlurmLauncher  # submitit is imported only for populations on Slurm

            try:
                jobs = SlurmLauncher(launcher_settings(members[0])).submit(members, by=BY)
            except (NnobsError, OSError, subprocess.SubprocessError) as err:
                for member in members:
                    self.failed(member, str(err))
                return []
            self.say(f"submitted {', '.join(m.name for m in members)} as job array {jobs[0].job_id.split('_')[0]}")
            return members
        started = []
        for member in members:
            try:
                self.say(f"{member.name}: worker {start_worker(member, by=BY)} started")
                started.append(member)
            except (NnobsError, OSError, subprocess.SubprocessError, ValueError) as err:
                self.failed(member, str(err))
        return started

    def stop(self, member: RunDir) -> None:
        try:
            stop_worker(member, by=BY)
        except (NnobsError, OSError, subprocess.SubprocessError) as err:
            self.say(f"{member.name}: its worker could not be stopped: {err}")

    def failed(self, member: RunDir, why: str) -> None:
        """A start that failed: tried again later, and after MOST_FAILURES in a row the member leaves."""
        count = self.failures[member.name] = self.failures.get(member.name, 0) + 1
        if count >= MOST_FAILURES:
            self.leave(member, f"it failed to start {count} times: {why}")
            return
        first, most = RESTART_WAIT_S
        wait = min(most, first * 2 ** (count - 1))
        self.start_after[member.name] = time.monotonic() + wait
        self.say(f"{member.name}: {why}; starting it again in {wait:g} s")

    def leave(self, member: RunDir, why: str) -> None:
        self.journal.append({"left": member.name, "why": why, "t": round(time.time(), 3)})
        self.say(f"{member.name} leaves the population: {why}")

    def alive(self, member: RunDir) -> bool:
        """A worker lives (or, on Slurm, a job waits or runs) for the member."""
        return worker_pid(member) is not None or (self.slurm and active_job(member) is not None)

    def batch_of(self, member: RunDir) -> int:
        meta = load_checkpoint_meta(member.checkpoint) or {}
        batch = meta.get("batch")
        return batch if isinstance(batch, int) else 0

    def stopped_by_hand(self, member: RunDir, state: str) -> bool:
        """The member's newest worker ended on a shutdown someone other than this controller asked for (a restart's,
        whose start follows, is not one); a member that crashed, or whose script ended at its target, goes on."""
        if state != "stopped":
            return False
        try:
            shutdowns = [c for c in read_commands(member.control_file) if c.get("cmd") == "shutdown"]
        except NnobsError:
            return False
        if not shutdowns:
            return False
        by = str(shutdowns[-1].get("by", ""))
        history = self.watchers[member.name].refresh()
        answer = history.answers.get(str(shutdowns[-1].get("id")))
        starts = [e.t or 0.0 for e in history.events if e.kind == EventKind.STARTED]
        ended_it = answer is not None and (answer.t or 0.0) >= max(starts, default=0.0)  # the newest worker's
        return ended_it and not by.startswith(BY) and not by.endswith("restart")

    def decision(self, index: int, end: int) -> dict:
        """The round's decision: every member's score and checkpoint, and who takes whose."""
        scores, checkpoints = self.standing(end)
        exploits = decide(self.population, index, scores, checkpoints)
        unscored = [name for name, score in scores.items() if score is None or not math.isfinite(score)]
        if unscored:
            self.say(f"round {index + 1}: no {self.population.metric} at batch {end:,} for {', '.join(unscored)}")
        for exploit in exploits:
            self.say(
                f"round {index + 1}: {exploit.member} takes {exploit.donor}'s checkpoint at batch {exploit.batch:,}, "
                f"eta {exploit.eta_before:g} -> {exploit.eta:g} ({exploit.how})"
            )
        return {
            "round": index,
            "batch": end,
            "scores": _written(scores),
            "etas": _etas(checkpoints),
            "exploits": [exploit.as_dict() for exploit in exploits],
            "t": round(time.time(), 3),
        }

    def standing(self, end: int) -> tuple[dict[str, float | None], dict[str, tuple[int, float]]]:
        """Every member's score at a round's end (none for one that did not get there), and its checkpoint's batch
        and eta."""
        scores, checkpoints = {}, {}
        for member in self.present:
            meta = load_checkpoint_meta(member.checkpoint) or {}
            batch = self.batch_of(member)
            checkpoints[member.name] = (batch, float(meta.get("eta") or math.nan))
            reached = batch >= end
            scores[member.name] = self.scores.at(member.name, end, self.population.interval) if reached else None
        return scores, checkpoints

    def carry_out(self, index: int) -> None:
        """Link each donor's checkpoint into its member's exploits folder, then send the member its exploit."""
        root = self.members[0].path.parent
        for member in self.members:
            forget_taken(member)
        for exploit in exploits_of(self.journal.decided[index]):
            if (index, exploit.member) in self.journal.rejected:
                continue  # said not sent by a controller before this one
            member, donor = RunDir.named(exploit.member, root), RunDir.named(exploit.donor, root)
            try:
                if exploit.member in self.journal.left or exploit.donor in self.journal.left:
                    raise NnobsError("it left the population after the decision")
                take_checkpoint(donor, member.exploit_file(exploit.donor, exploit.batch))
                value = {"from": exploit.donor, "batch": exploit.batch, "eta": exploit.eta}
                ids = [f"{self.population.name}-r{index}-{member.name}"]
                queue_commands(member, [("exploit", value)], by=BY, ids=ids)
            except (NnobsError, OSError) as err:
                self.refused(index, exploit.member, f"not sent: {err}")

    def check_answers(self, index: int) -> None:
        """Journal the exploits of round index that their workers refused: the family tree draws none of them."""
        if index not in self.journal.decided:
            return
        for exploit in exploits_of(self.journal.decided[index]):
            if (index, exploit.member) in self.journal.rejected:
                continue
            answer = (
                self.watchers[exploit.member].refresh().answers.get(f"{self.population.name}-r{index}-{exploit.member}")
            )
            if answer is not None and not answer.ok:
                self.refused(index, exploit.member, answer.reason)

    def refused(self, index: int, member: str, why: str) -> None:
        """An exploit that did not happen (refused by its worker, or never sent), journaled: none is drawn."""
        self.journal.append({"rejected": {"round": index, "member": member, "why": why}, "t": round(time.time(), 3)})
        self.say(f"round {index + 1}: {member}'s exploit did not happen: {why}")


def take_checkpoint(donor: RunDir, into: Path) -> None:
    """The donor's checkpoint as it is now, into the member's exploits folder: a hard link (no room taken; the donor's
    next checkpoint replaces its own name, not this one), else a copy made whole before it is named. A link in place
    of the folder, the donor's checkpoint or the file itself is never followed."""
    if os.path.lexists(into):
        return
    into.parent.mkdir(exist_ok=True)
    if not stat.S_ISDIR(os.lstat(into.parent).st_mode):
        raise OSError(f"{into.parent} is not a directory")
    try:
        os.link(donor.checkpoint, into, follow_symlinks=False)  # a link is linked as a link: the worker refuses it
    except FileExistsError:
        return
    except OSError:  # another filesystem, or one without hard links: a copy
        with open_file(donor.checkpoint) as source:
            replace_atomically(into, lambda f: shutil.copyfileobj(source, f, 1 << 20))


def forget_taken(member: RunDir) -> None:
    """Drop the member's exploit files its checkpoint says it has applied: never needed again, and each a whole
    checkpoint."""
    for command in checkpointed_commands(member):
        value = command.get("value")
        if command.get("cmd") == "exploit" and isinstance(value, dict):
            try:
                os.unlink(member.exploit_file(value["from"], value["batch"]))
            except (OSError, KeyError, TypeError, NnobsError):
                pass


def _etas(checkpoints: dict[str, tuple[int, float]]) -> dict[str, float | None]:
    """Each member's eta, as its checkpoint has it, as JSON holds it."""
    return _written({name: eta for name, (_, eta) in checkpoints.items()})


def _written(scores: Mapping[str, float | None]) -> dict[str, float | None]:
    """Scores or etas as JSON holds them: a NaN or an infinity (a diverged member, no checkpoint) as null."""
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
