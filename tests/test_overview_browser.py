"""The overview and the run page in a real browser: a click on a row opens its run, names are shown whole, and an
address naming no run starts nothing (the fixtures and helpers of test_browser.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from playwright.sync_api import Page, expect

from conftest import wait_for
from nnobs.app.overview_page import columns_for
from nnobs.lab.create import new_run
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.overview import read_row
from test_browser import (  # noqa: F401  (fixtures)
    FIRST_LOAD_MS,
    browser,
    main_area,
    screenshot,
    server,
    servers,
    state_badge,
    title,
    visit,
)

SWEEP = ("lr-eta0.03-seed1", "lr-eta0.03-seed2", "lr-eta0.3-seed1")


def made(runs_root, name: str, **config) -> RunDir:
    run = RunDir.named(name, runs_root)
    new_run(run, RunConfig(**config), by="test")
    return run


def overview_rows(page: Page):
    table = main_area(page).get_by_test_id("stDataFrame")
    rows = table.locator("[role=row]")
    expect(rows).to_have_count(len(SWEEP) + 1)  # the header and one row a run
    return table, rows


def test_a_click_on_a_rows_loss_opens_its_run(visit, runs_root):
    for name in SWEEP:
        made(runs_root, name, task="circle", target=300)
    for run in [RunDir.named(name, runs_root) for name in SWEEP]:
        wait_for(lambda run=run: read_history(run).batch >= 300, what=f"{run.name} at its target")
    page = visit("/overview", height=1000)
    _, rows = overview_rows(page)
    table = main_area(page).get_by_test_id("stDataFrame")
    expect(rows.filter(has_text="lr-eta0.03-seed2")).to_contain_text("idle")
    screenshot(page, "overview-sweep")

    names = [rows.nth(i).locator("[role=gridcell]").first.inner_text() for i in range(1, len(SWEEP) + 1)]
    row = names.index("lr-eta0.03-seed2") + 1
    box = table.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 35 * row + 17)  # mid-row: no box there to aim at
    expect(title(page)).to_contain_text("lr-eta0.03-seed2", timeout=FIRST_LOAD_MS)
    assert parse_qs(urlsplit(page.url).query)["run"] == ["lr-eta0.03-seed2"]


def test_the_run_column_is_wide_enough_for_every_whole_name(visit, runs_root):
    for name in SWEEP:
        made(runs_root, name, task="circle", target=100)
    page = visit("/overview")
    overview_rows(page)
    # The grid draws on a canvas in its own font: measure the longest name in it, as the grid does.
    font = page.get_by_test_id("stMain").evaluate("e => getComputedStyle(e).fontFamily")
    needed = page.evaluate(
        """([names, font]) => {
            const ctx = document.createElement('canvas').getContext('2d');
            ctx.font = '14px ' + font;
            return Math.max(...names.map(n => ctx.measureText(n).width));
        }""",
        [list(SWEEP), font],
    )
    width = columns_for([read_row(RunDir.named(name, runs_root)) for name in SWEEP])["run"]["width"]
    assert width >= needed + 16, f"the run column ({width} px) cuts a name {needed:.0f} px wide"


def test_an_address_naming_no_run_starts_nothing_and_offers_a_button(visit, runs_root):
    page = visit("/?run=does-not-exist", height=1000)
    expect(main_area(page)).to_contain_text("There is no run named does-not-exist yet")
    create = main_area(page).get_by_role("button", name="Create and start does-not-exist")
    expect(create).to_be_visible()
    screenshot(page, "missing-run-offered")
    assert list(runs_root.iterdir()) == [], "the address alone made nothing"
    create.click()
    expect(state_badge(page)).to_be_visible(timeout=FIRST_LOAD_MS)
    assert RunDir.named("does-not-exist", runs_root).config.exists()


def test_the_root_address_shows_the_default_runs_name(visit, runs_root):
    made(runs_root, "default", target=100)
    page = visit("/")
    expect(state_badge(page)).to_be_visible(timeout=FIRST_LOAD_MS)
    wait_for(lambda: "run=default" in page.url, what="?run=default in the address")
