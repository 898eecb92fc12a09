"""A shared runs root and shared folders, as an adversary would use them: nothing planted there runs as the starter;
a missing optional part is said plainly before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, wait_for
from nnobs.launching.lifecycle import stop_worker
from nnobs.launching.spawn import recorded_command
from nnobs.protocol.checkpoint import load_checkpoint, load_checkpoint_meta
from nnobs.protocol.control import CONTROL_MOST_BYTES
from nnobs.protocol.errors import NnobsError, UnsafeFile
from nnobs.protocol.files import read_bytes
from nnobs.protocol.jobs import LauncherSettings, record_launcher
from nnobs.protocol.rundir import RunDir, local_pid, log_tail
from nnobs.reading.shared_readers import curves_for, watcher_for
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import load_config
from nnobs.views.overview import read_row, sparkline

NNOBS = Path(sys.executable).parent / "nnobs"  # the console script, as a user types `nnobs`
# A teammate's package, planted in a shared folder under the names nnobs runs as its own processes.
PLANTED = {
    "nnobs/__init__.py": "",
    "nnobs/launching/__init__.py": "",
    "nnobs/training/__init__.py": "",
    "nnobs/launching/spawn.py": "open({marker!r}, 'w').write('spawn'); raise SystemExit(1)",
    "nnobs/training/worker.py": "open({marker!r}, 'w').write('worker'); raise SystemExit(1)",
}
# The CLI with submitit hidden, as on a machine without the slurm extra.
WITHOUT_SUBMITIT = "import sys; sys.modules['submitit'] = None; from nnobs.cli.main import main; sys.exit(main())"


def test_a_package_planted_in_the_current_directory_never_runs_when_a_run_is_started_there(tmp_path: Path):
    shared, marker, root = tmp_path / "shared", tmp_path / "planted-code-ran", tmp_path / "runs"
    for name, code in PLANTED.items():
        (shared / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / name).write_text(code.format(marker=str(marker)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = subprocess.run([str(NNOBS), "--runs", str(root), "start", "demo"], cwd=shared, env=env,
                             capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert not marker.exists(), f"the planted {marker.read_text()} ran as the starter"
    finally:
        stop_worker(RunDir(root / "demo"))


def test_a_run_on_slurm_without_submitit_is_refused_with_the_extra_to_install_and_nothing_is_written(tmp_path: Path):
    root = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-c", WITHOUT_SUBMITIT, "--runs", str(root), "new", "s1", "--task", "spiral",
                           "--on", "slurm"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode != 0
    assert "pip install 'nnobs[slurm]'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (root / "s1").exists()


def test_a_run_recorded_for_slurm_still_has_a_status_that_says_submitit_is_missing(tmp_path: Path):
    root = tmp_path / "runs"
    run = RunDir(root / "s1")
    run.path.mkdir(parents=True)
    (run.path / "config.json").write_text(json.dumps({"task": "spiral"}))
    record_launcher(run.launcher_file, LauncherSettings(kind="slurm"))
    done = subprocess.run([sys.executable, "-c", WITHOUT_SUBMITIT, "--runs", str(root), "status", "s1", "--json"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "Traceback" not in done.stderr, done.stderr
    status = json.loads(done.stdout)
    assert status["launcher"] == "slurm"
    assert "pip install 'nnobs[slurm]'" in status["error"], textwrap.shorten(done.stdout, 300)


def test_nnobs_torch_without_pytorch_says_which_extra_to_install():
    code = ("import sys; sys.modules['torch'] = None\nimport nnobs\ntry:\n    import nnobs.torch\n"
            "except nnobs.MissingExtra as err:\n    print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "pip install 'nnobs[torch]'" in done.stdout


def test_a_run_file_line_nested_100000_deep_is_a_skipped_line_for_status_tail_and_stop(tmp_path: Path):
    root = tmp_path / "runs"
    run = RunDir(root / "nested")
    run.path.mkdir(parents=True)
    deep = b"[" * 100_000 + b"]" * 100_000
    run.run_file.write_bytes(b'{"loss":[1,0.5],"t":1.0,"gen":1}\n' + b'{"x":' + deep + b"}\n" + deep + b"\n"
                             + b'{"loss":[2,0.25],"t":2.0,"gen":1}\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for verb in (["status", "nested", "--json"], ["tail", "nested", "-n", "5"], ["stop", "nested"]):
        done = subprocess.run([str(NNOBS), "--runs", str(root), *verb], capture_output=True, text=True, timeout=120,
                              env=env)
        assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr, (verb, done.stderr[-2000:])
        assert done.returncode == 0, (verb, done.stderr[-2000:])
        if verb[0] == "status":
            status = json.loads(done.stdout)
            assert (status["batch"], status["batch_loss"], status["skipped_lines"]) == (2, 0.25, 2)
        if verb[0] == "tail":
            assert '"loss":[2,0.25]' in done.stdout.replace(" ", "")


# -- a teammate's links and files planted in a shared runs root ---------------------------------------------------

SECRET = b'{"loss":[777,0.123],"t":1.0,"gen":1}\nthe secret itself\n'  # reads as a record, were it followed


def nnobs(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(NNOBS), "--runs", str(root), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def planted_run(root: Path, name: str, secret: Path) -> RunDir:
    """A stopped run of the built-in worker, made and trained a little by nnobs itself."""
    made = nnobs(root, "new", name, "--task", "xor", "--target", "200")
    assert made.returncode == 0, made.stderr
    run = RunDir(root / name)
    assert nnobs(root, "stop", name).returncode == 0
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return run


def test_a_run_file_linked_to_a_secret_is_named_and_never_read_by_status_tail_the_reader_or_a_download(tmp_path):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = RunDir(root / "leak")
    run.path.mkdir(parents=True)
    secret.write_bytes(SECRET)
    run.run_file.symlink_to(secret)
    status = nnobs(root, "status", "leak")
    assert "run.jsonl is a symbolic link" in status.stdout, status.stdout + status.stderr
    assert "777" not in status.stdout and "secret" not in status.stdout.replace(str(secret), "")
    tail = nnobs(root, "tail", "leak")
    assert "secret itself" not in tail.stdout + tail.stderr and "777" not in tail.stdout
    assert "symbolic link" in tail.stderr, tail.stderr
    assert read_history(run).batch == 0
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_bytes(run.run_file)  # what the page's download button serves


def test_the_pages_readers_never_read_a_run_file_through_a_link(tmp_path: Path):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = RunDir(root / "leak")
    run.path.mkdir(parents=True)
    secret.write_bytes(SECRET)
    run.run_file.symlink_to(secret)
    watcher = watcher_for(run.run_file)  # what the run page draws from
    with watcher.lock:
        assert watcher.refresh().batch == 0
    assert curves_for(run.run_file).batch == 0  # the compare page's
    row = read_row(run)  # the overview's
    assert row.batch == 0 and row.loss is None
    assert sparkline(run.run_file) == []


def test_a_crashed_runs_log_linked_to_a_secret_shows_the_link_and_not_the_secret(tmp_path: Path):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = planted_run(root, "crashed", secret)
    run.worker_log.unlink()
    run.worker_log.symlink_to(secret)
    assert "secret itself" not in log_tail(run)
    assert "worker.log is a symbolic link" in log_tail(run)


def test_a_linked_run_directory_is_listed_with_the_link_named_and_nothing_is_read_through_it(tmp_path: Path):
    root, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "run.jsonl").write_bytes(SECRET)
    root.mkdir()
    (root / "leak").symlink_to(elsewhere)
    status = nnobs(root, "status", "leak")
    assert "is a symbolic link" in status.stdout and "777" not in status.stdout, status.stdout + status.stderr
    assert read_history(RunDir(root / "leak")).batch == 0


@pytest.mark.parametrize("name", ["worker.log", "worker.lock", "worker.status", "run.jsonl"])
def test_starting_a_run_never_writes_through_a_link_planted_in_its_directory(tmp_path: Path, name: str):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = planted_run(root, "demo", secret)
    (run.path / name).unlink()
    (run.path / name).symlink_to(secret)
    started = nnobs(root, "start", "demo")
    assert started.returncode != 0 and f"{name} is a symbolic link" in started.stderr, started.stderr
    assert "Traceback" not in started.stderr
    # The processes nnobs starts check again on the descriptors they open: a link swapped in after the check above.
    for module in ["nnobs.launching.spawn"] if name == "worker.log" else ["nnobs.training.worker"]:
        subprocess.run([sys.executable, "-P", "-m", module, str(run.path), "cli"], capture_output=True, timeout=120,
                       cwd=run.path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert secret.read_bytes() == SECRET
    assert local_pid(run) is None


def test_a_launch_file_of_another_user_or_flipped_by_one_between_a_check_and_a_read_never_runs(
    request: pytest.FixtureRequest,
):
    if os.getuid() != 0:
        pytest.skip("playing a second user needs root to drop to it")
    nobody = 65534
    shared = Path(tempfile.mkdtemp(prefix="nnobs-shared-"))  # not under tmp_path, which only its owner may enter
    shared.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    run_dir = shared / "runs" / "scripted"
    run_dir.mkdir(parents=True)
    run_dir.chmod(0o777)  # a group-writable shared runs root, at its widest
    (shared / "runs").chmod(0o755)
    own = shared / "own-launch.json"
    own.write_text(json.dumps({"command": ["python", "mine.py"], "cwd": str(shared)}))
    own.chmod(0o600)
    theirs = run_dir / "theirs.json"
    theirs.write_text(json.dumps({"command": ["python", "planted.py"], "cwd": str(shared)}))
    os.chown(theirs, nobody, nobody)
    launch = run_dir / "launch.json"
    # The teammate, as another uid, flips launch.json between a link to the owner's file and their own file.
    flipper = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, sys
            os.setgid({nobody}); os.setuid({nobody})
            link, theirs, own = {str(launch)!r}, {str(theirs)!r}, {str(own)!r}
            tmp = link + ".flip"
            while True:
                try:
                    os.symlink(own, tmp); os.replace(tmp, link)
                    os.link(theirs, tmp); os.replace(tmp, link)
                except FileExistsError:
                    os.unlink(tmp)
        """)])
    try:
        wait_for(lambda: os.path.lexists(launch), what="the teammate's first flip")
        outcomes = set()
        for _ in range(3000):
            try:
                command, _ = recorded_command(launch)
                outcomes.add(command[-1])
            except SystemExit as refused:
                outcomes.add("refused" if "not yours alone" in str(refused) or "symbolic link" in str(refused)
                             else str(refused))
    finally:
        flipper.kill()
        flipper.wait()
    assert outcomes <= {"refused"}, outcomes  # the planted command never, and the owner's only through no link


def test_a_checkpoint_declaring_more_numbers_than_the_net_has_is_refused_before_anything_is_loaded(tmp_path: Path):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = planted_run(root, "big", secret)
    fair = nnobs(root, "fork", "big", "big-fair")  # the run's own checkpoint: its net and its sampler's state
    assert fair.returncode == 0, fair.stderr
    assert nnobs(root, "stop", "big-fair").returncode == 0
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (125_000_000,)  # a gigabyte of floats, declared in a file of a few hundred bytes
    with zipfile.ZipFile(run.checkpoint, "w") as archive:
        with archive.open("sv.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(b"\0" * 64)
        with archive.open("meta.npy", "w") as member:
            np.lib.format.write_array(member, np.array(json.dumps({"batch": 5})))
    config = load_config(run.config)
    tracemalloc.start()
    try:
        with pytest.raises(NnobsError, match="declare"):
            load_checkpoint(run.checkpoint, most_state_bytes=config.n_params * 8)
        assert tracemalloc.get_traced_memory()[1] < 50e6
    finally:
        tracemalloc.stop()
    forked = nnobs(root, "fork", "big", "big-2")
    assert forked.returncode != 0 and "declare" in forked.stderr, forked.stderr


def test_a_control_file_beyond_its_bound_is_refused_with_a_message_and_left_as_it_is(tmp_path: Path):
    root, secret = tmp_path / "runs", tmp_path / "secret"
    run = planted_run(root, "flood", secret)
    flood = b'{"next_seq": 1, "commands": [' + b'{"cmd": "eta"},' * (CONTROL_MOST_BYTES // 15) + b"]}"
    run.control_file.write_bytes(flood)
    sent = nnobs(root, "set", "flood", "--eta", "0.1", "--no-wait")
    assert sent.returncode != 0 and "larger than" in sent.stderr and "Traceback" not in sent.stderr, sent.stderr
    assert run.control_file.read_bytes() == flood


def test_a_bare_array_in_front_of_an_archive_is_refused_before_numpy_trusts_its_header(tmp_path: Path):
    run = RunDir(tmp_path / "runs" / "masked")
    run.path.mkdir(parents=True)
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (4_000_000_000,)  # 30 GB of floats, which np.load would allocate for a file that starts so
    with open(run.checkpoint, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        np.savez(f, meta=np.array(json.dumps({"batch": 5})))  # an archive after it: a zip reader finds it at the end
    assert zipfile.is_zipfile(run.checkpoint)
    with pytest.raises(NnobsError, match="single array"):
        load_checkpoint(run.checkpoint)
    assert load_checkpoint_meta(run.checkpoint) is None
