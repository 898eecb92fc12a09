"""Take the README's screenshots: each state of a run, at 1280x800, in headless Chromium.

    .venv/bin/python docs/screenshots.py        (needs Debian's chromium at /usr/bin/chromium)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, worker_pid
from nnobs.protocol.control import queue_command
from nnobs.reading.watcher import read_history  # noqa: E402
from nnobs.training.builtin.tasks import RunConfig  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def badge(page, text: str) -> None:
    expect(page.get_by_text(text, exact=True).first).to_be_visible(timeout=60_000)


def serve(root: Path, port: int, **env: str) -> subprocess.Popen:
    """`streamlit run app.py` on port over root, with env added."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=REPO, env={**os.environ, "NNOBS_RUNS": str(root), "NNOBS_OPERATOR_PASSWORD": "none", **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def ruin_and_rewind(page, port: int, run: RunDir) -> None:
    """XOR learnt, then eta 50 saturates its tanh units (NOT LEARNING); a rewind to before it brings it back."""
    page.goto(f"http://127.0.0.1:{port}/?run={run.name}", timeout=60_000)
    badge(page, "TRAINING")
    page.wait_for_timeout(5000)
    ruin = queue_command(run, "eta", 50, by="cli")
    badge(page, "NOT LEARNING")
    page.wait_for_timeout(3000)
    page.screenshot(path=REPO / "docs/not-learning.png")
    ruined_at = next(a for a in read_history(run).answers.items() if a[0] == ruin["id"])[1].batch
    queue_command(run, "rewind", ruined_at - 1, by="cli")
    expect(page.get_by_text("Generation 2", exact=False).first).to_be_visible(timeout=60_000)
    page.wait_for_timeout(4000)
    page.screenshot(path=REPO / "docs/rewound.png")
    queue_command(run, "shutdown", by="cli")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="nnobs-shots-"))
    port, shared_port = free_port(), free_port()
    create_run(RunDir.named("default", root), RunConfig(target=3_000_000))
    create_run(RunDir.named("diverging", root), RunConfig(activation="identity", eta=0.05, target=10**9))
    create_run(RunDir.named("ruined", root), RunConfig(target=10**9))
    server = serve(root, port)
    shared = serve(root, shared_port, NNOBS_OPERATOR_PASSWORD="screenshots only")  # the same runs, read-only
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            badge(page, "TRAINING")
            page.wait_for_timeout(6000)  # let the charts fill: a picture, not a test
            page.screenshot(path=REPO / "docs/training.png")
            run = RunDir.named("default", root)
            queue_command(run, "target", 0, by="cli")
            badge(page, "IDLE")
            page.screenshot(path=REPO / "docs/idle.png")
            queue_command(run, "shutdown", by="cli")
            badge(page, "STOPPED")
            commands = page.get_by_test_id("stExpander").filter(has_text="Commands and starts").locator("summary")
            commands.click()  # who stopped it, in words
            expect(page.get_by_text("Shut down from the command line")).to_be_visible()
            page.screenshot(path=REPO / "docs/stopped.png")
            commands.click()
            page.get_by_role("button", name="Start", exact=True).click()
            badge(page, "IDLE")
            os.kill(worker_pid(run), signal.SIGKILL)
            badge(page, "CRASHED")
            page.screenshot(path=REPO / "docs/crashed.png")
            page.goto(f"http://127.0.0.1:{port}/?run=diverging", timeout=60_000)
            badge(page, "TRAINING")
            page.wait_for_timeout(4000)
            queue_command(RunDir.named("diverging", root), "eta", 3.0, by="cli")  # far too high
            badge(page, "DIVERGED")
            page.wait_for_timeout(2000)
            page.screenshot(path=REPO / "docs/diverged.png")
            queue_command(RunDir.named("diverging", root), "shutdown", by="cli")
            ruin_and_rewind(page, port, RunDir.named("ruined", root))
            start_worker(run, by="cli")
            queue_command(run, "target", 3_000_000, by="cli")
            page.goto(f"http://127.0.0.1:{shared_port}/", timeout=60_000)
            badge(page, "TRAINING")
            page.wait_for_timeout(4000)
            page.screenshot(path=REPO / "docs/viewer.png")
            browser.close()
    finally:
        for process in (server, shared):
            process.terminate()
            process.wait(timeout=30)
        for lock in root.glob("*/worker.lock"):
            pid = worker_pid(RunDir(lock.parent))
            if pid and pid > 0:
                os.kill(pid, signal.SIGKILL)


def family_tree() -> None:
    """A population of 8 on the spiral task, trained by its controller, and its family tree on the compare page."""
    root = Path(tempfile.mkdtemp(prefix="nnobs-shots-"))
    subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), "sweep", "spiral", "--pbt", "--task",
                    "spiral", "--population", "8", "--eta", "0.003..3", "--target", "30000", "--interval", "3000",
                    "--seed", "1", "--wait"], check=True, cwd=REPO, capture_output=True)
    port = free_port()
    server = serve(root, port)
    try:
        while socket.socket().connect_ex(("127.0.0.1", port)):  # until the server listens
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            members = "&".join(f"runs=spiral-m{i}" for i in range(8))
            page.goto(f"http://127.0.0.1:{port}/compare?{members}", timeout=60_000)
            heading = page.get_by_role("heading", name="Population spiral")
            expect(heading).to_be_visible(timeout=60_000)
            page.wait_for_timeout(4000)  # the charts drawn: a picture, not a test
            top = heading.bounding_box()["y"] - 10  # the population's section: its two charts and the replay
            page.screenshot(path=REPO / "docs/family-tree.png", clip={"x": 0, "y": top, "width": 1280, "height": 640})
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    family_tree() if sys.argv[1:] == ["family-tree"] else main()
