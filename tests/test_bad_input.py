"""Bad input of every kind is answered with a clear message, and nothing that was there before is lost."""

from __future__ import annotations

import ctypes
import functools
import json
import os
import pickle
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

from conftest import FOREVER, REPO, answered, batch_passes, events, kill_worker, wait_for
from nnobs.protocol.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nnobs.protocol.control import ControlWatcher, read_commands, send_command
from nnobs.protocol.files import replace_atomically
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.records import RecordReader, RecordWriter, read_all
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, run_status, start_worker, worker_pid
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig, load_config

NAMING_RULE = "refused: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
ETA_RULE = "eta must be a number above 0 and at most 1e+06, not "
TARGET_RULE = "target must be a whole number of batches from 0 to 1,000,000,000,000, not "
MOVE_AWAY = "move it away to start the run afresh"


# -- running the real thing ----------------------------------------------------------------


def run_module(module: str, *args: str, **popen: object) -> subprocess.CompletedProcess:
    """`python -m module args...` importing this checkout, run to its end."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=120, check=False, **popen
    )


def nnobs(runs_root: Path, *args: str, **popen: object) -> subprocess.CompletedProcess:
    return run_module("nnobs.cli", "--runs", str(runs_root), *args, **popen)


def said(*done: subprocess.CompletedProcess) -> str:
    """Everything the processes printed, to look for a message in."""
    return "\n".join(d.stdout + d.stderr for d in done)


def refused_cleanly(done: subprocess.CompletedProcess) -> str:
    """The CLI's stderr, once it is known to have refused with exit code 2 and no traceback."""
    assert done.returncode == 2, f"exit {done.returncode}:\n{said(done)}"
    assert "Traceback" not in said(done), said(done)
    return done.stderr


_PR_CAPBSET_DROP = 24
_DAC_CAPABILITIES = (1, 2, 3)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER


def _obey_file_permissions() -> None:
    """In a child about to exec: give up the capabilities that let root ignore file permissions.

    Dropped from the bounding set, they are gone from the exec'd program, which stays root (so it
    can still reach an interpreter under /root) but meets a read-only directory as anyone would.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _DAC_CAPABILITIES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def nnobs_without_write_access(runs_root: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a process that file permissions apply to, even when the tests run as root."""
    return nnobs(runs_root, *args, preexec_fn=_obey_file_permissions if os.geteuid() == 0 else None)


@contextmanager
def read_only(*directories: Path) -> Iterator[None]:
    """Directories made read-only for the length of the block."""
    for directory in directories:
        directory.chmod(0o555)
    try:
        yield
    finally:
        for directory in directories:
            directory.chmod(0o755)


# -- the live run that the control-file cases share ------------------------------------------


@pytest.fixture(scope="module")
def live_run(tmp_path_factory) -> RunDir:
    """One worker training for the whole module: starting one per case would cost more than the cases.

    It learns so slowly that every loss report differs: it reports 20 times a second, not only on its heartbeat.
    """
    run = RunDir.named("live", tmp_path_factory.mktemp("shared"))
    create_run(run, RunConfig(target=FOREVER, report_every=0, eta=0.0001))
    start_worker(run)
    batch_passes(run, 0)
    yield run
    kill_worker(run)


@dataclass
class Bench:
    """What a case may use: the shared live run, and a runs root of its own."""

    live: RunDir
    runs_root: Path
    new_run: Callable[..., RunDir]


@pytest.fixture
def bench(live_run, runs_root, new_run) -> Bench:
    return Bench(live_run, runs_root, new_run)


@dataclass
class Kept:
    """What the live run held before a case: all of it must still be there after."""

    records: list[dict]
    command_ids: list[str]
    config: str
    pid: int
    settings: tuple  # eta, target, report_every

    @classmethod
    def of(cls, run: RunDir) -> Kept:
        history = read_history(run)
        return cls(
            records=read_all(run.run_file),
            command_ids=[c["id"] for c in read_commands(run.control_file)],
            config=run.config.read_text(),
            pid=worker_pid(run),
            settings=(history.eta, history.target, history.report_every),
        )


def assert_nothing_lost_and_training_on(run: RunDir, kept: Kept, commands_kept: bool = True) -> None:
    records = read_all(run.run_file)
    assert records[: len(kept.records)] == kept.records, "every earlier record is still there, in order"
    answered_ids = [r[topic][1]["id"] for r in records for topic in ("ack", "reject") if topic in r]
    assert len(answered_ids) == len(set(answered_ids)), "no command was answered, or applied, twice"
    if commands_kept:
        ids = {c["id"] for c in read_commands(run.control_file)}
        assert set(kept.command_ids) <= ids, "every earlier command is still in control.json"
    assert run.config.read_text() == kept.config and load_config(run.config).target == FOREVER
    checkpoint = load_checkpoint(run.checkpoint)
    assert checkpoint is not None and checkpoint.gen == 1, "the checkpoint still reads, written by the same worker"
    assert worker_pid(run) == kept.pid, "the same worker, and only it"
    history = read_history(run)
    assert (history.eta, history.target, history.report_every) == kept.settings
    batch_passes(run, history.batch, what="the live worker to train on after the case")
    assert run_status(run, read_history(run)).state == "training"


def on_live_run(commands_kept: bool = True) -> Callable:
    """Decorate a case done to the live run: around it, check that nothing was lost and training goes on."""

    def wrap(inflict: Callable[[RunDir], str]) -> Callable[[Bench], str]:
        @functools.wraps(inflict)
        def case(bench: Bench) -> str:
            kept = Kept.of(bench.live)
            message = inflict(bench.live)
            assert_nothing_lost_and_training_on(bench.live, kept, commands_kept)
            return message

        return case

    return wrap


# -- control-file cases, answered by the worker ----------------------------------------------


def write_command_by_hand(path: Path, cmd: str, value: object) -> dict:
    """Append a command as an editor could, under the lock: Python's json writes NaN and Infinity tokens."""
    with FileLock(f"{path}.lock"):
        text = path.read_text() if path.exists() else ""
        content = json.loads(text) if text.strip() else {"next_seq": 1, "commands": []}
        command = {"seq": content["next_seq"], "id": uuid.uuid4().hex[:12], "cmd": cmd, "value": value,
                   "t": round(time.time(), 3), "by": "hand"}
        content["commands"].append(command)
        content["next_seq"] += 1
        replace_atomically(path, lambda f: f.write(json.dumps(content).encode()))  # allow_nan: on by default
    return command


def rejected(cmd: str, value: object, by_hand: bool = False) -> Callable[[Bench], str]:
    """A case: the live worker is sent cmd with a bad value, and answers with a rejection and its reason."""

    @on_live_run()
    def case(run: RunDir) -> str:
        if by_hand:
            command = write_command_by_hand(run.control_file, cmd, value)
            assert re.search(r"\bNaN\b|\bInfinity\b", run.control_file.read_text()), "the token JSON lacks is there"
        else:
            command = send_command(run.control_file, cmd, value, by="test")
        answer = answered(run, command)
        assert not answer.ok
        return answer.reason

    return case


@on_live_run()
def malformed_control_file(run: RunDir) -> str:
    before = run.control_file.read_bytes() if run.control_file.exists() else None
    seen = len(events(run, "control_error"))
    run.control_file.write_text('{"next_seq": 3, "commands": [{"seq": 1, "cmd": "eta", ')  # an edit cut short

    event = wait_for(lambda: events(run, "control_error")[seen:], what="a control_error record")[0]

    # Put back what was there, as its owner would: the worker obeys the file again, and nothing is applied twice.
    if before is None:
        run.control_file.unlink()
    else:
        replace_atomically(run.control_file, lambda f: f.write(before))
    assert answered(run, send_command(run.control_file, "tell_state", by="test")).ok
    return event["error"]


@on_live_run(commands_kept=False)  # emptying the file is the case: the commands it held go with it
def empty_control_file(run: RunDir) -> str:
    seen = len(events(run, "control_error"))
    run.control_file.write_bytes(b"")

    assert read_commands(run.control_file) == []  # no commands yet, as if the file were missing
    told = nnobs(run.path.parent, "tell-state", run.name)
    assert told.returncode == 0, said(told)
    assert [c["seq"] for c in read_commands(run.control_file)] == [1]
    assert len(events(run, "control_error")) == seen, "an empty file is no error"
    return said(told)


def cli_refuses_setting(*args: str) -> Callable[[Bench], str]:
    """A case: `nnobs set live args...` is refused before anything is written to control.json."""

    @on_live_run()
    def case(run: RunDir) -> str:
        commands = read_commands(run.control_file)
        done = nnobs(run.path.parent, "set", run.name, *args)
        assert read_commands(run.control_file) == commands, "nothing was sent"
        return refused_cleanly(done)

    return case


# -- run-file cases --------------------------------------------------------------------------


@on_live_run()
def garbage_lines_in_the_run_file(run: RunDir) -> str:
    reader = RecordReader(run.run_file)
    reader.read_new()
    skipped_before = read_history(run).skipped_lines
    with open(run.run_file, "ab") as f:  # O_APPEND and one write: the lines land whole, between the worker's
        f.write(b"this line is no JSON\n" + b"\xff\xfe\x80 nor UTF-8\n")
    garbage_at = read_history(run).batch

    batch_passes(run, garbage_at, what="the worker to append after the garbage")
    after = reader.read_new()
    assert reader.skipped_lines == 2 and after, "the reader skipped and counted both lines, and read on"
    assert read_history(run).skipped_lines == skipped_before + 2
    status = nnobs(run.path.parent, "status", run.name)
    assert status.returncode == 0 and "state         training" in status.stdout, said(status)
    return said(status)


def write_generation(path: Path, gen: int, batches: range) -> None:
    """Append what a worker generation writes: its "started" record, then a loss report per batch."""
    writer = RecordWriter(path, gen)
    writer.write({"event": [batches[0], "started"], "pid": 1, "resumed_from": batches[0] or None})
    for batch in batches:
        writer.write({"loss": [batch, 0.25]})
    writer.close()


def run_file_replaced_under_a_reader(
    replace: Callable[[Path], None], second: range, look_between: bool = True
) -> Callable[[Bench], str]:
    """A case: the page's reader has read a run file, which is then replaced; it must read the new one from its start.

    look_between: the reader refreshes while the file is gone or empty, as a page open on it would.
    """

    def case(bench: Bench) -> str:
        path = bench.runs_root / "run.jsonl"
        write_generation(path, 1, range(40))
        watcher = RunWatcher(path)
        assert watcher.refresh().n_records == 41

        replace(path)
        if look_between:
            watcher.refresh()  # while it is gone or empty: no crash
        write_generation(path, 2, second)
        history = watcher.refresh()

        assert watcher.reader.restarts >= 1
        assert (history.n_records, history.batch, history.gen) == (1 + len(second), second[-1], 2)
        assert [e.kind for e in history.events] == ["started"], "only the new file's records"
        return history.events[0].detail

    return case


def _truncate(path: Path) -> None:
    os.truncate(path, 0)


# -- runs roots and names, answered by the CLI -----------------------------------------------


def bad_run_name(name: str) -> Callable[[Bench], str]:
    """A case: `nnobs start NAME` refuses the name, saying the rule, and creates nothing."""

    def case(bench: Bench) -> str:
        around = sorted(bench.runs_root.parent.iterdir())
        message = refused_cleanly(nnobs(bench.runs_root, "start", name))
        assert list(bench.runs_root.iterdir()) == [] and sorted(bench.runs_root.parent.iterdir()) == around
        return message

    return case


def missing_runs_root(bench: Bench) -> str:
    root = bench.runs_root
    root.rmdir()
    status = nnobs(root, "status")
    assert status.returncode == 1 and not root.exists(), "status only looks, and says there is no such run"

    started = nnobs(root, "start")

    run = RunDir.named("default", root)
    assert started.returncode == 0 and run.exists(), said(started)
    assert f"default: worker {worker_pid(run)} is alive" in started.stdout
    return said(status, started)


def read_only_runs_root(bench: Bench) -> str:
    with read_only(bench.runs_root):
        done = nnobs_without_write_access(bench.runs_root, "start", "fresh")
    assert list(bench.runs_root.iterdir()) == []
    return refused_cleanly(done)


def read_only_run_directory(*args: str) -> Callable[[Bench], str]:
    """A case: the CLI acts on an existing run whose directory it may not write."""

    def case(bench: Bench) -> str:
        run = bench.new_run("frozen", target=0)
        before = sorted(p.name for p in run.path.iterdir())
        with read_only(bench.runs_root, run.path):
            done = nnobs_without_write_access(bench.runs_root, *args, "frozen")
        assert sorted(p.name for p in run.path.iterdir()) == before and worker_pid(run) is None
        return refused_cleanly(done)

    return case


# -- workers and locks -----------------------------------------------------------------------


@on_live_run()
def second_worker_started_by_hand(run: RunDir) -> str:
    starts = len(events(run, "started"))
    done = run_module("nnobs.training.worker", str(run.path))
    assert done.returncode == 0, said(done)
    assert len(events(run, "started")) == starts, "the second worker wrote nothing"
    return said(done)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def stale_worker_lock(bench: Bench) -> str:
    run = bench.new_run("stale", target=0)
    pid = dead_pid()
    writer = RecordWriter(run.run_file, gen=1)  # what the dead worker wrote before it died
    writer.write({"event": [0, "started"], "pid": pid, "resumed_from": None})
    writer.write({"loss": [0, 0.25]})
    writer.close()
    earlier = read_all(run.run_file)
    run.worker_lock.write_text(str(pid))

    status = nnobs(bench.runs_root, "status", "stale")
    started = nnobs(bench.runs_root, "start", "stale")

    assert status.returncode == 0 and started.returncode == 0, said(status, started)
    new_pid = worker_pid(run)
    assert new_pid not in (None, pid) and f"stale: worker {new_pid} is alive" in started.stdout
    assert read_all(run.run_file)[: len(earlier)] == earlier
    return said(status, started)


# -- checkpoints and configs that must not be trained from -----------------------------------


class _Trap:
    """Unpickling this creates the file at path: proof that something read from disk ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _meta(**changes) -> str:
    fields = {"batch": 500, "eta": 0.1, "target": 0, "report_every": 0, "gen": 1, "last_seq": 0, "run_offset": 0}
    return json.dumps({**fields, **changes})


def _smaller_checkpoint(bench: Bench, run: RunDir) -> None:
    save_checkpoint(run.checkpoint, Checkpoint(**json.loads(_meta()), state={"sv": np.zeros(5)}))


def _live_runs_checkpoint(bench: Bench, run: RunDir) -> None:
    run.checkpoint.write_bytes(bench.live.checkpoint.read_bytes())  # a real one, from a 2-2-1 net


def _object_array_checkpoint(bench: Bench, run: RunDir) -> None:
    with open(run.checkpoint, "wb") as f:
        np.savez(f, sv=np.array([_Trap(run.path / "trap-sprung")], dtype=object), meta=np.array(_meta()))


def _whole_file_pickled(bench: Bench, run: RunDir) -> None:
    run.checkpoint.write_bytes(pickle.dumps(_Trap(run.path / "trap-sprung")))


def _meta_missing_fields(bench: Bench, run: RunDir) -> None:
    with open(run.checkpoint, "wb") as f:
        np.savez(f, sv=np.zeros(9), meta=np.array(json.dumps({"batch": 500, "eta": 0.1})))


def edit_config(run: RunDir, **fields) -> None:
    """Change config.json by hand, as someone with an editor would: no check stands in the way."""
    written = {k: v for k, v in json.loads(run.config.read_text()).items() if k != "net"}
    run.config.write_text(json.dumps({**written, **fields}))


def start_refused(prepare: Callable[[Bench, RunDir], None] | None = None, **config) -> Callable[[Bench], str]:
    """A case: `nnobs start` on a run whose checkpoint or config cannot be trained from fails, saying why.

    The checkpoint and config are left as they were, the earlier records stay, and the run file
    records the error where the page and status look.
    """

    def case(bench: Bench) -> str:
        run = bench.new_run("broken", target=0, **config)
        writer = RecordWriter(run.run_file, gen=1)  # an earlier generation's records
        writer.write({"loss": [500, 0.25]})
        writer.close()
        earlier = read_all(run.run_file)
        if prepare:
            prepare(bench, run)
        checkpoint = run.checkpoint.read_bytes() if run.checkpoint.exists() else None
        config_text = run.config.read_text()

        done = nnobs(bench.runs_root, "start", "broken")

        assert done.returncode == 2 and worker_pid(run) is None, said(done)
        assert (run.checkpoint.read_bytes() if run.checkpoint.exists() else None) == checkpoint, "left untouched"
        assert run.config.read_text() == config_text
        assert not (run.path / "trap-sprung").exists(), "nothing read from the checkpoint was run"
        records = read_all(run.run_file)
        assert records[: len(earlier)] == earlier
        error = events(run, "error")[-1]["error"]
        assert error.startswith("cannot start: ") and error.removeprefix("cannot start: ") in done.stderr
        assert "state         crashed" in nnobs(bench.runs_root, "status", "broken").stdout
        return error

    return case


# -- the table -------------------------------------------------------------------------------

TABLE = [
    # control.json, answered by the live worker
    pytest.param(malformed_control_file, "control.json is not valid JSON (", id="control-file-malformed"),
    pytest.param(empty_control_file, "acknowledged at batch", id="control-file-emptied-reads-as-no-commands"),
    pytest.param(rejected("warp", 9), "unknown command 'warp': expected target, eta, report_every, pace, min_free, tell_state, rewind, reinit, exploit or shutdown", id="unknown-command"),
    pytest.param(rejected("exploit", {"from": "../../etc", "batch": 1, "eta": 0.1}),
                 'exploit takes {"from": RUN, "batch": N, "eta": X}', id="exploit-from-a-path"),
    pytest.param(rejected("exploit", {"from": "nobody", "batch": 5, "eta": 0.1}),
                 "no checkpoint of nobody at batch 5 is in", id="exploit-of-a-checkpoint-not-there"),
    pytest.param(rejected("min_free", -5), "min_free must be megabytes from 0 (never pause) to 1,000,000,000, not -5", id="min-free-negative"),
    pytest.param(rejected("min_free", "lots"), "min_free must be megabytes from 0 (never pause) to 1,000,000,000, not 'lots'", id="min-free-a-string"),
    pytest.param(rejected("eta", "fast"), ETA_RULE + "'fast'", id="eta-a-string"),
    pytest.param(rejected("target", True), TARGET_RULE + "True", id="target-a-bool"),
    pytest.param(rejected("target", 1000.0), TARGET_RULE + "1000.0", id="target-a-float"),
    pytest.param(rejected("eta", 0), ETA_RULE + "0", id="eta-zero"),
    pytest.param(rejected("eta", -0.5), ETA_RULE + "-0.5", id="eta-negative"),
    pytest.param(rejected("eta", float("nan"), by_hand=True), ETA_RULE + "nan", id="eta-NaN-written-by-hand"),
    pytest.param(rejected("eta", float("inf"), by_hand=True), ETA_RULE + "inf", id="eta-Infinity-written-by-hand"),
    pytest.param(rejected("eta", 1e300), ETA_RULE + "1e+300", id="eta-absurdly-large"),
    pytest.param(rejected("target", -5), TARGET_RULE + "-5", id="target-negative"),
    pytest.param(rejected("target", 2.5), TARGET_RULE + "2.5", id="target-fractional"),
    pytest.param(rejected("target", 10**13), TARGET_RULE + "10000000000000", id="target-absurdly-large"),
    # bad values typed at the CLI: refused before they are sent
    pytest.param(cli_refuses_setting("--eta", "nan"), ETA_RULE + "nan", id="cli-eta-nan"),
    pytest.param(cli_refuses_setting("--target", "2.5"), "argument --target: invalid int value: '2.5'", id="cli-target-fractional"),
    # the run file; a replaced one's message is the new generation's start, which its reader sees
    # only when it has started over at the new file's first line
    pytest.param(garbage_lines_in_the_run_file, "skipped       2 unreadable lines of run.jsonl", id="run-file-garbage-and-non-utf8-lines"),
    pytest.param(
        run_file_replaced_under_a_reader(_truncate, range(100, 110)),
        "resumed from the checkpoint at batch 100", id="run-file-truncated-under-a-reader",
    ),
    pytest.param(
        run_file_replaced_under_a_reader(Path.unlink, range(100, 110)),
        "resumed from the checkpoint at batch 100", id="run-file-deleted-under-a-reader",
    ),
    pytest.param(
        run_file_replaced_under_a_reader(_truncate, range(100, 200), look_between=False),
        "resumed from the checkpoint at batch 100", id="run-file-truncated-and-refilled-past-the-reader-between-two-reads",
    ),
    # run names
    pytest.param(bad_run_name(".."), "run name '..' " + NAMING_RULE, id="name-dot-dot"),
    pytest.param(bad_run_name("../escape"), "run name '../escape' " + NAMING_RULE, id="name-climbing-out"),
    pytest.param(bad_run_name("a/b"), "run name 'a/b' " + NAMING_RULE, id="name-with-slash"),
    pytest.param(bad_run_name("my run"), "run name 'my run' " + NAMING_RULE, id="name-with-space"),
    pytest.param(bad_run_name("bell\x07\x1b[31m"), "run name 'bell\\x07\\x1b[31m' " + NAMING_RULE, id="name-with-control-characters"),
    pytest.param(bad_run_name("r" * 500), f"run name '{'r' * 500}' " + NAMING_RULE, id="name-500-characters"),
    # runs roots
    pytest.param(missing_runs_root, ("the runs root", "does not exist (choose it with --runs DIR", "is alive"), id="runs-root-missing"),
    pytest.param(read_only_runs_root, ("cannot create run fresh in ", "Permission denied"), id="runs-root-read-only"),
    pytest.param(
        read_only_run_directory("set", "--target", "5"), ("nnobs: set failed on ", "control.json.lock: Permission denied"),
        id="run-directory-read-only-set",
    ),
    pytest.param(read_only_run_directory("start"), ("nnobs: start failed on ", "start.lock: Permission denied"), id="run-directory-read-only-start"),
    # workers and locks
    pytest.param(second_worker_started_by_hand, ("another worker holds ", "worker.lock; exiting"), id="second-worker-started-by-hand"),
    pytest.param(stale_worker_lock, ("state         crashed", "is alive"), id="stale-lock-of-a-dead-worker"),
    # checkpoints and configs
    pytest.param(
        start_refused(_smaller_checkpoint),
        "the checkpoint does not fit this run's net (the state vector has 5 values, the network 9 parameters); "
        "move checkpoint.npz away to start afresh",
        id="checkpoint-of-another-size",
    ),
    pytest.param(
        start_refused(_live_runs_checkpoint, sizes=[2, 3, 1]),
        "the checkpoint does not fit this run's net (the state vector has 9 values, the network 13 parameters)",
        id="checkpoint-from-another-config",
    ),
    pytest.param(
        start_refused(_object_array_checkpoint),
        "is unreadable (it holds pickled objects, which are never loaded); " + MOVE_AWAY,
        id="checkpoint-with-a-pickled-object-array",
    ),
    pytest.param(
        start_refused(_whole_file_pickled),
        "is unreadable (it holds pickled objects, which are never loaded); " + MOVE_AWAY, id="checkpoint-that-is-a-pickle",
    ),
    pytest.param(
        start_refused(_meta_missing_fields),
        ("missing 5 required positional arguments", MOVE_AWAY), id="checkpoint-missing-fields",
    ),
    pytest.param(
        start_refused(lambda bench, run: edit_config(run, activation="os.system")),
        ("config: unknown activation 'os.system'", "built in: ['identity', 'relu', 'sigmoid', 'sin', 'tanh']"),
        id="config-activation-not-in-the-table",
    ),
]


@pytest.mark.parametrize("case, says", TABLE)
def test_bad_input_is_answered_with_a_clear_message_and_loses_nothing(bench, case, says):
    message = case(bench)

    for wording in (says,) if isinstance(says, str) else says:
        assert wording in message, f"expected {wording!r} in:\n{message}"


def test_a_start_that_fails_says_why_without_a_traceback(new_run, runs_root):
    edit_config(new_run("broken"), activation="os.system")
    done = nnobs(runs_root, "start", "broken")
    assert "unknown activation 'os.system'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_control_file_emptied_and_refilled_between_two_looks_is_read_from_its_first_command(tmp_path):
    path = tmp_path / "control.json"
    watcher = ControlWatcher(path)
    first = send_command(path, "eta", 0.2)
    assert watcher.poll() == [first]
    path.write_bytes(b"")
    again = send_command(path, "eta", 0.3)  # numbered 1 again, like the command the watcher last handed out

    assert again["seq"] == first["seq"] == 1
    assert watcher.poll() == [again]


# Ways to run what a file holds. Nothing nnobs reads from disk (configs, checkpoints, control
# and run files) may ever go through one: names are looked up in fixed tables instead.
RUNS_WHAT_IT_READS = {
    r"\bimport c?pickle\b|\bfrom c?pickle import\b|\bpickle\.\w+\(": "pickle",
    r"(?<!\w)eval\(": "eval(",
    r"(?<!\w)exec\(": "exec(",
    r"allow_pickle\s*=\s*True": "allow_pickle=True",
    r"\byaml\.(?:unsafe_)?load\(": "yaml.load",
    r"\bmarshal\b|\bshelve\b|\bdill\b": "marshal, shelve or dill",
    r"__import__\(|\bimport_module\(": "importing by a name",
}


def test_the_trap_in_the_pickled_checkpoints_springs_when_unpickled(tmp_path):
    """Without this, the checkpoint cases' "nothing was run" would prove nothing."""
    pickle.loads(pickle.dumps(_Trap(tmp_path / "trap-sprung")))
    assert (tmp_path / "trap-sprung").exists()


def test_nothing_read_from_disk_is_ever_executed():
    sources = sorted((REPO / "nnobs").rglob("*.py"))
    assert len(sources) > 10
    found = [
        f"{source.name}: {what}"
        for source in sources
        for pattern, what in RUNS_WHAT_IT_READS.items()
        if re.search(pattern, source.read_text())
    ]
    assert found == []
    loads = [m for source in sources for m in re.findall(r"np\.load\([^)]*\)", source.read_text())]
    assert loads and all("allow_pickle=False" in call for call in loads), loads
    torch_loads = [m for source in sources for m in re.findall(r"torch\.load\([^\n]*", source.read_text())]
    assert torch_loads and all("weights_only=True" in call for call in torch_loads), torch_loads
