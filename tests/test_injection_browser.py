"""Text a teammate with write access to the runs root plants in a run's files reaches every viewer's page as the
characters typed: no image is fetched, nothing becomes a link, no colour, icon or formula is drawn.

Each source of text a run holds (its records, run.json, fork.json, control.json, config.json, worker.log, a Slurm
job file) is written by hand, as an adversary would, with a Markdown image, a link, raw HTML, a colour directive,
an icon, LaTeX, a bare address and a code span a blank line would end, each pointing at a loopback HTTP listener
that records every request. A real `streamlit run app.py` serves the pages and Debian's Chromium opens them (the
fixtures of test_browser.py). Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Locator, Page, expect

from conftest import wait_for
from nnobs.protocol.commands import command_words
from slurm_support import slurm  # noqa: F401  (a fixture)
from test_browser import (  # noqa: F401  (fixtures)
    browser,
    main_area,
    open_commands,
    press,
    screenshot,
    server,
    servers,
    sidebar,
    visit,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WORD_JOINER = "\u2060"  # what the page puts inside a bare address or an icon's name: unseen, but no longer one


class Listener:
    """A loopback HTTP server standing for the planter's: it answers every request, and records its path."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        heard = self.requests

        class Recorder(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                heard.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_HEAD = do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def at(self, what: str) -> str:
        """An address on the listener, its path saying where it was planted."""
        return f"http://127.0.0.1:{self.port}/{what}"


@pytest.fixture
def listener() -> Iterator[Listener]:
    """The listener, heard answering once (so that hearing nothing later means something), then emptied."""
    started = Listener()
    started.thread.start()
    with urllib.request.urlopen(started.at("ready"), timeout=10) as response:
        assert response.status == 204
    assert started.requests == ["/ready"]
    started.requests.clear()
    yield started
    started.server.shutdown()
    started.server.server_close()


def planted(listener: Listener, where: str) -> str:
    """What an adversary writes where the page reads `where`: every way Streamlit's Markdown could fetch, link,
    colour or draw, each at the listener, and a blank line inside a code span, which would end it."""
    at = listener.at(where)
    return (
        f"{where} ![an image]({at}/image.png) [a link]({at}/link) <img src=\"{at}/html.png\"> "
        f":red[red ![in colour]({at}/colour.png)] :material/bolt: $x^2$ {at}/bare www.example.com "
        f"`a code span\n\n![after a blank line]({at}/after-blank.png)` -> done"
    )


def literal(text: str) -> str:
    """Text as a browser lays it out: each run of white space one space."""
    return " ".join(text.split())


def shown(locator: Locator) -> str:
    """What a person reads in locator, as literal() lays it out, without the page's unseen word joiners."""
    return literal(locator.inner_text().replace(WORD_JOINER, ""))


def expect_literal(locator: Locator, text: str, what: str) -> None:
    """Wait until locator shows text as typed, character for character but for white space."""
    wait_for(lambda: literal(text) in shown(locator), timeout=30, what=f"{what} shown as the characters typed")


# Every address an element of the page loads or links to (src, href, srcset, a style's url()), as absolute URLs.
ADDRESSES = """() => {
    const found = [];
    for (const element of document.querySelectorAll('*')) {
        for (const name of ['src', 'href', 'xlink:href', 'poster', 'data', 'action']) {
            const value = element.getAttribute(name);
            if (value) found.push(new URL(value, document.baseURI).href);
        }
        for (const candidate of (element.getAttribute('srcset') || '').split(',')) {
            if (candidate.trim()) found.push(new URL(candidate.trim().split(/\\s+/)[0], document.baseURI).href);
        }
        for (const match of (element.getAttribute('style') || '').matchAll(/url\\(["']?([^"')]+)/g)) {
            found.push(new URL(match[1], document.baseURI).href);
        }
    }
    return found;
}"""


def assert_nothing_points_at(page: Page, listener: Listener) -> None:
    """No element of the page loads or links to the listener, and the listener heard nothing."""
    pointing = [url for url in page.evaluate(ADDRESSES) if url.startswith(f"http://127.0.0.1:{listener.port}/")]
    assert pointing == [], f"the page at {page.url} loads or links to the planted addresses: {pointing}"
    assert listener.requests == [], f"the browser fetched planted addresses: {listener.requests}"


def chart_titled(page: Page, title: str) -> Locator:
    """The Vega chart whose title begins with title (a long one is cut short)."""
    return main_area(page).locator(".vega-embed").filter(has=page.locator(f"[aria-label^=\"Title text '{title}\"]"))


def chart_texts(chart: Locator) -> str:
    """Every text a Vega chart draws (titles, axes, legends, headers), and its ARIA labels."""
    texts = chart.locator("svg text, [aria-label]").evaluate_all(
        "elements => elements.map(e => e.textContent + ' ' + (e.getAttribute('aria-label') || ''))"
    )
    return literal(" ".join(texts).replace(WORD_JOINER, ""))


def expect_in_chart(chart: Locator, text: str, what: str) -> None:
    """text's first characters among what chart draws: a legend or an axis cuts the rest short, with an ellipsis."""
    expect(chart).to_be_visible()
    wait_for(lambda: literal(text)[:20] in chart_texts(chart), timeout=30, what=f"{what} drawn as text")


# -- the planted runs ------------------------------------------------------------------------------------------


def write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def plant_script_run(run_dir: Path, listener: Listener) -> dict[str, str]:
    """A crashed script's run, forked, with commands and metrics: every text its files carry, by where it is read."""
    text = {where: planted(listener, where) for where in (
        "started-by", "started-detail", "error-record", "reject-reason", "command-by", "command-cmd",
        "command-value", "argv", "cwd", "fork-run", "fork-setting", "fork-value", "fork-had", "worker-log",
        "metric-once", "metric-chart", "tensor",
    )}
    run_dir.mkdir()
    t = time.time() - 600
    state = {"eta": 0.1, "target": 100, "report_every": 10, "pace": 0.0}
    write_lines(run_dir / "run.jsonl", [
        {"event": [0, "started"], "pid": 999_999, "by": text["started-by"], "error": text["started-detail"],
         "params": [0, {"tensors": [[text["tensor"], [2]], ["bias", [1]]], "sample": None}], "t": t, "gen": 1},
        {"sv": [0, [0.1, 0.2, 0.3]], **{k: [0, v] for k, v in state.items()}, "t": t, "gen": 1},
        {"loss": [1, 0.5], "metrics": [1, {text["metric-once"]: [0.25], text["metric-chart"]: [0.5]}],
         "t": t + 1, "gen": 1},
        {"loss": [2, 0.4], "metrics": [2, {text["metric-chart"]: [0.4]}], "t": t + 2, "gen": 1},
        {"sv": [2, [0.2, 0.1, 0.4]], **{k: [2, v] for k, v in state.items()}, "t": t + 2, "gen": 1},
        {"reject": [2, {"id": "planted00001", "seq": 1, "cmd": "eta", "value": -1, "reason": text["reject-reason"]}],
         "t": t + 3, "gen": 1},
        {"event": [3, "error"], "error": text["error-record"], "t": t + 4, "gen": 1},
    ])
    (run_dir / "control.json").write_text(json.dumps({"file_id": "planted00000", "next_seq": 4, "commands": [
        {"seq": 1, "cmd": "eta", "value": -1, "id": "planted00001", "t": t + 2, "by": text["command-by"]},
        {"seq": 2, "cmd": text["command-cmd"], "value": None, "id": "planted00002", "t": t + 5, "by": "cli"},
        {"seq": 3, "cmd": "target", "value": text["command-value"], "id": "planted00003", "t": t + 6, "by": "page"},
    ]}))
    (run_dir / "run.json").write_text(json.dumps({"argv": [text["argv"], "train.py"], "cwd": text["cwd"]}))
    (run_dir / "fork.json").write_text(json.dumps({
        "run": text["fork-run"], "batch": 5, "changed": {text["fork-setting"]: text["fork-value"]},
        "parent": {text["fork-setting"]: text["fork-had"]}, "t": t,
    }))
    (run_dir / "worker.log").write_text(f"Traceback (most recent call last):\n{text['worker-log']}\n")
    return text


def plant_built_in_run(run_dir: Path, config: dict) -> None:
    """A built-in run of config that trained a batch and stopped, long ago: the page starts no worker for it."""
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(config))
    t = time.time() - 600
    write_lines(run_dir / "run.jsonl", [{"event": [0, "started"], "pid": 999_999, "t": t, "gen": 1},
                                        {"loss": [1, 0.5], "t": t, "gen": 1},
                                        {"event": [1, "shutdown"], "t": t, "gen": 1}])


# -- the tests ---------------------------------------------------------------------------------------------------


def test_text_planted_in_a_runs_files_shows_as_typed_on_every_page_and_nothing_is_fetched(runs_root, listener, visit):
    text = plant_script_run(runs_root / "planted", listener)
    task = planted(listener, "config-task")  # a task that is none: the page quotes it in its error
    plant_built_in_run(runs_root / "planted-config", {"task": task, "net": "2x2tx1t"})

    page = visit("/?run=planted", height=2600)
    run_page_shows_as_typed(page, text)
    commands_show_as_typed(page, text)
    press(page, "Restart")  # a script started outside nnobs: refused, saying where it was started
    expect_literal(sidebar(page), shlex.join([text["argv"], "train.py"]), "argv in the refused start")
    expect_literal(sidebar(page), text["cwd"], "the working directory in the refused start")
    screenshot(page, "injection-run")
    assert_nothing_points_at(page, listener)

    main_area(page).get_by_role("tab", name="Layers").click()
    expect_in_chart(chart_titled(page, "Weight norm per tensor"), text["tensor"], "a tensor's name in the legend")
    expect_in_chart(chart_titled(page, "Distribution of each"), text["tensor"], "a tensor's name over its chart")
    screenshot(page, "injection-layers")
    assert_nothing_points_at(page, listener)

    config_page = visit("/?run=planted-config", height=1600)
    expect_literal(main_area(config_page), f"unknown task {task!r}", "config.json's task in its error")
    expect(main_area(config_page).get_by_test_id("stMetric").first).to_be_visible()
    screenshot(config_page, "injection-config")
    assert_nothing_points_at(config_page, listener)

    overview = visit("/overview", height=1200)
    expect(main_area(overview).get_by_test_id("stDataFrame")).to_be_visible()
    expect(main_area(overview)).to_contain_text("2 runs in")
    screenshot(overview, "injection-overview")
    assert_nothing_points_at(overview, listener)

    # A name no run has, in an address someone shared, is no run picked.
    compare = visit(f"/compare?runs=planted&runs=planted-config&runs={quote(text['fork-run'])}", height=1600)
    expect(main_area(compare).get_by_text("Settings that differ")).to_be_visible()
    expect(main_area(compare).get_by_test_id("stDataFrame")).to_have_count(2)  # the figures, the settings
    screenshot(compare, "injection-compare")
    assert_nothing_points_at(compare, listener)


def run_page_shows_as_typed(page: Page, text: dict[str, str]) -> None:
    """The header's captions, the crashed banner and worker.log, a metric's caption and the charts' titles."""
    main = main_area(page)
    expect(main.get_by_role("alert").filter(has_text="The worker died")).to_be_visible()
    expect_literal(main, text["error-record"], "an error record")
    expect_literal(main.get_by_test_id("stCode"), text["worker-log"], "the tail of worker.log")
    expect_literal(main, " ".join([text["argv"], "train.py"]), "a script's argv from run.json")
    expect_literal(main, text["cwd"], "a script's working directory from run.json")
    for where in ("fork-run", "fork-setting", "fork-value", "fork-had"):
        expect_literal(main, text[where], f"fork.json's {where}")
    expect_literal(main.get_by_test_id("stPageLink"), text["fork-run"], "the parent's name in the link to compare")
    expect_literal(main, text["metric-once"], "a metric's name under its pending chart")
    expect_in_chart(chart_titled(page, "metric-chart"), text["metric-chart"], "a metric's name, its chart's title")
    expect_in_chart(chart_titled(page, "State vector over batches"), text["tensor"], "a tensor's name on the heatmap")


def commands_show_as_typed(page: Page, text: dict[str, str]) -> None:
    """The commands list: who sent each, what it asks, why it was rejected; who started the worker, and how."""
    open_commands(page)
    for where in ("started-by", "started-detail", "reject-reason", "command-by", "command-cmd"):
        expect_literal(main_area(page), text[where], f"a {where} in the commands list")
    expect_literal(main_area(page), command_words("target", text["command-value"]), "a value in the commands list")


@pytest.mark.slurm
def test_a_slurm_job_id_planted_in_job_json_shows_as_typed(runs_root, listener, slurm, visit):
    run_dir = runs_root / "planted-job"
    plant_built_in_run(run_dir, {"task": "xor"})
    job_id = planted(listener, "job-id")  # which Slurm cannot find: the page says so, naming it
    (run_dir / "launcher.json").write_text(json.dumps({"kind": "slurm"}))
    (run_dir / "job.json").write_text(json.dumps({"job_id": job_id, "submitted_at": time.time() - 600}))

    page = visit("/?run=planted-job", height=1200)
    expect_literal(main_area(page), f"Slurm job {job_id} (unknown)", "job.json's job id under the header")
    screenshot(page, "injection-slurm")
    assert_nothing_points_at(page, listener)
