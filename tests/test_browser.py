"""The page in a real browser: a real `streamlit run app.py`, real workers, Debian's Chromium driven by Playwright.

Every test starts its own Streamlit server on a free loopback port, over its own runs root
(`NNOBS_RUNS`), creates the `default` run with a small target before the page first opens it,
and drives the page as a person would. At teardown the browser contexts close, the server is
terminated and waited for, and the `runs_root` fixture kills every worker left. Screenshots of
each state go to test-artifacts/ (git-ignored), at 1280x800.

Needs /usr/bin/chromium (Debian's package; no browser is ever downloaded): without it these
tests are skipped, except under CI (the CI variable set), where they fail.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from conftest import FOREVER, REPO, batch_passes, events, failed, process_gone, wait_for, wait_started
from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.control import read_commands
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker, worker_pid
from nnobs.protocol.control import queue_command
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
ARTIFACTS = REPO / "test-artifacts"
FIRST_LOAD_MS = 60_000  # the first script run imports pandas and altair and starts the worker
STEP_MS = 30_000  # any later change on the page; generous for a loaded 2-core machine

expect.set_options(timeout=STEP_MS)


# -- fixtures: a browser, a server, pages --------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, shared by the tests of this file."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: the browser tests need Debian's chromium package (apt-get install chromium)"
        if "CI" in os.environ:
            pytest.fail(f"{reason}; under CI they must run", pytrace=False)
        pytest.skip(reason)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Servers:
    """`streamlit run app.py` processes on free loopback ports over one runs root.

    Open to everyone unless a test passes its own NNOBS_OPERATOR_PASSWORD: most tests steer without signing in."""

    OPEN_TO_EVERYONE = {"NNOBS_OPERATOR_PASSWORD": "none"}  # nnobs.app.operators.OPEN_WORD: no operator credential

    def __init__(self, runs_root: Path, logs: Path):
        self.runs_root, self.logs = runs_root, logs
        self.processes: dict[str, subprocess.Popen] = {}  # by URL
        self.consoles: dict[str, Path] = {}  # by URL: the file its stdout and stderr go to

    def start(self, **env: str) -> str:
        """Start a server with env added to this one's (open to everyone unless env says otherwise); its URL, once it
        answers.

        A free port may be taken by another process (a test beside this one) before streamlit binds it: streamlit
        then exits saying the port is not available, and the server is started again on another free port."""
        for _ in range(3):
            port = free_port()
            log = self.logs / f"streamlit-{port}.log"
            with open(log, "wb") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
                     "--server.headless", "true", "--browser.gatherUsageStats", "false",
                     "--server.port", str(port), "--server.address", "127.0.0.1"],
                    cwd=REPO, env={**os.environ, "NNOBS_RUNS": str(self.runs_root), **self.OPEN_TO_EVERYONE, **env},
                    stdout=out, stderr=subprocess.STDOUT,
                )
            url = f"http://127.0.0.1:{port}"
            self.processes[url], self.consoles[url] = process, log
            wait_for(lambda: process.poll() is not None or _healthy(url), timeout=60, what=f"streamlit to answer at {url}")
            if process.poll() is None:
                return url
            del self.processes[url]
            if f"Port {port} is not available" not in log.read_text():
                break
        pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")

    def console(self, url: str) -> str:
        """What the server at url has printed so far."""
        return self.consoles[url].read_text(errors="replace")

    def kill(self, url: str) -> None:
        """kill -9 the server at url, as a crash or an OOM killer would, and reap it."""
        process = self.processes.pop(url)
        process.kill()
        process.wait(timeout=30)

    def close(self, failed: bool = False) -> None:
        if failed:  # what the servers logged tells a lost click from a script that failed
            for log in sorted(self.logs.glob("streamlit-*.log")):
                print(f"--- {log.name}, its last 3,000 characters:\n{log.read_text(errors='replace')[-3000:]}")
        for process in self.processes.values():
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def servers(runs_root: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Servers]:
    """Servers over runs_root, all terminated and waited for at teardown (their logs printed if the test failed)."""
    started = Servers(runs_root, tmp_path)
    yield started
    started.close(failed(request))


def close_contexts(contexts: list, request: pytest.FixtureRequest) -> None:
    """Close the test's browser contexts; if it failed, print what each page showed and keep a screenshot of it."""
    for number, context in enumerate(contexts, 1):
        for page in context.pages if failed(request) else ():
            try:
                print(f"--- page {number} at {page.url}\nsidebar: {sidebar(page).inner_text(timeout=2_000)}\n"
                      f"main area: {main_area(page).inner_text(timeout=2_000)[:3000]}")
                screenshot(page, f"failed-{request.node.name}-{number}")
            except PlaywrightError as err:
                print(f"--- page {number}: could not be read ({err})")
        context.close()


@pytest.fixture
def server(servers: Servers) -> str:
    """One server over runs_root; its URL."""
    return servers.start()


@pytest.fixture
def open_url(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Callable[[str], Page]]:
    """open_url(url): a new browser context (a new person) on url, once the page shows a state badge."""
    contexts = []

    def open_(url: str) -> Page:
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        page = context.new_page()
        page.goto(url, timeout=FIRST_LOAD_MS)
        expect(state_badge(page)).to_be_visible(timeout=FIRST_LOAD_MS)
        return page

    yield open_
    close_contexts(contexts, request)


@pytest.fixture
def open_page(open_url, server: str) -> Callable[..., Page]:
    """open_page(path="/"): a new person on the server's page."""
    return lambda path="/": open_url(server + path)


@pytest.fixture
def visit(browser: Browser, server: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Page]]:
    """visit(path, height): a new person on the server's page at path, once its main area has drawn; a tall window
    shows what lies under the loss chart without scrolling (the main area scrolls inside a container of its own)."""
    contexts = []

    def open_(path: str, height: int = VIEWPORT["height"]) -> Page:
        context = browser.new_context(viewport={**VIEWPORT, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.goto(server + path, timeout=FIRST_LOAD_MS)
        expect(main_area(page).locator("h2").first).to_be_visible(timeout=FIRST_LOAD_MS)
        return page

    yield open_
    close_contexts(contexts, request)


def default_run(runs_root: Path, target: int) -> RunDir:
    """The run the page opens without ?run=, created with target so its first worker trains to it."""
    run = RunDir.named("default", runs_root)
    create_run(run, RunConfig(target=target))
    return run


# -- what a person sees --------------------------------------------------------------------------


def main_area(page: Page) -> Locator:
    return page.get_by_test_id("stMain")


def sidebar(page: Page) -> Locator:
    return page.get_by_test_id("stSidebar")


def title(page: Page) -> Locator:
    """The header: "nnobs · <run name> <STATE badge>"."""
    return main_area(page).locator("h2").first


def state_badge(page: Page) -> Locator:
    """The run's state badge in the header, e.g. "TRAINING"."""
    return title(page).locator(".stMarkdownBadge").first


def generation_caption(page: Page) -> Locator:
    """The caption under the header: "Generation N (each start, ...) · worker pid P · <run dir>"."""
    return main_area(page).get_by_test_id("stCaptionContainer").filter(has_text=re.compile(r"^Generation ")).first


def metric(page: Page, label: str) -> Locator:
    """The value of the metric labelled label ("Batch", "Eta", ...), as drawn now: an element Streamlit keeps from
    the page before while it draws the next (marked stale, and faded) is not it."""
    labelled = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    drawn = main_area(page).locator('[data-testid="stElementContainer"]:not([data-stale="true"]) [data-testid="stMetric"]')
    return drawn.filter(has=labelled).get_by_test_id("stMetricValue")


def batch(page: Page) -> int:
    return int(metric(page, "Batch").inner_text().replace(",", ""))


def progress_text(page: Page) -> Locator:
    """The progress bar's text: "B of T target batches (P%)"."""
    return main_area(page).get_by_test_id("stProgress")


def loss_chart(page: Page) -> Locator:
    """The Vega-Lite chart titled "Loss"."""
    return main_area(page).locator(".vega-embed").filter(has=page.locator("[aria-label=\"Title text 'Loss'\"]"))


def commands(page: Page) -> Locator:
    """The expander listing commands and starts."""
    return main_area(page).get_by_test_id("stExpander").filter(has_text="Commands and starts")


def open_commands(page: Page) -> None:
    """Open the commands list, collapsed until asked for."""
    summary = commands(page).locator("summary")
    if commands(page).locator("details").get_attribute("open") is None:
        summary.dispatch_event("click")  # not a click at its place: what is above it may move as the page redraws
    expect(commands(page).locator("li").first).to_be_visible()


def command_line(page: Page, text: str) -> Locator:
    """The line of the commands list that mentions text, e.g. "Target 5,000 batches"."""
    return commands(page).locator("li").filter(has_text=text)


def worker_log_tail(page: Page) -> Locator:
    return main_area(page).get_by_test_id("stCode")


def sidebar_button(page: Page, name: str) -> Locator:
    return sidebar(page).get_by_role("button", name=name, exact=True)


def press(page: Page, name: str) -> None:
    """Press a sidebar button: a click event on the button itself, once it takes one.

    Not a click at the button's place on the screen: the controls above it can move by a field's height in the
    instant the run's values change (see settled_sidebar), and a press would then go down on the button and come
    up elsewhere, which the browser counts as no click.
    """
    settled_sidebar(page)
    button = sidebar_button(page, name)
    expect(button).to_be_enabled()
    button.dispatch_event("click")


def text_field(page: Page, label: str) -> Locator:
    """A sidebar text field. For a moment after the run's value changes there are two (see settled_sidebar)."""
    return sidebar(page).locator(f'input[aria-label="{label}"]')


def settled_sidebar(page: Page) -> None:
    """Wait until no sidebar field is there twice.

    When the run's value changes, its field is drawn anew and the old one lingers beside it for a moment, moving
    every control below it by a field's height: a click then may press the button down and let go elsewhere.
    """
    page.wait_for_function("""() => {
        const labels = [...document.querySelectorAll('[data-testid="stSidebar"] input[aria-label]')]
            .map(field => field.getAttribute('aria-label'));
        return new Set(labels).size === labels.length;
    }""", timeout=STEP_MS)


def type_into(page: Page, label: str, text: str) -> None:
    """Type text into a sidebar field and leave it with Tab (its form sends nothing until its button is pressed)."""
    settled_sidebar(page)
    field = text_field(page, label)
    expect(field).to_have_count(1)
    field.fill(text)
    field.press("Tab")


def dialog(page: Page) -> Locator:
    return page.get_by_role("dialog")


def confirm(page: Page, action: str, yes: str) -> None:
    """Press a sidebar button that asks first ("Shut down…"), then its dialog's yes ("Yes, shut down")."""
    press(page, action)
    dialog(page).get_by_role("button", name=yes, exact=True).click()


def screenshot(page: Page, state: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{state}.png")


def updated_caption(page: Page) -> Locator:
    """The last line of the live part: "Updated HH:MM:SS in N ms · R records"."""
    return main_area(page).get_by_test_id("stCaptionContainer").filter(has_text=re.compile(r"^Updated ")).first


def wait_for_refreshes(page: Page, count: int) -> None:
    """Wait until the live part has been redrawn in count different seconds: more than count - 1 seconds later."""
    for _ in range(count):
        expect(updated_caption(page)).not_to_have_text(updated_caption(page).inner_text())


def sent_commands(run: RunDir) -> list[str]:
    """The commands in the run's control.json, oldest first."""
    return [c["cmd"] for c in read_commands(run.control_file)] if run.control_file.exists() else []


def settled_pid(run: RunDir) -> int:
    """The live worker's pid, once it has written it."""
    return wait_for(lambda: (pid := worker_pid(run)) is not None and pid > 0 and pid, what=f"{run.name}'s worker pid")


# Samples every metric value's font size and whether its text is cut, every 10 ms, until collected.
SAMPLE_METRICS = """() => {
    window.metricSamples = [];
    window.metricSampler = setInterval(() => {
        for (const value of document.querySelectorAll('[data-testid="stMetricValue"]')) {
            const cut = [value, ...value.querySelectorAll("*")].some(e => e.scrollWidth > e.clientWidth);
            window.metricSamples.push([getComputedStyle(value).fontSize, cut, value.textContent]);
        }
    }, 10);
}"""
COLLECT_METRICS = "() => { clearInterval(window.metricSampler); return window.metricSamples; }"


# -- the tests -----------------------------------------------------------------------------------


def test_page_shows_the_run_training_with_its_loss_chart_and_a_growing_batch(open_page, runs_root):
    default_run(runs_root, target=FOREVER)
    page = open_page()

    expect(title(page)).to_contain_text("default")
    expect(state_badge(page)).to_have_text("TRAINING")
    chart = loss_chart(page)
    expect(chart.locator("svg.marks, canvas").first).to_be_visible()
    expect(chart.locator(".mark-line path").first).to_have_attribute("d", re.compile(r"\d"))  # the line is drawn

    first = batch(page)
    expect(metric(page, "Batch")).not_to_have_text(f"{first:,}")
    assert batch(page) > first, "the batch only grows while the run trains"
    expect(state_badge(page)).to_have_text("TRAINING")
    screenshot(page, "training")


def test_set_target_is_listed_as_done_and_the_run_idles_at_the_new_target(open_page, runs_root):
    default_run(runs_root, target=0)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")
    expect(metric(page, "Batch")).to_have_text("0")

    type_into(page, "Target batches", "20,000")
    press(page, "Set target")

    expect(progress_text(page)).to_contain_text("of 20,000 target batches")
    open_commands(page)
    expect(command_line(page, "Target 20,000 batches")).to_contain_text("from the page: done at batch 0")
    expect(metric(page, "Batch")).to_have_text("20,000")
    expect(state_badge(page)).to_have_text("IDLE")
    expect(progress_text(page)).to_contain_text("20,000 of 20,000 target batches (100%)")
    expect(text_field(page, "Target batches").first).to_have_value("20,000")  # the field follows the run
    screenshot(page, "idle")


def test_shut_down_asks_in_a_dialog_that_stays_through_refreshes_and_closes_after_yes(open_page, runs_root):
    run = default_run(runs_root, target=0)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")

    press(page, "Shut down…")
    expect(dialog(page)).to_contain_text("saves a checkpoint and exits")
    wait_for_refreshes(page, 3)  # the sidebar's controls are redrawn on the same timer
    expect(dialog(page)).to_be_visible(timeout=1_000)
    assert "shutdown" not in sent_commands(run), "nothing is sent before yes"
    dialog(page).get_by_role("button", name="Yes, shut down", exact=True).click()

    expect(dialog(page)).to_have_count(0)
    expect(state_badge(page)).to_have_text("STOPPED")
    expect(generation_caption(page)).to_contain_text("no worker running")
    expect(metric(page, "Last record")).to_contain_text("ago")
    expect(main_area(page).get_by_test_id("stMetric").filter(has_text="Last record")).to_contain_text("worker stopped")
    assert worker_pid(run) is None
    wait_for_refreshes(page, 2)
    expect(dialog(page)).to_have_count(0, timeout=1_000)  # it does not come back on the timer
    screenshot(page, "stopped")
    open_commands(page)  # nothing covers the list or the Start button: both take clicks
    press(page, "Start")
    expect(generation_caption(page)).to_contain_text("Generation 2 (")


def test_a_killed_worker_shows_crashed_with_its_log_and_restart_resumes_where_it_was(open_page, runs_root):
    run = default_run(runs_root, target=20_000)
    page = open_page()
    expect(metric(page, "Batch")).to_have_text("20,000")
    expect(state_badge(page)).to_have_text("IDLE")
    expect(generation_caption(page)).to_contain_text("Generation 1 (")
    # The worker checkpoints at least every 3 s: wait until it has saved batch 20,000, so the crash loses nothing.
    wait_for(lambda: (ckpt := load_checkpoint(run.checkpoint)) and ckpt.batch == 20_000, what="a checkpoint at 20,000")

    os.kill(settled_pid(run), signal.SIGKILL)

    expect(state_badge(page)).to_have_text("CRASHED")
    expect(main_area(page).get_by_role("alert").filter(has_text="The worker died")).to_be_visible()
    expect(worker_log_tail(page)).to_contain_text("nnobs worker")
    screenshot(page, "crashed")

    press(page, "Restart")

    expect(generation_caption(page)).to_contain_text("Generation 2 (")
    expect(state_badge(page)).to_have_text("IDLE")
    expect(metric(page, "Batch")).to_have_text("20,000")
    assert wait_started(run, 2)["resumed_from"] == 20_000, "generation 2 went on from the checkpoint, not from 0"


def test_a_teammate_on_the_same_url_sees_the_same_run_and_reads_who_did_what_the_same_way(open_page, runs_root):
    default_run(runs_root, target=0)
    me, teammate = open_page(), open_page()
    expect(title(teammate)).to_contain_text("default")
    expect(state_badge(teammate)).to_have_text("IDLE")

    type_into(me, "Target batches", "5000")
    press(me, "Set target")

    for page in (me, teammate):
        open_commands(page)
        expect(command_line(page, "Target 5,000 batches")).to_have_text(
            "Target 5,000 batches from the page: done at batch 0")
    expect(metric(teammate, "Batch")).to_have_text("5,000")
    expect(generation_caption(teammate)).to_have_text(generation_caption(me).inner_text())


def test_a_negative_eta_is_explained_and_nothing_is_sent(open_page, runs_root):
    run = default_run(runs_root, target=0)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")

    type_into(page, "Learning rate (eta)", "-1")
    press(page, "Set eta")

    expect(sidebar(page).get_by_role("alert")).to_contain_text("Eta must be a number above 0")
    assert "eta" not in sent_commands(run), "a refused eta is never written to control.json"
    expect(metric(page, "Eta")).to_have_text("0.1")


def test_a_refused_value_shows_a_message_that_stays_readable_until_the_next_submit(open_page, runs_root):
    run = default_run(runs_root, target=0)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")

    type_into(page, "Learning rate (eta)", "-1")
    press(page, "Set eta")
    wait_for_refreshes(page, 3)  # the page redraws while the person reads

    expect(sidebar(page).get_by_role("alert")).to_contain_text("Eta must be a number above 0", timeout=5_000)
    type_into(page, "Target batches", "abc")
    press(page, "Set target")
    expect(sidebar(page).get_by_role("alert").filter(has_text="The target must be a whole number")).to_be_visible()
    expect(sidebar(page).get_by_role("alert")).to_have_count(1)  # the eta refusal is gone
    assert sent_commands(run) == [], "letters are not target 0"


def test_no_instruction_text_covers_a_typed_value(open_page, runs_root):
    default_run(runs_root, target=0)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")
    for label in ("Target batches", "Learning rate (eta)", "Pace (batches a second)",
                  "Parameter snapshot every N batches", "Rewind to batch", "Reinitialize with seed"):
        field = text_field(page, label)
        field.click()
        field.press_sequentially("123456789")  # focused and changed: when Streamlit shows its "Press Enter to …"
        assert "".join(sidebar(page).get_by_test_id("InputInstructions").all_inner_texts()) == "", label
        expect(sidebar(page).get_by_text(re.compile("Press Enter"))).to_have_count(0)
        field.press("Escape")


def test_metric_values_keep_their_size_and_fit_through_clicks_and_refreshes(open_page, runs_root):
    default_run(runs_root, target=100_000)
    page = open_page()
    expect(metric(page, "Batch")).to_have_text("100,000")
    expect(state_badge(page)).to_have_text("IDLE")

    page.evaluate(SAMPLE_METRICS)
    type_into(page, "Target batches", "1e9")
    press(page, "Set target")  # the controls' fragment reruns, and the run trains again
    expect(state_badge(page)).to_have_text("TRAINING")
    type_into(page, "Learning rate (eta)", "0.09")
    press(page, "Set eta")
    expect(metric(page, "Eta")).to_have_text("0.09")
    settled_sidebar(page)  # the eta field just changed: its old copy may still push the toggle down
    sidebar(page).get_by_test_id("stCheckbox").filter(has_text="Log-scale loss").locator("input").dispatch_event("click")
    expect(loss_chart(page).get_by_text("loss", exact=True)).to_be_visible()
    press(page, "Snapshot parameters now")
    wait_for_refreshes(page, 2)
    samples = page.evaluate(COLLECT_METRICS)

    assert len(samples) > 100, "the metrics were sampled right through the clicks and redraws"
    sizes = {size for size, _, _ in samples}
    assert len(sizes) == 1, f"the metrics' font size jumped: {sorted(sizes)}"
    cut = sorted({text for _, overflowing, text in samples if overflowing})
    assert not cut, f"metric values cut off: {cut}"


def test_the_loss_chart_is_in_view_and_the_commands_list_opens_on_request(open_page, runs_root):
    run = default_run(runs_root, target=2_000)
    page = open_page()
    expect(state_badge(page)).to_have_text("IDLE")
    expect(loss_chart(page).locator(".mark-line path").first).to_be_visible()
    chart_top = loss_chart(page).bounding_box()["y"]
    assert chart_top < VIEWPORT["height"] - 200, f"the loss chart starts at {chart_top:.0f} px: below the fold"
    expect(commands(page).locator("li").first).to_be_hidden()
    expect(commands(page).locator("summary")).to_contain_text("Commands and starts · none pending")

    open_commands(page)
    stop_worker(run, by="cli stop")
    queue_command(run, "target", 500, by="cli")  # no worker to answer: it stays pending
    expect(commands(page).locator("summary")).to_contain_text("Commands and starts · 1 pending")
    expect(command_line(page, "Target 500 batches")).to_have_text(
        "Target 500 batches from the command line: pending (waits for the next worker)")
    expect(command_line(page, "Shut down")).to_contain_text("Shut down by nnobs stop: done at batch 2,000")
    expect(commands(page).locator("li").first).to_be_visible()  # a new title did not close it


def test_the_share_link_is_whole_and_its_copy_button_covers_none_of_it(open_page, runs_root):
    default_run(runs_root, target=0)
    page = open_page()
    link = sidebar(page).get_by_test_id("stCode")
    expect(link).to_contain_text("?run=default")
    link.hover()
    copy = link.get_by_role("button", name="Copy to clipboard")
    expect(copy).to_be_visible()
    text = link.locator("code")
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/?\?run=default", text.inner_text().replace("\n", ""))
    assert link.locator("pre").evaluate("e => e.scrollWidth <= e.clientWidth"), "the link is not cut"
    button_box = copy.bounding_box()
    text_boxes = text.evaluate("""e => {
        const range = document.createRange(); range.selectNodeContents(e);
        return [...range.getClientRects()].map(r => ({x: r.x, y: r.y, width: r.width, height: r.height}));
    }""")
    assert text_boxes, "the link's text is laid out"
    for box in text_boxes:
        apart = (box["x"] + box["width"] <= button_box["x"] or button_box["x"] + button_box["width"] <= box["x"]
                 or box["y"] + box["height"] <= button_box["y"] or button_box["y"] + button_box["height"] <= box["y"])
        assert apart, f"the copy button {button_box} covers the link's text at {box}"


def worker_processes(run: RunDir) -> list[int]:
    """Pids of every live process running run's worker, found by command line: a second one would show here."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # exited while we looked
            continue
        pid = int(cmdline.parent.name)
        if b"nnobs.training.worker" in args and str(run.path).encode() in args and not process_gone(pid):
            found.append(pid)
    return found


def test_a_killed_server_leaves_the_worker_training_and_a_new_server_attaches_to_it(servers, open_url, runs_root):
    run = default_run(runs_root, target=FOREVER)
    first = servers.start()
    page = open_url(first)
    expect(state_badge(page)).to_have_text("TRAINING")
    pid = settled_pid(run)
    page.context.close()

    servers.kill(first)
    batch_passes(run, read_history(run).batch, what="the worker to train on with its server gone")
    assert settled_pid(run) == pid and worker_processes(run) == [pid]

    page = open_url(servers.start())
    expect(state_badge(page)).to_have_text("TRAINING")
    expect(generation_caption(page)).to_contain_text(f"Generation 1 (each start, restart, rewind or reinitialize begins the next) · worker pid {pid}")
    first_batch = batch(page)
    expect(metric(page, "Batch")).not_to_have_text(f"{first_batch:,}")
    assert worker_processes(run) == [pid], "still one worker, the first"
    assert len(events(run, "started")) == 1 and not events(run, "shutdown") and not events(run, "error")


def sign_in(page: Page, password: str) -> None:
    field = sidebar(page).get_by_label("Operator password")
    field.fill(password)
    assert "".join(sidebar(page).get_by_test_id("InputInstructions").all_inner_texts()) == "", "nothing on the dots"
    press(page, "Sign in")


def test_with_an_operator_password_a_second_browser_cannot_steer_and_the_first_can_after_signing_in(
    servers, open_url, runs_root
):
    run = default_run(runs_root, target=0)
    url = servers.start(NNOBS_OPERATOR_PASSWORD="correct horse")
    start_worker(run)  # started from a shell: a viewer's visit starts nothing
    operator, viewer = open_url(url), open_url(url)
    for page in (operator, viewer):
        expect(state_badge(page)).to_have_text("IDLE")
        expect(sidebar(page)).to_contain_text("Read-only view")
        expect(sidebar_button(page, "Set target")).to_have_count(0)
        expect(sidebar_button(page, "Shut down…")).to_have_count(0)

    sign_in(viewer, "wrong guess")
    expect(sidebar(viewer).get_by_role("alert").filter(has_text="Wrong password")).to_be_visible()
    expect(sidebar_button(viewer, "Set target")).to_have_count(0)

    sign_in(operator, "correct horse")
    expect(sidebar_button(operator, "Sign out")).to_be_visible()
    type_into(operator, "Target batches", "3000")
    press(operator, "Set target")
    expect(metric(viewer, "Batch")).to_have_text("3,000")  # the viewer watches the operator's change land
    open_commands(viewer)
    expect(command_line(viewer, "Target 3,000 batches")).to_contain_text("from the page: done at batch 0")
    expect(sidebar_button(viewer, "Set target")).to_have_count(0)
    assert sent_commands(run) == ["target"], "only the operator's command was ever written"
    screenshot(viewer, "viewer")
    screenshot(operator, "operator")

