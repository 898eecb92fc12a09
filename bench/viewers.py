"""Ten browser sessions watching one training run, against none: the worker's batches/s and the server's CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from nnobs.views.overview import read_row
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.training.builtin.tasks import RunConfig

REPO = Path(__file__).parent.parent
VIEWERS = 10
WINDOW_S = 20.0  # each measurement
ROUNDS = 2  # none, ten, none, ten: alternating, so a change in the machine's load falls on both
BROWSER_CORE = "1"  # the browsers are held to one core, as a team's browsers are on machines of their own

# Run under `taskset`, so Chromium and every process it starts stay on BROWSER_CORE. It opens the pages, waits
# until each shows the run's batch count, then keeps them open until its stdin closes.
BROWSERS = """
import sys
from playwright.sync_api import sync_playwright
url, count = sys.argv[1], int(sys.argv[2])
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
    pages = []
    for _ in range(count):  # one after the other: ten first loads at once on one core take minutes
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        page.goto(url, wait_until="commit", timeout=300_000)
        page.get_by_text("Batches/s").first.wait_for(timeout=300_000)
        pages.append(page)
    print("open", flush=True)
    sys.stdin.read()
    browser.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _window(run: RunDir, server: int) -> tuple[float, float]:
    """Over WINDOW_S: the worker's batches a second and the server's cores used."""
    batch, cpu, start = read_row(run).batch, _cpu_s(server), time.monotonic()
    time.sleep(WINDOW_S)  # the measurement's span: training and serving go on meanwhile
    took = time.monotonic() - start
    return (read_row(run).batch - batch) / took, (_cpu_s(server) - cpu) / took


def figures(say) -> None:
    with tempfile.TemporaryDirectory() as root:
        run = RunDir.named("default", root)
        create_run(run, RunConfig(target=10**12))
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.port", str(port), "--server.address", "127.0.0.1"],
            cwd=REPO, env={**os.environ, "NNOBS_RUNS": root, "NNOBS_OPERATOR_PASSWORD": "none"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_healthy(f"http://127.0.0.1:{port}")
            start_worker(run)
            unwatched, watched = [], []
            for _ in range(ROUNDS):
                unwatched.append(_window(run, server.pid))
                browsers = subprocess.Popen(["taskset", "-c", BROWSER_CORE, sys.executable, "-c", BROWSERS,
                                             f"http://127.0.0.1:{port}/?run=default", str(VIEWERS)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
                try:
                    if browsers.stdout.readline().strip() != "open":
                        raise RuntimeError("the browsers did not open the page")
                    watched.append(_window(run, server.pid))
                finally:
                    browsers.stdin.close()
                    browsers.wait(timeout=60)
        finally:
            stop_worker(run)
            server.terminate()
            server.wait(timeout=30)
    rate_none = max(r for r, _ in unwatched)
    rate_ten = max(r for r, _ in watched)
    cpu_none = min(c for _, c in unwatched)
    cpu_ten = min(c for _, c in watched)
    ratio = rate_ten / rate_none
    say("worker with ten viewers / with none", ratio, ">= 0.9", ratio >= 0.9,
        f"{rate_ten:,.0f} vs {rate_none:,.0f} batches/s, browsers held to core {BROWSER_CORE}")
    say("server CPU with ten viewers, cores", cpu_ten - cpu_none, "<= 0.2", cpu_ten - cpu_none <= 0.2,
        f"{cpu_ten:.2f} cores with ten, {cpu_none:.2f} with none, at the default 1 s refresh")


def _wait_healthy(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"streamlit did not answer at {url}")


if __name__ == "__main__":
    figures(lambda *row: print(row))
