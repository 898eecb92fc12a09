"""Shared helpers: polling with a deadline, runs under tmp_path whose workers never outlive a test, real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nnobs.reading.history import Answer
from nnobs.protocol.records import read_all
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, worker_pid
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig

REPO = Path(__file__).resolve().parents[1]
SEED_RUN = Path(__file__).parent / "fixtures/seed-notebook-run.jsons"  # written by the original notebook
FOREVER = 10**9  # a target no test reaches: the worker trains until told otherwise
SUMMARY_LINES = pytest.StashKey[list[str]]()  # lines tests ask to show at the end of the session


def say_at_the_end(config: pytest.Config, line: str) -> None:
    """Show line in pytest's closing summary, where captured output does not hide it."""
    config.stash.setdefault(SUMMARY_LINES, []).append(line)



# The slow families, each a marker: `pytest -m "not slow"` answers in about a minute; the README's test command runs all.
SLOW_FAMILIES = {
    "browser": ("test_browser.py", "test_lab_browser.py", "test_views_browser.py", "test_sdk_page.py"),
    "slurm": ("test_slurm.py",),
    "faults": ("test_faults.py", "test_bad_input.py"),
    "disk": ("test_disk.py",),
    "large": ("test_large_nets.py",),
}


def mark_slow_families(items: list[pytest.Item]) -> None:
    for item in items:
        for family, files in SLOW_FAMILIES.items():
            if item.path.name in files:
                item.add_marker(family)
                item.add_marker("slow")

def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    for line in config.stash.get(SUMMARY_LINES, []):
        terminalreporter.write_line(line)


# -- running in parallel (pytest -n 2 --dist loadgroup) -------------------------------------------

# Fixtures naming one thing of this machine that tests must not use at once: the group their tests run in, one test
# at a time, as in a serial run. Every test on the one Slurm cluster: no other test's burst of jobs meets
# `.ci/slurm-up`'s look at the daemons or a test's wait for a job to start. Every test driving Chromium: two pages, two
# Streamlit servers and their workers at once on two cores left a sidebar a click or a redraw behind its step's wait.
ONE_AT_A_TIME = {"slurm": "slurm", "browser": "browser"}


FAILED = pytest.StashKey[bool]()  # on a test's item: its call failed, so its fixtures say what they saw


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test that requested a fixture failed: asked at the fixture's teardown."""
    return request.node.stash.get(FAILED, False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist's --dist loadgroup runs in one worker")


def _group_names(item: pytest.Item) -> list[str]:
    return sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """Tests that share a module- or class-scoped fixture run in one worker, in file order: the fixture is made once,
    as in a serial run, and tests that take a run through its life in steps (test_slurm's `life`) see every step."""
    mark_slow_families(items)
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        fixtures = getattr(item, "_fixtureinfo", None)
        closure = fixtures.names_closure if fixtures else ()
        if alone := next((ONE_AT_A_TIME[name] for name in closure if name in ONE_AT_A_TIME), None):
            item.add_marker(pytest.mark.xdist_group(alone))
            continue
        for name in closure:
            definitions = fixtures.name2fixturedefs.get(name) or ()
            if any(d.scope in ("module", "class") for d in definitions):
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
                break
    yield
    # An xdist worker under --dist loadgroup names each grouped test "<node id>@<group>", which is what the
    # controller groups by. pytest-xdist 3.8 sets Item._nodeid for that, which pytest 9.2 no longer reads (its node
    # ids are Item._id): without this the groups are silently ignored and a group's tests spread over the workers.
    if getattr(config.option, "loadgroup", False):
        from _pytest.nodeid import coerce_node_id

        for item in items:
            names = _group_names(item)
            if names and not item.nodeid.endswith(suffix := "@" + "_".join(names)):
                item._id = coerce_node_id(item.nodeid + suffix)
                assert item.nodeid.endswith(suffix), item.nodeid


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand the lines for the closing summary to the controller, which prints them."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["summary_lines"] = session.config.stash.get(SUMMARY_LINES, [])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    for line in getattr(node, "workeroutput", {}).get("summary_lines", []):
        say_at_the_end(node.config, line)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "the condition") -> Any:
    """Poll predicate every 20 ms until it returns something truthy, and return that; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """True when pid no longer runs: no such process, or only a zombie left to reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone between the two looks: reading its stat says so (ESRCH)
        return True


def python(code: str, *args: str) -> subprocess.Popen:
    """A real `python -c code args...` process that imports this checkout of nnobs, with pipes to talk to it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_together(processes: list[subprocess.Popen], timeout: float = 60.0) -> list[str]:
    """Wait until every process has said "ready", release them all at once, and return their remaining stdout.

    The processes must print "ready" and then block on a line from stdin before doing their work.
    """
    for proc in processes:
        line = proc.stdout.readline().strip()
        assert line == "ready", f"process {proc.pid} said {line!r} instead of ready: {proc.stderr.read()}"
    for proc in processes:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = []
    for proc in processes:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"process {proc.pid} failed:\n{err}"
        outputs.append(out)
    return outputs


def records_with(run: RunDir, topic: str) -> list[dict]:
    """The run file's records that carry topic, in file order."""
    return [r for r in read_all(run.run_file) if topic in r]


def events(run: RunDir, kind: str) -> list[dict]:
    """The run file's lifecycle records of one kind ("started", "shutdown", ...)."""
    return [r for r in records_with(run, "event") if r["event"][1] == kind]


def answered(run: RunDir, command: dict) -> Answer:
    """Wait for the worker's Answer to command and return it."""
    return wait_for(
        lambda: read_history(run).answers.get(command["id"]),
        what=f"an answer to {command['cmd']} {command['value']!r}",
    )


def acks_of(run: RunDir, command: dict) -> list[dict]:
    """The ack records answering command: one, once it is answered."""
    return [r for r in records_with(run, "ack") if r["ack"][1].get("id") == command["id"]]


def batch_passes(run: RunDir, batch: int, what: str = "", timeout: float = 30.0) -> int:
    """Wait until the run file shows training beyond batch; return the batch seen."""
    return wait_for(
        lambda: (b := read_history(run).batch) > batch and b,
        timeout=timeout, what=what or f"{run.name} to train beyond batch {batch}",
    )


def wait_started(run: RunDir, count: int = 1, timeout: float = 30.0) -> dict:
    """Wait for the count-th "started" record and return it."""
    wait_for(lambda: len(events(run, "started")) >= count, timeout=timeout,
             what=f"{run.name} to record start number {count}")
    return events(run, "started")[count - 1]


def settled_pid(run: RunDir) -> list[int | None] | None:
    """[pid] or [None] for no worker; None while a worker holds the lock but has not written its pid (-1)."""
    pid = worker_pid(run)
    return None if pid == -1 else [pid]


def kill_worker(run: RunDir) -> None:
    """kill -9 the run's worker, if any, and wait until the kernel has dropped its lock."""
    pid = wait_for(lambda: settled_pid(run), what=f"{run.name}'s worker to write its pid")[0]
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_for(lambda: worker_pid(run) is None, what=f"{run.name}'s worker {pid} to die after kill -9")


@pytest.fixture(autouse=True)
def open_to_everyone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages in tests steer without signing in, in the explicit open mode; the credential's own tests set theirs."""
    monkeypatch.setenv("NNOBS_OPERATOR_PASSWORD", "none")


@pytest.fixture
def runs_root(tmp_path: Path):
    """A runs root under tmp_path; at teardown every worker of every run in it is killed."""
    root = tmp_path / "runs"
    root.mkdir()
    yield root
    for lock in root.glob("*/worker.lock"):
        kill_worker(RunDir(lock.parent))


@pytest.fixture
def new_run(runs_root: Path) -> Callable[..., RunDir]:
    """new_run(name, **RunConfig fields): a created run under runs_root, with a small target unless told."""

    def make(name: str = "run", **config: Any) -> RunDir:
        run = RunDir.named(name, root=runs_root)
        create_run(run, RunConfig(**{"target": 1000, **config}))
        return run

    return make


@pytest.fixture(scope="session")
def seed_records() -> list[dict]:
    """The seed notebook's run file, one dict per line."""
    return [json.loads(line) for line in SEED_RUN.read_text().splitlines() if line.strip()]


def seed_sv_at(seed_records: list[dict], batch: int) -> list[float]:
    """The seed notebook's state vector reported at batch."""
    return next(r["sv"][1] for r in seed_records if "sv" in r and r["sv"][0] == batch)
