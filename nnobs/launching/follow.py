"""A training that logs elsewhere (TensorBoard, CSV), shown as a run: imported once, or followed as it writes.

`nnobs import NAME --tensorboard LOGDIR` writes the log's scalars as a read-only run. `nnobs follow NAME --tensorboard
LOGDIR` records a follower as the run's command (launch.json), so that Start, Restart, Stop and liveness treat it as
any run's worker: a detached process (python -m nnobs.launching.follow) that holds worker.lock, reads the whole log,
writes what the run file does not hold yet (the steps past its last: a restart repeats none), then adds what the log
gains every POLL_S. It trains nothing: a followed run cannot be
steered, and says so to every command but a shutdown.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from nnobs.launching.lifecycle import start_worker
from nnobs.protocol.control import ControlWatcher, answer_of
from nnobs.protocol.errors import ControlFileError, NnobsError
from nnobs.protocol.events import EventKind
from nnobs.protocol.files import replace_atomically
from nnobs.protocol.records import RecordWriter, encode_record, pair, read_all
from nnobs.protocol.rundir import RunDir, script_description
from nnobs.protocol.slot import tell_log
from nnobs.reading.scalar_logs import CsvLog, Scalar, TensorBoardLog, loss_tag, metric_name, records_of
from nnobs.training.ownership import claim

POLL_S = 0.5  # how often the log is read: scalars are on the page within this and the page's refresh of being flushed
HEARTBEAT_S = 1.0  # a record at least this often, as a worker writes, so that a live follower never reads stalled
FORMATS: dict[str, type[TensorBoardLog] | type[CsvLog]] = {"tensorboard": TensorBoardLog, "csv": CsvLog}
CANNOT_STEER = "a followed run cannot be steered: it shows a training that logs elsewhere, as it writes"


def log_of(kind: str, where: Path) -> TensorBoardLog | CsvLog:
    """The log to read: a TensorBoard log directory or a CSV file."""
    if kind not in FORMATS:
        raise NnobsError(f"no reader for {kind!r} logs: {', '.join(FORMATS)}")
    return FORMATS[kind](Path(where))


def _chosen_loss(scalars: list[Scalar], asked: str | None, where: str) -> str | None:
    tags = list(dict.fromkeys(s.tag for s in scalars))
    chosen = loss_tag(tags, asked)
    if asked is not None and chosen is None:
        raise NnobsError(f"no scalar tagged {asked!r} in {where}: its tags are {', '.join(tags)}")
    return chosen


def import_log(run: RunDir, kind: str, where: Path, loss: str | None = None) -> tuple[int, str | None]:
    """Make a read-only run of a log's scalars: how many records it holds, and the tag taken as the loss."""
    if run.exists():
        raise NnobsError(f"{run.name} exists already in {run.path.parent}: import under another name")
    log = log_of(kind, where)
    scalars = log.new_scalars()
    if not scalars:
        raise NnobsError(
            f"{where} holds no scalars to import" + ("" if Path(where).exists() else ": it does not exist")
        )
    chosen = _chosen_loss(scalars, loss, str(where))
    lines = [
        encode_record({**record, "t": round(t, 3) if not math.isnan(t) else None})
        for record, t in records_of(scalars, chosen)
    ]
    run.path.mkdir(parents=True, exist_ok=True)
    description = {"kind": "imported", "from": log.where(), "format": kind, "loss": chosen}
    replace_atomically(run.description, lambda f: f.write(json.dumps(description, indent=1).encode()))
    replace_atomically(run.run_file, lambda f: f.write(b"".join(lines)))
    return len(lines), chosen


def follow_log(run: RunDir, kind: str, where: Path, loss: str | None = None, by: str = "cli") -> int:
    """Follow a log as a run: record the follower as the run's command and start it; its pid."""
    if run.exists() and (script_description(run) or {}).get("kind") != "followed":
        raise NnobsError(f"{run.name} exists already in {run.path.parent} and follows no log: give another name")
    log = log_of(kind, where)
    if scalars := log.new_scalars():  # a log that cannot be read is said here, not in worker.log
        _chosen_loss(scalars, loss, str(where))  # and a --loss that names no tag of it, before anything is made
    run.path.mkdir(parents=True, exist_ok=True)
    description = {"kind": "followed", "from": log.where(), "format": kind, "loss": loss}
    replace_atomically(run.description, lambda f: f.write(json.dumps(description, indent=1).encode()))
    launch = {"command": [sys.executable, "-P", "-m", "nnobs.launching.follow"], "cwd": os.path.abspath(run.path)}
    replace_atomically(run.launch, lambda f: f.write(json.dumps(launch, indent=1).encode()))
    started = start_worker(run, by)
    if not isinstance(started, int):  # launch.json names no Slurm launcher: a follower runs where the monitor runs
        raise NnobsError(f"{run.name} was started as a Slurm job: a follower runs on this machine")
    return started


class Follower:
    """The process that follows a run's log: the run file written anew from it, then kept up with it."""

    def __init__(self, run: RunDir):
        self.run = run
        description = script_description(run) or {}
        if description.get("kind") != "followed":
            raise NnobsError(f"{run.name} follows no log (its run.json says none): start it with nnobs follow")
        self.log = log_of(str(description.get("format")), Path(str(description.get("from"))))
        self.asked = description.get("loss") if isinstance(description.get("loss"), str) else None
        self.loss: str | None = None
        self.seen: list[Scalar] = []  # one of each tag, to choose the loss tag by
        self.step = 0
        self.ending = False
        self.control = ControlWatcher(run.control_file)

    def follow(self) -> None:
        self._ignore_commands_sent_before()
        gen = self._held()
        self.out = RecordWriter(self.run.run_file, gen=gen + 1)
        self.out.write(
            {"event": [self.step, EventKind.STARTED], "pid": os.getpid(), "by": os.environ.get("NNOBS_STARTED_BY", "")}
        )
        written = time.monotonic()
        while not self.ending:
            for record, t in self._new_records():
                self.out.write_at(record, time.time() if math.isnan(t) else t)
                written = time.monotonic()
            self._answer_commands()
            if time.monotonic() - written >= HEARTBEAT_S:
                self.out.write({"heartbeat": [self.step, None]})
                written = time.monotonic()
            if not self.ending:
                time.sleep(POLL_S)
        self.out.write({"event": [self.step, EventKind.SHUTDOWN]})

    def _held(self) -> int:
        """Note the last step the run file holds of each of the log's scalars (a follower before this one wrote
        them: a tag that lags behind the others, a val writer flushed later, is still taken up where it is), and
        return the run file's newest generation (0: none)."""
        self.held: dict[str, int] = {}
        gen = 0
        for record in read_all(self.run.run_file):
            if isinstance(record.get("gen"), int):
                gen = max(gen, record["gen"])
            if loss := pair(record.get("loss")):
                self.held["loss"] = max(self.held.get("loss", -1), loss[0])
            if (metrics := pair(record.get("metrics"))) and isinstance(metrics[1], dict):
                for name in metrics[1]:
                    self.held[name] = max(self.held.get(name, -1), metrics[0])
        self.step = max(self.held.values(), default=0)
        return gen

    def _new_records(self) -> list[tuple[dict, float]]:
        scalars = self.log.new_scalars()
        if self.loss is None and scalars:
            tags = {s.tag for s in self.seen}
            self.seen += [s for s in scalars if s.tag not in tags]
            self.loss = loss_tag(list(dict.fromkeys(s.tag for s in self.seen)), self.asked)
            if self.loss is not None and self.asked is None:
                self._keep_loss_tag()
        fresh = []
        for scalar in scalars:  # a step held already was written before (by a follower before this one, or before a
            name = "loss" if scalar.tag == self.loss else metric_name(scalar.tag)  # CSV file was rewritten whole)
            if scalar.step > self.held.get(name, -1):
                fresh.append(scalar)
                self.held[name] = scalar.step
        if fresh:
            self.step = max(self.step, max(s.step for s in fresh))
        return records_of(fresh, self.loss)

    def _keep_loss_tag(self) -> None:
        """The loss tag chosen, in run.json: a restarted follower takes the same one, whatever it sees first."""
        description = {**(script_description(self.run) or {}), "loss": self.loss}
        replace_atomically(self.run.description, lambda f: f.write(json.dumps(description, indent=1).encode()))
        self.asked = self.loss

    def _ignore_commands_sent_before(self) -> None:
        try:
            self.control.poll()
        except ControlFileError:
            pass

    def _answer_commands(self) -> None:
        try:
            commands = self.control.poll()
        except ControlFileError as err:
            self.out.write({"event": [self.step, EventKind.CONTROL_ERROR], "error": str(err)})
            return
        for command in commands:
            answer = answer_of(command)
            if command.get("cmd") == "shutdown":
                self.out.write({"ack": [self.step, answer]})
                self.ending = True
            else:
                self.out.write({"reject": [self.step, {**answer, "reason": CANNOT_STEER}]})


def _step_of(record: dict) -> int:
    found = pair(record.get("loss")) or pair(record.get("metrics"))
    return found[0] if found else -1


def main() -> None:
    run = RunDir(Path(os.environ["NNOBS_RUN_DIR"]))
    if claim(run) is None:
        sys.exit(f"{run.name} is followed already by a live follower")
    ending: list[bool] = []

    def end(signum, frame) -> None:  # noqa: ANN001  (a signal handler's arguments)
        ending.append(True)
        if follower is not None:
            follower.ending = True

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    follower: Follower | None = None
    try:
        follower = Follower(run)
        follower.ending = bool(ending)
        follower.follow()
    except Exception as err:  # a log that cannot be read, a file system that refuses: said where status reads it
        said = f"{type(err).__name__}: {err}" if not isinstance(err, NnobsError) else str(err)
        tell_log(f"nnobs follow: {said}")
        out = follower.out if follower is not None and hasattr(follower, "out") else RecordWriter(run.run_file, gen=1)
        out.write({"event": [follower.step if follower else 0, EventKind.ERROR], "error": said})
        sys.exit(1)


if __name__ == "__main__":
    main()
