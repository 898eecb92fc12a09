"""A shared runs root and shared folders, as an adversary would use them: nothing planted there runs as the starter;
a missing optional part is said plainly before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO
from nnobs.launching.lifecycle import stop_worker
from nnobs.protocol.jobs import LauncherSettings, record_launcher
from nnobs.protocol.rundir import RunDir

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
            assert (status["batch"], status["loss"], status["skipped_lines"]) == (2, 0.25, 2)
        if verb[0] == "tail":
            assert '"loss":[2,0.25]' in done.stdout.replace(" ", "")
