"""Faults with real processes, files and locks: kill -9 at any moment, many command senders at once.

Every kill is followed by the checks a user relies on: the run reads as crashed at once, a restart
resumes from the checkpoint, no complete record is lost, a torn last line is skipped, and the
checkpoint is always whole. The figures measured on the way land in test-artifacts/faults.json.

The moments are drawn from a random.Random seeded by NNOBS_FAULTS_SEED, or afresh each session; the
seed is in every failure message, so a failure's moments can be drawn again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import pytest

from conftest import FOREVER, REPO, kill_worker, python, run_together, say_at_the_end, wait_for
from nnobs.reading.bulk import pair
from nnobs.protocol.checkpoint import Checkpoint, load_checkpoint
from nnobs.protocol.control import read_commands, send_command
from nnobs.protocol.commands import check_command
from nnobs.protocol.errors import CommandError, ControlFileError
from nnobs.protocol.files import leftover_temps
from nnobs.reading.history import RunHistory
from nnobs.protocol.records import Record, RecordReader, read_all
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import restart_worker, run_status, start_worker, worker_pid

SEED = int(os.environ.get("NNOBS_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
KILLS_PER_KIND = 5
BIG_NET = [2, 256, 256, 1]  # 66,817 parameters: a checkpoint of 0.5 MB
WIDE_NET = [2, 96, 96, 1]  # 9,697 parameters, reported whole: a state report is a line of 190 KB
CRASH_SEEN_WITHIN_S = 15.0  # a bound for a loaded machine; how soon it is seen is measured and reported (faults.json)
FIGURES_FILE = REPO / "test-artifacts" / "faults.json"


@dataclass
class Kill:
    """What one kill -9 cost, as measured from the outside."""

    kind: str
    # Whether the kill landed in the moment looked for (a line half written, a checkpoint's temporary
    # file present); None for the kinds where any moment will do.
    caught: bool | None
    crash_seen_s: float  # from the kill to a reader seeing "crashed"
    lost_batches: int  # last batch the run file showed minus the batch the next generation resumed from
    lost_s: float  # the same span in the run file's own time stamps
    records_lost: int  # complete lines in the file at the kill that no reader read afterwards
    torn: bool  # the kill left the file's last line without its newline
    torn_skipped: int  # lines the readers skipped because of it
    left_temp: bool  # the kill left a checkpoint's temporary file, which the next worker removed


@pytest.fixture(scope="module")
def figures(request):
    """The measurements of this module's tests; written to test-artifacts/faults.json and summed up in one line."""
    measured: dict = {"kills": [], "commands": None}
    yield measured
    summary = summarize(measured)
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    FIGURES_FILE.write_text(json.dumps(summary, indent=1) + "\n")
    say_at_the_end(request.config, one_line(summary))


def spread(values: list[float]) -> dict | None:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3)} if values else None


def summarize(measured: dict) -> dict:
    kills: list[Kill] = measured["kills"]
    return {
        "seed": SEED,
        "kills": len(kills),
        "by_kind": dict(Counter(k.kind for k in kills)),
        "caught_in_the_moment": {
            kind: f"{sum(bool(k.caught) for k in kills if k.kind == kind)} of {n}"
            for kind, n in Counter(k.kind for k in kills if k.caught is not None).items()
        },
        "crash_detection_s": spread([k.crash_seen_s for k in kills]),
        "work_lost_batches": spread([k.lost_batches for k in kills]),
        "work_lost_s": spread([k.lost_s for k in kills]),
        "records_lost": sum(k.records_lost for k in kills),
        "torn_lines": {"seen": sum(k.torn for k in kills), "skipped": sum(k.torn_skipped for k in kills)},
        "commands": measured["commands"],
        "each_kill": [asdict(k) for k in kills],
    }


def one_line(summary: dict) -> str:
    detection, lost = summary["crash_detection_s"] or {}, summary["work_lost_batches"] or {}
    commands = summary["commands"] or {}
    return (
        f"faults (seed {summary['seed']}): {summary['kills']} kills -9 {summary['by_kind']}, "
        f"crashed seen in {detection.get('median')} s median / {detection.get('max')} s max, "
        f"work lost {lost.get('median')} batches median / {lost.get('max')} max, "
        f"{summary['records_lost']} records lost, {summary['torn_lines']['seen']} torn lines, "
        f"{summary['torn_lines']['skipped']} skipped; commands {commands.get('sent')} sent, "
        f"{commands.get('answered')} answered, {commands.get('lost')} lost"
    )


# -- kill -9 ---------------------------------------------------------------------------------


def batch_of(record: Record) -> int | None:
    """The batch a record speaks of: that of its first [batch, value] topic."""
    return next((p[0] for p in map(pair, record.values()) if p), None)


def is_start(record: Record) -> bool:
    return record.get("event") == [batch_of(record), "started"]


def first_t_at(records: list[Record], batch: int) -> float:
    """Wall time of the first record at or beyond batch."""
    return next(r["t"] for r in records if (batch_of(r) or 0) >= batch)


def common_prefix(a: list, b: list) -> int:
    """How many leading items a and b share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


class RunReader:
    """A reader of the run file from outside, reading on from where it stopped, as the page does.

    It folds the lines into a RunHistory, for the status, and parses them as records, which it keeps
    without their state vectors (a big net's run file grows by megabytes a second).
    """

    def __init__(self, run: RunDir):
        self.run = run
        self.history = RunHistory()
        self._lines = RecordReader(run.run_file)
        self.records = RecordReader(run.run_file)
        self.kept: list[Record] = []

    def state(self) -> str:
        self.history.add_lines(self._lines.read_new_lines())
        return run_status(self.run, self.history).state

    def read_new(self) -> list[Record]:
        new = self.records.read_new()
        self.kept += [{k: v for k, v in r.items() if k != "sv"} for r in new]
        return new

    def skipped(self) -> tuple[int, int]:
        """Lines skipped so far as records and by the history."""
        return self.records.skipped_lines, self.history.skipped_lines


def first_moment(condition: Callable[[], bool], within_s: float, pause_s: float = 0.0) -> bool:
    """Look at condition until it holds or within_s passes; whether it held.

    wait_for looks every 20 ms; the moments looked for here last a millisecond or less, so by
    default there is no pause between looks.
    """
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if pause_s:
            time.sleep(pause_s)
    return False


def replaced_from_now(path) -> Callable[[], bool]:
    """A condition that holds once another file has been renamed over path."""
    inode = os.stat(path).st_ino
    return lambda: os.stat(path).st_ino != inode


def checkpoint_temps(run: RunDir) -> set[str]:
    """Temporary files of checkpoints being written, by name."""
    return {temp.name for temp in leftover_temps(run.checkpoint)}


# Each waits for a moment of its kind and returns whether it caught it, or None when any moment will do.


def while_training(run: RunDir, rng: random.Random) -> None:
    time.sleep(rng.uniform(0.05, 3.5))  # picks the moment: before and after the first periodic checkpoint


def while_writing_a_record(run: RunDir, rng: random.Random) -> bool:
    """Just after the writer began a line: the file ends in part of it. Asks for state reports, long lines."""
    time.sleep(rng.uniform(0.0, 0.5))  # picks which record
    fd = os.open(run.run_file, os.O_RDONLY)
    try:
        for _ in range(10):
            send_command(run.control_file, "tell_state", by="faults")
            if first_moment(lambda: os.pread(fd, 1, os.fstat(fd).st_size - 1) != b"\n", within_s=0.3):
                return True
        return False
    finally:
        os.close(fd)


def while_writing_a_checkpoint(run: RunDir, rng: random.Random) -> bool:
    """While a checkpoint's temporary file exists; the worker writes one after answering a command."""
    time.sleep(rng.uniform(0.0, 0.5))
    for _ in range(10):
        send_command(run.control_file, "target", FOREVER, by="faults")  # changes nothing, but is answered
        if first_moment(lambda: bool(checkpoint_temps(run)), within_s=0.5):
            return True
    return False


def while_idle(run: RunDir, rng: random.Random) -> None:
    time.sleep(rng.uniform(0.0, 3.5))  # across heartbeats, before and after the checkpoint at the target


@dataclass(frozen=True)
class KillKind:
    config: dict  # RunConfig fields of the run it kills
    moment: Callable[[RunDir, random.Random], bool | None]
    state: str  # the run's state when the moment comes


KINDS = {
    "training": KillKind({"target": FOREVER}, while_training, "training"),
    "record": KillKind({"sizes": WIDE_NET, "report_every": 1000, "target": FOREVER}, while_writing_a_record, "training"),
    "checkpoint": KillKind({"sizes": BIG_NET, "report_every": 0, "target": FOREVER}, while_writing_a_checkpoint, "training"),
    "idle": KillKind({"target": 3000}, while_idle, "idle"),
}


@dataclass
class Aftermath:
    """The run as a kill -9 left it, looked at before anyone restarts it."""

    offset: int  # where `left` begins in the run file: the first byte the reader had not read
    left: bytes  # the run file from there to its end
    complete: list[Record]  # the complete lines in `left`, parsed
    torn_tail: bytes  # what follows the last newline: part of a line
    last_batch: int  # the batch the run file showed last
    ckpt: Checkpoint  # as loaded now
    temps: set[str]  # checkpoint temporary files in the run directory


def aftermath(run: RunDir, reader: RunReader) -> Aftermath:
    reader.state()  # the lines written between the reader's last look and the death
    offset = reader.records.offset
    with open(run.run_file, "rb") as f:
        f.seek(offset)
        left = f.read()
    end = left.rfind(b"\n") + 1
    return Aftermath(
        offset=offset,
        left=left,
        complete=[json.loads(line) for line in left[:end].splitlines()],  # a complete line is whole JSON
        torn_tail=left[end:],
        last_batch=reader.history.batch,
        ckpt=load_checkpoint(run.checkpoint),  # raises if half-written
        temps=checkpoint_temps(run),
    )


def kill_restart_and_check(run: RunDir, reader: RunReader, kind: str, rng: random.Random, label: str) -> Kill:
    """kill -9 the worker at a moment of the kind, check what a crash must leave whole, restart it, check again."""
    wait_for(lambda: reader.state() == KINDS[kind].state, what=f"{label}: the worker to be {KINDS[kind].state}")
    pid, gen = worker_pid(run), reader.history.gen
    assert pid and pid > 0, f"{label}: no live worker to kill"

    caught = KINDS[kind].moment(run, rng)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)

    # (a) Liveness is the lock, which the kernel drops with the process: "crashed" shows at once.
    wait_for(lambda: reader.state() == "crashed", timeout=CRASH_SEEN_WITHIN_S, what=f"{label} to read as crashed")
    crash_seen_s = time.monotonic() - killed_at

    # (e) The checkpoint is replaced by a rename: whatever the moment, the one on disk is whole.
    crash = aftermath(run, reader)
    assert crash.ckpt is not None and crash.ckpt.gen == gen, f"{label}: checkpoint {crash.ckpt} is not generation {gen}'s"
    assert crash.ckpt.batch <= crash.last_batch, (
        f"{label}: the checkpoint holds batch {crash.ckpt.batch}, beyond the run file's last {crash.last_batch}"
    )

    restart_worker(run)

    skipped_before = reader.skipped()
    read: list[Record] = []
    wait_for(
        lambda: read.extend(reader.read_new()) or any(map(is_start, read)),
        what=f"{label}: the next generation's start",
    )
    started = next(filter(is_start, read))

    # (b) The next generation starts where the checkpoint stood.
    assert (started["gen"], started["resumed_from"]) == (gen + 1, crash.ckpt.batch), (
        f"{label}: generation {started['gen']} resumed from {started['resumed_from']}; "
        f"generation {gen} was killed, its checkpoint at batch {crash.ckpt.batch}"
    )

    # (c) Every complete line at the kill is read back, in order, and nothing else comes before the start.
    records_lost = len(crash.complete) - common_prefix(crash.complete, read)
    assert records_lost == 0, f"{label}: {records_lost} of {len(crash.complete)} complete lines at the kill not read back"
    assert read[len(crash.complete)] is started, f"{label}: {read[len(crash.complete)]} came between the kill and the start"
    with open(run.run_file, "rb") as f:
        f.seek(crash.offset)
        assert f.read(len(crash.left)) == crash.left, f"{label}: bytes in the run file at the kill were changed"

    # (d) A torn last line is ended by the next writer and skipped by every reader, nothing more.
    reader.state()
    skipped = tuple(now - before for now, before in zip(reader.skipped(), skipped_before))
    assert skipped == ((1, 1) if crash.torn_tail else (0, 0)), f"{label}: torn tail {crash.torn_tail[:40]!r}, skipped {skipped}"

    # (e) What the killed worker left of a checkpoint is gone once its successor runs.
    assert not crash.temps & checkpoint_temps(run), f"{label}: {crash.temps} left behind"

    killed_gen = [r for r in reader.kept if r.get("gen") == gen]
    return Kill(
        kind=kind,
        caught=caught,
        crash_seen_s=round(crash_seen_s, 3),
        lost_batches=crash.last_batch - crash.ckpt.batch,
        lost_s=round(first_t_at(killed_gen, crash.last_batch) - first_t_at(killed_gen, crash.ckpt.batch), 3),
        records_lost=records_lost,
        torn=bool(crash.torn_tail),
        torn_skipped=skipped[0],
        left_temp=bool(crash.temps),
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_kill_9_at_any_moment_loses_no_record_and_resumes_from_the_checkpoint(kind, new_run, figures):
    rng = random.Random(f"{SEED}-{kind}")
    run = new_run(kind, **KINDS[kind].config)
    start_worker(run)
    reader = RunReader(run)
    wait_for(lambda: any(map(is_start, reader.read_new())), what=f"{run.name}'s first start (seed {SEED})")

    kills = []
    for number in range(1, KILLS_PER_KIND + 1):
        kills.append(kill_restart_and_check(run, reader, kind, rng, label=f"kill {number} of the {kind} run (seed {SEED})"))
        figures["kills"].append(kills[-1])
    # The checks above hold whatever the moment; these make sure the hard moments were really met.
    if kind == "record":
        assert any(k.torn for k in kills), f"seed {SEED}: no kill tore a line"
    if kind == "checkpoint":
        assert any(k.left_temp for k in kills), f"seed {SEED}: no kill caught a checkpoint half written"

    # Read afresh from the start, the whole file tells the same: every record, each torn line skipped once.
    kill_worker(run)
    reader.read_new()
    reader.state()
    fresh = read_history(run)
    assert fresh.n_records == len(reader.kept) == reader.history.n_records, f"seed {SEED}"
    skipped = (fresh.skipped_lines, reader.records.skipped_lines, reader.history.skipped_lines)
    assert skipped == (sum(k.torn for k in kills),) * 3, f"seed {SEED}: lines skipped {skipped}"


def test_a_checkpoint_never_holds_a_batch_the_run_file_has_not_shown(new_run):
    """Just after a periodic checkpoint lands is the worst moment for a kill -9: freeze the worker there and look."""
    run = new_run(target=FOREVER, report_every=0)
    pid = start_worker(run)
    for number in (1, 2):
        # Looked at every millisecond: the worker reports its loss again within 50 ms, closing the gap.
        assert first_moment(replaced_from_now(run.checkpoint), within_s=10, pause_s=0.001), "no checkpoint within 10 s"
        os.kill(pid, signal.SIGSTOP)
        try:
            held, shown = load_checkpoint(run.checkpoint).batch, read_history(run).batch
        finally:
            os.kill(pid, signal.SIGCONT)
        assert held <= shown, f"periodic checkpoint {number} holds batch {held}; the run file shows only {shown}"


# -- many command senders at once ------------------------------------------------------------

SEND_A_MIX = """
import json, sys
from nnobs.protocol.control import send_command
path, who, count, first = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
mix = [("target", 10**9 - 1), ("eta", 0.05), ("report_every", 0), ("tell_state", None), ("eta", -1), ("warp", 9)]
print("ready", flush=True)
sys.stdin.readline()
sent = [send_command(path, *mix[(first + k) % len(mix)], by=who) for k in range(count)]
print(json.dumps(sent))
"""


class ControlFileWatch:
    """Reads the control file over and over on a thread, noting any read that fails or loses a command."""

    def __init__(self, path):
        self.path = path
        self.reads = 0
        self.faults: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="control-watch", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        seen: set[int] = set()
        while not self._stop.is_set():
            try:
                seqs = {c["seq"] for c in read_commands(self.path)}
            except ControlFileError as err:
                self.faults.append(f"read {self.reads}: {err}")
                seqs = seen
            if not seen <= seqs:
                self.faults.append(f"read {self.reads}: commands {sorted(seen - seqs)} vanished")
            seen = seqs
            self.reads += 1
            time.sleep(0.001)  # leaves the senders and the worker the CPU between looks


def is_valid(command: dict) -> bool:
    try:
        check_command(command["cmd"], command["value"])
    except CommandError:
        return False
    return True


def test_eight_processes_sending_at_once_to_a_live_worker_each_get_one_answer(new_run, figures):
    run = new_run(target=FOREVER)
    pid = start_worker(run)
    senders = [python(SEND_A_MIX, str(run.control_file), f"sender-{k}", "25", str(k)) for k in range(8)]

    with ControlFileWatch(run.control_file) as watch:
        sent = [c for out in run_together(senders) for c in json.loads(out)]
    assert watch.faults == [], f"the control file read wrong while written to: {watch.faults[:5]}"
    assert watch.reads > 10, "the control file was hardly read while the senders wrote"

    in_file = read_commands(run.control_file)
    assert sorted(c["id"] for c in in_file) == sorted(c["id"] for c in sent) and len(sent) == 200
    assert [c["seq"] for c in in_file] == list(range(1, 201))
    valid = {c["id"]: is_valid(c) for c in sent}
    assert 0 < sum(valid.values()) < 200, "the mix holds valid and invalid commands"

    history = RunHistory()
    lines = RecordReader(run.run_file)
    wait_for(
        lambda: history.add_lines(lines.read_new_lines()) or len(history.answers) >= 200,
        what="answers to all 200 commands",
    )
    assert {i: a.ok for i, a in history.answers.items()} == valid
    answers = [(topic, r[topic][1]["id"]) for r in read_all(run.run_file) for topic in ("ack", "reject") if topic in r]
    assert Counter(i for _, i in answers) == dict.fromkeys(valid, 1), "each command answered exactly once"
    assert worker_pid(run) == pid and run_status(run, history).state == "training"

    figures["commands"] = {
        "sent": len(sent),
        "in_control_file": len(in_file),
        "answered": len(history.answers),
        "acknowledged": sum(topic == "ack" for topic, _ in answers),
        "rejected": sum(topic == "reject" for topic, _ in answers),
        "lost": len(sent) - len(history.answers),
        "control_file_reads": watch.reads,
    }
