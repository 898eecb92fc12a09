"""Alerts that reach you: real workers diverging, killed, stopped and crossing a threshold, a real alert watcher
started by the CLI, and a loopback HTTP listener standing for Slack or any webhook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, events, process_gone, wait_for
from nnobs.launching.lifecycle import run_status, start_worker
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.control import send_command
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.views.alert_watcher import folder_of, watcher_pid

FOREVER = 10**9


class Listener:
    """A webhook on 127.0.0.1: every POST's JSON body, with when it came."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, dict]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                listener.posts.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def about(self, run: str, kind: str) -> list[tuple[float, dict]]:
        return [(t, body) for t, body in self.posts if body.get("run") == run and body.get("kind") == kind]


@pytest.fixture
def listener():
    found = Listener()
    yield found
    found.server.shutdown()


@pytest.fixture
def watching(runs_root):
    yield
    subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "alert", "--off"], timeout=60,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def nnobs_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def label_of(run: RunDir) -> str:
    return run_status(run, read_history(run)).label


def one_post_within_10_s(listener: Listener, run: RunDir, kind: str) -> dict:
    """The state is shown now: its alert comes within 10 s, once."""
    shown = time.monotonic()
    wait_for(lambda: listener.about(run.name, kind), timeout=10, what=f"the {kind} alert of {run.name}")
    (came, body), = listener.about(run.name, kind)
    print(f"test_alerts: {run.name} {kind}: POSTed {came - shown:.1f} s after the state showed")
    return body


def test_each_crash_stall_divergence_threshold_and_stop_in_learning_is_posted_once_and_a_restarted_watcher_repeats_none(
    runs_root, new_run, listener, watching
):
    diverging = new_run("diverging", activation="identity", eta=0.05, target=FOREVER)  # linear: a large eta blows it up
    killed, stuck, converging = (new_run(name, target=FOREVER) for name in ("killed", "stuck", "converging"))
    for run in (diverging, killed, stuck):
        start_worker(run)
    set_up = nnobs_cli(runs_root, "alert", "--webhook", listener.url, "--threshold", "loss<0.01")
    assert set_up.returncode == 0 and "loss<0.01" in set_up.stdout, set_up.stderr
    wait_for(lambda: (folder_of(runs_root) / "seen.json").exists(), what="the watcher's first look")
    assert listener.posts == [], "what the runs were when the watcher started is no news"

    kill_pid = run_status(killed, read_history(killed)).pid
    os.kill(kill_pid, signal.SIGKILL)
    wait_for(lambda: label_of(killed) == "crashed", what="the killed run to read crashed")
    body = one_post_within_10_s(listener, killed, "crashed")
    assert body["url"].endswith("/?run=killed") and "killed is crashed at batch" in body["text"] and body["id"]

    wait_for(lambda: (c := load_checkpoint(diverging.checkpoint)) and c.batch > 0, what="a checkpoint after batch 0")
    send_command(diverging.control_file, "eta", 5)
    wait_for(lambda: events(diverging, "diverged") and label_of(diverging) == "diverged", what="the divergence")
    one_post_within_10_s(listener, diverging, "diverged")

    start_worker(converging)  # XOR: its mean loss falls through 0.01 within seconds
    wait_for(lambda: (s := run_status(converging, read_history(converging))).loss is not None and s.loss < 0.01,
             timeout=120, what="XOR's loss under 0.01")
    body = one_post_within_10_s(listener, converging, "threshold")
    assert "loss<0.01" in body["text"]
    wait_for(lambda: (h := read_history(converging)).batch > 200_000 and h.loss is not None and h.loss < 1e-20,
             timeout=120, what="XOR to converge")
    send_command(converging.control_file, "eta", 50)  # saturates the net: its loss stops moving far above its best
    wait_for(lambda: label_of(converging) == "not learning", timeout=60, what="the ruined run to read not learning")
    one_post_within_10_s(listener, converging, "not learning")

    stuck_pid = run_status(stuck, read_history(stuck)).pid
    os.kill(stuck_pid, signal.SIGSTOP)  # alive and holding its lock, but silent
    try:
        wait_for(lambda: label_of(stuck) == "stalled", timeout=30, what="the stopped worker to read stalled")
        one_post_within_10_s(listener, stuck, "stalled")
    finally:
        os.kill(stuck_pid, signal.SIGCONT)

    # Killed and started again, the watcher repeats nothing, and tells what happened while it was gone. It is killed
    # once its outbox says the last alert was sent: killed between a POST's arrival and its answer, a watcher sends
    # that alert again when it starts, with the same id (docs/alerts.md), as nothing tells it the POST arrived.
    folder = folder_of(runs_root)
    wait_for(lambda: '"sent": "stuck:stalled:' in (folder / "outbox.jsonl").read_text(), what="the stall sent")
    old = watcher_pid(folder)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: process_gone(old) and watcher_pid(folder) is None, what="the watcher to be gone")
    later = new_run("later", target=FOREVER)
    later_pid = start_worker(later)
    wait_for(lambda: label_of(later) == "training", what="the new run to train")
    assert nnobs_cli(runs_root, "alert", "--start").returncode == 0
    looked = (folder / "seen.json").stat().st_mtime_ns
    wait_for(lambda: (folder / "seen.json").stat().st_mtime_ns != looked, what="the restarted watcher's first look")
    os.kill(later_pid, signal.SIGKILL)
    wait_for(lambda: label_of(later) == "crashed", what="the later run to read crashed")
    one_post_within_10_s(listener, later, "crashed")
    for _ in range(2):  # two more looks of the watcher: time enough to repeat anything it would repeat
        looked = (folder / "seen.json").stat().st_mtime_ns
        wait_for(lambda: (folder / "seen.json").stat().st_mtime_ns != looked, what="another look")
    sent = Counter((body["run"], body["kind"]) for _, body in listener.posts)
    assert all(count == 1 for count in sent.values()), f"each alert once: {sent}"
    assert {("killed", "crashed"), ("diverging", "diverged"), ("converging", "threshold"), ("stuck", "stalled"),
            ("converging", "not learning"), ("later", "crashed")} <= set(sent)
    said = nnobs_cli(runs_root, "alert").stdout
    assert f"rule 1: POST to {listener.url}" in said and "0 waiting" in said


def test_a_scripts_alert_and_a_slack_webhook(runs_root, listener, watching, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys, nnobs\n"
        "with nnobs.Run('scripted', target=10**9) as run:\n"
        "    for batch in run.batches():\n"
        "        run.log(1.0 / batch)\n"
        "        if batch == 2000:\n"
        "            run.alert('disk', 'almost full', level='WARN')\n"
    )
    assert nnobs_cli(runs_root, "alert", "--webhook", listener.url, "--slack").returncode == 0
    started = nnobs_cli(runs_root, "run", "scripted", "--", sys.executable, str(script))
    assert started.returncode == 0, started.stderr
    wait_for(lambda: listener.posts, timeout=30, what="the script's alert")
    (_, body), = listener.posts
    assert set(body) == {"text"}, "Slack's incoming-webhook JSON"
    assert "WARN: disk: almost full" in body["text"] and "?run=scripted|open the run>" in body["text"]
    assert nnobs_cli(runs_root, "stop", "scripted").returncode == 0


def test_a_loss_spike_far_off_its_smoothed_line_is_posted_once_and_noise_is_not(runs_root, listener, watching, tmp_path):
    script = tmp_path / "train.py"
    # A loss with minibatch noise (a factor of 3 either way, batch to batch) around a slowly falling line, and between
    # batches 6,000 and 9,000 a spike of 50 times the line: three seconds at this pace, over a look of the watcher.
    script.write_text(
        "import random, nnobs\n"
        "draw = random.Random(1)\n"
        "with nnobs.Run('spiky', target=10**9, pace=1000) as run:\n"
        "    for batch in run.batches():\n"
        "        line = 0.1 / (1 + batch / 10000) * (50 if 6000 <= batch < 9000 else 1)\n"
        "        run.log(line * 3 ** draw.uniform(-1, 1))\n"
    )
    assert nnobs_cli(runs_root, "alert", "--webhook", listener.url, "--when", "spike").returncode == 0
    started = nnobs_cli(runs_root, "run", "spiky", "--", sys.executable, str(script))
    assert started.returncode == 0, started.stderr
    run = RunDir(runs_root / "spiky")
    wait_for(lambda: read_history(run).batch >= 6000, timeout=60, what="the spike's start")
    assert listener.posts == [], "minibatch noise is no spike"
    wait_for(lambda: (h := read_history(run)).loss is not None and h.loss > 1, timeout=30, what="the spike to show")
    one_post_within_10_s(listener, run, "spike")
    wait_for(lambda: read_history(run).batch >= 14000, timeout=60, what="the run well past the spike")
    (_, body), = listener.posts
    assert "spiky: the loss spiked to" in body["text"]
    assert nnobs_cli(runs_root, "stop", "spiky").returncode == 0


def test_bad_alert_rules_are_refused_and_nothing_is_set(runs_root):
    assert "--webhook URL or --command CMD" in nnobs_cli(runs_root, "alert", "--slack").stderr
    assert "METRIC>VALUE" in nnobs_cli(runs_root, "alert", "--webhook", "http://x/", "--threshold", "loss>>5").stderr
    assert "no alert for 'crashd'" in nnobs_cli(runs_root, "alert", "--webhook", "http://x/", "--when", "crashd").stderr
    assert "http:// or https://" in nnobs_cli(runs_root, "alert", "--webhook", "x.com").stderr
    said = nnobs_cli(runs_root, "alert")
    assert "not running" in said.stdout and "no rules" in said.stdout
