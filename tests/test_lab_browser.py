"""The lab pages in a real browser: the new-run form, a fork from the run page, the overview, and a shared comparison.

Real `streamlit run app.py` servers over a runs root of their own, real workers, Debian's Chromium
(the fixtures and helpers of test_browser.py). Screenshots go to test-artifacts/, at 1280x800.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from conftest import FOREVER, batch_passes, events, wait_for
from nnobs.protocol.checkpoint import landing, load_checkpoint
from nnobs.reading.origin import fork_origin
from nnobs.lab.create import new_run
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import stop_worker
from nnobs.training.builtin.tasks import RunConfig, load_config
from test_browser import (  # noqa: F401  (fixtures)
    FIRST_LOAD_MS,
    browser,
    main_area,
    metric,
    press,
    screenshot,
    server,
    servers,
    sidebar,
    state_badge,
    title,
    visit,
)


def made(runs_root, name: str, **config) -> RunDir:
    """A run of the built-in worker, created and started as `nnobs new` does."""
    run = RunDir.named(name, runs_root)
    new_run(run, RunConfig(**config), by="test")
    return run


def field(page: Page, label: str):
    return main_area(page).get_by_label(label, exact=True)


def loss_legend(page: Page):
    """The legend of the run page's loss chart: "training loss", "test loss"."""
    chart = main_area(page).locator(".vega-embed").filter(has=page.locator("[aria-label=\"Title text 'Loss'\"]"))
    return chart.locator(".role-legend")


def legend_colours(page: Page, title_text: str) -> list[tuple[str, str]]:
    """(run, colour) in the legend of the compare chart titled title_text, in legend order."""
    chart = main_area(page).locator(".vega-embed").filter(has=page.locator(f"[aria-label=\"Title text '{title_text}'\"]"))
    expect(chart.locator(".role-legend-symbol path").first).to_be_attached()
    # A legend laid out in columns is one entry group holding every label and symbol: pair them in order.
    return chart.evaluate("""e => {
        const labels = [...e.querySelectorAll('.role-legend-label text')].map(t => t.textContent);
        const strokes = [...e.querySelectorAll('.role-legend-symbol path')].map(p => p.getAttribute('stroke'));
        return labels.map((label, i) => [label, strokes[i]]);
    }""")


def test_the_form_creates_a_spiral_run_that_trains_and_shows_its_test_loss(visit, runs_root):
    page = visit("/new")
    expect(field(page, "Name")).to_have_value("spiral-1")  # a free name for the task the form starts with
    field(page, "Name").fill("spiral-form")
    field(page, "Net").fill("2x8tx8tx1t")
    field(page, "Learning rate (eta)").fill("0.03")
    field(page, "Batch size").fill("16")
    field(page, "Noise").fill("0.1")
    field(page, "Seed").fill("3")
    field(page, "Target batches").fill("200,000")
    screenshot(page, "new-run-form")
    main_area(page).get_by_role("button", name="Create and start").click()

    expect(title(page)).to_contain_text("spiral-form", timeout=FIRST_LOAD_MS)
    expect(state_badge(page)).to_have_text("TRAINING")
    run = RunDir.named("spiral-form", runs_root)
    config = load_config(run.config)
    assert (config.task, config.net, config.eta, config.batch_size, config.noise, config.seed, config.target) == (
        "spiral", "2x8tx8tx1t", 0.03, 16, 0.1, 3, 200_000)
    wait_for(lambda: "test_loss" in read_history(run).metrics, what="the worker to report a test loss")
    expect(loss_legend(page)).to_contain_text("test loss")
    expect(loss_legend(page)).to_contain_text("training loss")
    expect(main_area(page).locator("[aria-label=\"Title text 'test_loss'\"]")).to_have_count(0)  # not a chart of its own
    screenshot(page, "new-run-training")


def test_a_bad_entry_in_the_form_is_refused_and_nothing_is_created(visit, runs_root):
    page = visit("/new")
    field(page, "Name").fill("refused")
    field(page, "Noise").fill("0.9")
    main_area(page).get_by_role("button", name="Create and start").click()
    expect(main_area(page).get_by_role("alert")).to_contain_text("noise")
    assert not RunDir.named("refused", runs_root).path.exists()


def test_a_fork_from_a_batch_says_where_it_lands_and_forks_on_the_second_press(visit, runs_root):
    parent = made(runs_root, "older", target=50_000)
    wait_for(lambda: events(parent, "target_reached"), what="the parent to reach batch 50,000")
    landed = landing(parent.checkpoint, 20_000)
    page = visit("/?run=older")
    sidebar(page).get_by_label("New run's name", exact=True).fill("older-20k")
    sidebar(page).get_by_label("From the checkpoint kept at or before batch", exact=True).fill("20000")
    press(page, "Fork this run")
    expect(sidebar(page).get_by_role("alert")).to_contain_text(
        f"batch 20,000 lands on the checkpoint kept at batch {landed:,}")
    assert not RunDir.named("older-20k", runs_root).path.exists(), "said before it is done"
    press(page, "Fork this run")
    expect(title(page)).to_contain_text("older-20k", timeout=FIRST_LOAD_MS)
    assert fork_origin(RunDir.named("older-20k", runs_root))["batch"] == landed >= 20_000 / 1.25


def test_a_fork_from_the_page_starts_at_its_parents_batch_with_the_new_eta_and_appears_beside_it(visit, runs_root):
    parent = made(runs_root, "base", task="spiral", eta=0.03, target=FOREVER, pace=2000)
    batch_passes(parent, 3000)
    # The worker checkpoints batch 0 as it starts: the fork's origin is asserted beyond 3,000, so that is awaited.
    wait_for(lambda: (kept := load_checkpoint(parent.checkpoint)) is not None and kept.batch >= 3000,
             what="the parent's checkpoint at batch 3,000 or later")
    page = visit("/?run=base")
    expect(state_badge(page)).to_have_text("TRAINING")
    sidebar(page).get_by_label("New run's name", exact=True).fill("base-hot")
    sidebar(page).get_by_label("Its eta", exact=True).fill("0.3")
    press(page, "Fork this run")

    expect(sidebar(page).get_by_role("alert")).to_have_count(0)  # no refusal
    expect(title(page)).to_contain_text("base-hot", timeout=FIRST_LOAD_MS)
    fork = RunDir.named("base-hot", runs_root)
    origin = fork_origin(fork)
    assert origin["run"] == "base" and origin["batch"] >= 3000
    started = wait_for(lambda: events(fork, "started"), what="the fork's worker to start")[0]
    assert started["resumed_from"] == origin["batch"], "the fork goes on from its parent's batch"
    expect(metric(page, "Eta")).to_have_text("0.3")
    expect(main_area(page)).to_contain_text(f"Forked from base at batch {origin['batch']:,}")
    expect(sidebar(page).get_by_label("New run's name", exact=True)).to_have_value("")  # not the old fork's values
    expect(sidebar(page).get_by_label("Its eta", exact=True)).to_have_value("")
    screenshot(page, "fork")

    main_area(page).get_by_role("link", name=re.compile("Compare with base")).click()
    expect(main_area(page).locator("h2").first).to_contain_text("compare runs")
    runs = [run for run, _ in legend_colours(page, "Training loss")]
    assert runs == ["base", "base-hot"], "parent and fork side by side, in the order they were made"
    screenshot(page, "compare-fork")


def test_the_overview_lists_every_run_with_its_state_and_opens_one(visit, runs_root):
    made(runs_root, "idle-one", task="circle", target=500)
    stopped = made(runs_root, "stopped-one", task="gauss", target=500)
    made(runs_root, "training-one", task="spiral", target=FOREVER, pace=500)
    wait_for(lambda: read_history(stopped).batch >= 500, what="stopped-one to reach its target")
    stop_worker(stopped, by="test")
    page = visit("/overview")
    table = main_area(page).get_by_test_id("stDataFrame")
    rows = table.locator("[role=row]")
    expect(rows).to_have_count(4)  # the header and one row a run
    expected = {"idle-one": "idle", "stopped-one": "stopped", "training-one": "training"}
    for name, state in expected.items():
        expect(rows.filter(has_text=name)).to_contain_text(state)
    screenshot(page, "overview")

    box = table.bounding_box()
    names = [rows.nth(i).locator("[role=gridcell]").first.inner_text() for i in range(1, 4)]
    row = names.index("training-one") + 1
    page.mouse.click(box["x"] + 16, box["y"] + 35 * row + 17)  # its selection box, in the grid's first column
    expect(title(page)).to_contain_text("training-one", timeout=FIRST_LOAD_MS)
    expect(state_badge(page)).to_have_text("TRAINING")


def test_the_compare_url_opened_in_a_second_browser_shows_the_same_runs_in_the_same_colours(visit, runs_root):
    for name, eta in (("sweep-a", 0.01), ("sweep-b", 0.03), ("sweep-c", 0.1)):
        made(runs_root, name, task="circle", eta=eta, target=3000)
    for name in ("sweep-a", "sweep-b", "sweep-c"):
        wait_for(lambda: read_history(RunDir.named(name, runs_root)).batch >= 3000, what=f"{name} to train")
    mine = visit("/compare")
    picker = main_area(mine).get_by_test_id("stMultiSelect")
    for name in ("sweep-c", "sweep-a", "sweep-b"):  # picked in another order than they were made
        picker.click()
        mine.get_by_role("option", name=name, exact=True).click()
        mine.keyboard.press("Escape")
    expect(mine).to_have_url(re.compile(r"runs=sweep-c&runs=sweep-a&runs=sweep-b"))
    colours = wait_for(lambda: len(found := legend_colours(mine, "Training loss")) == 3 and found,
                       what="the chart to show the three runs picked")
    assert [run for run, _ in colours] == ["sweep-a", "sweep-b", "sweep-c"]
    assert len({colour for _, colour in colours}) == 3, "three runs, three colours"
    wait_for(lambda: legend_colours(mine, "Test loss") == colours, what="the same colours on the test loss chart")
    expect(main_area(mine).get_by_test_id("stDataFrame").last).to_contain_text("eta")  # the one setting that differs
    screenshot(mine, "compare")

    theirs = visit(mine.url.removeprefix(mine.url.split("/compare")[0]))
    wait_for(lambda: legend_colours(theirs, "Training loss") == colours, what="the same runs in the same colours")
    wait_for(lambda: legend_colours(theirs, "Test loss") == colours, what="the same colours on their test loss chart")
