"""The run page's views in a real browser: a spiral net's neurons redrawn as it trains, the replay slider moving
the decision surface back and forth, and the PyTorch example's per-layer views.

Real `streamlit run app.py` servers, real workers and a real PyTorch script, Debian's Chromium (the fixtures of
test_browser.py). Screenshots go to test-artifacts/, at 1280x800.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import Error as PlaywrightError

from conftest import FOREVER, REPO, batch_passes, events, wait_for
from nnobs.lab.create import new_run
from nnobs.protocol.rundir import RunDir
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views.vegalite import LOG_BATCH_TITLE
from test_browser import (  # noqa: F401  (fixtures)
    FIRST_LOAD_MS, VIEWPORT, browser, default_run, loss_chart, main_area, screenshot, server, servers, visit,
    wait_for_refreshes,
)

SPIRAL = {"task": "spiral", "net": "2x8tx8tx1t", "eta": 0.03, "seed": 2}
TORCH_MLP = REPO / "examples/torch_mlp.py"


def picture(page: Page, element) -> bytes | None:
    """What element shows now, as pixels of the page: an element screenshot would wait for a chart redrawn every
    second to hold still. None while it is marked stale (a rerun has not redrawn it yet), as the page may fade it."""
    container = element.locator("xpath=ancestor::*[@data-testid='stElementContainer'][1]")
    if container.get_attribute("data-stale", timeout=5_000) == "true":
        return None
    return page.screenshot(clip=element.bounding_box(timeout=5_000))


def settled_picture(page: Page, element) -> bytes:
    """What element shows once two pictures in a row agree: a chart just made visible may still be drawing."""
    pictures = [picture(page, element)]
    return wait_for(lambda: pictures.append(picture(page, element)) or pictures[-1] == pictures[-2] and pictures[-1],
                    timeout=20, what="the chart drawn and holding still")


def chart_titled(page: Page, title: str):
    """The Vega chart whose title text is title."""
    return main_area(page).locator(".vega-embed").filter(has=page.locator(f"[aria-label=\"Title text '{title}'\"]"))


def test_the_neurons_view_of_a_spiral_run_redraws_as_it_trains(runs_root, visit):
    run = RunDir.named("spiral", runs_root)
    # Paced, so the page and the browser keep a core; a larger eta, so that each state's maps differ visibly.
    new_run(run, RunConfig(**{**SPIRAL, "eta": 0.1}, target=FOREVER, report_every=200, pace=500), by="test")
    batch_passes(run, 200, what="the first regular state report")
    page = visit("/?run=spiral&view=Neurons", height=1700)
    caption = main_area(page).get_by_text(re.compile(r"What each unit computes over the input plane, at batch"))
    expect(caption).to_be_visible()
    diagram = main_area(page).locator(".vega-embed").last
    expect(diagram.locator("canvas, svg").first).to_be_visible()

    def shown() -> tuple[int, bytes] | None:
        """The batch the maps are of and their picture; None while a redraw has the chart between two elements."""
        try:
            batch = int(re.search(r"at batch ([\d,]+)", caption.inner_text()).group(1).replace(",", ""))
            return (batch, now) if (now := picture(page, diagram)) else None
        except PlaywrightError:
            return None

    first_batch, first_picture = wait_for(shown, timeout=60, what="the neuron maps drawn")
    screenshot(page, "neurons-training")
    later = wait_for(lambda: (s := shown()) and s[0] > first_batch and s[1] != first_picture and s, timeout=120,
                     what="the neuron maps of a later state")
    assert later[0] >= first_batch + 200, "a later state report's maps"


def test_the_replay_slider_moves_the_surface_back_and_forth(runs_root, visit):
    run = RunDir.named("spiral", runs_root)
    new_run(run, RunConfig(**SPIRAL, target=3000, report_every=500), by="test")
    wait_for(lambda: events(run, "target_reached"), what="the target, so the latest state stays put")
    page = visit("/?run=spiral", height=2600)
    surface = chart_titled(page, "Decision surface")
    said = main_area(page).get_by_text(re.compile(r"^The net's output over the input plane, at "))
    expect(said).to_have_text("The net's output over the input plane, at its latest state.")
    expect(surface).to_be_visible()
    live_picture = settled_picture(page, surface)
    slider = main_area(page).get_by_test_id("stSlider").filter(has_text="Replay").get_by_role("slider")
    expect(slider).to_be_visible()

    slider.focus()
    page.keyboard.press("Home")
    expect(said).to_have_text("The net's output over the input plane, at batch 0 (replayed).")
    expect(main_area(page).get_by_text(re.compile(r"Replaying the state reported at batch 0 \(the newest is at batch 3,000\)")))\
        .to_be_visible()
    wait_for(lambda: (now := picture(page, surface)) and now != live_picture, timeout=20,
             what="the untrained net's surface drawn")
    screenshot(page, "replay-batch-0")

    slider.focus()  # again: the rerun that drew batch 0 may have taken the focus from the slider
    page.keyboard.press("ArrowRight")
    expect(said).to_have_text("The net's output over the input plane, at batch 1 (replayed).")
    slider.focus()
    page.keyboard.press("End")
    expect(said).to_have_text("The net's output over the input plane, at its latest state.")
    wait_for(lambda: picture(page, surface) == live_picture, timeout=20, what="the latest surface drawn again, as it was")
    live = main_area(page).get_by_role("button", name="Live")
    expect(live).to_be_disabled()

    # The Live button also returns to the newest state, and moves the slider there.
    slider.focus()
    page.keyboard.press("Home")
    expect(said).to_have_text("The net's output over the input plane, at batch 0 (replayed).")
    expect(live).to_be_enabled()
    live.dispatch_event("click")
    expect(said).to_have_text("The net's output over the input plane, at its latest state.")
    # The Live button makes a fresh slider; on a loaded machine the old one stays on the page until the rerun ends.
    expect(main_area(page).get_by_test_id("stSlider").filter(has_text="Replay")).to_have_count(1, timeout=30_000)
    expect(slider).to_have_attribute("aria-valuetext", "live")
    wait_for(lambda: picture(page, surface) == live_picture, timeout=20, what="the latest surface drawn again by Live")


def test_the_pytorch_examples_run_shows_its_per_layer_views(runs_root, visit):
    script = subprocess.Popen([sys.executable, str(TORCH_MLP), "mlp", "--runs", str(runs_root), "--target", "600"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = RunDir.named("mlp", runs_root)
    try:
        wait_for(lambda: run.run_file.exists() and events(run, "target_reached") or script.poll() is not None,
                 timeout=120, what="the PyTorch example to reach batch 600")
        assert script.poll() is None, f"the example exited with {script.returncode}: {script.stderr.read()}"
        page = visit("/?run=mlp&view=Layers")
        for title in ("Weight norm per tensor", "Update-to-weight ratio per tensor", "Distribution of each tensor's "
                      "values: min-max, 7-93 %, 16-84 %, 31-69 % and the median"):
            expect(chart_titled(page, title)).to_be_visible()
        update = chart_titled(page, "Update-to-weight ratio per tensor")
        expect(update).to_contain_text("1e-3, the rule of thumb")
        for tensor in ("0.weight", "2.weight", "4.bias"):
            expect(update.locator(".role-legend-label").get_by_text(tensor, exact=True)).to_be_visible()
        expect(main_area(page).get_by_role("tab", name="Neurons")).to_have_count(0)  # a script's net: no unit maps
        screenshot(page, "layers-pytorch")
    finally:
        script.terminate()
        script.wait(timeout=60)


@contextmanager
def watched_page(browser: Browser, url: str, height: int) -> Iterator[tuple[Page, list[str]]]:
    """A new person on url, and the errors its browser console reports from the first moment (Vega logs a chart
    that fails there, not on the page); the page once its main area has drawn."""
    context = browser.new_context(viewport={**VIEWPORT, "height": height})
    errors: list[str] = []
    try:
        page = context.new_page()
        # Loads of web fonts fail without a network; they are not the page's errors.
        page.on("console", lambda message: message.type == "error" and "Failed to load resource" not in message.text
                and errors.append(message.text))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url, timeout=FIRST_LOAD_MS)
        expect(main_area(page).locator("h2").first).to_be_visible(timeout=FIRST_LOAD_MS)
        yield page, errors
    finally:
        context.close()


def batch_axis_title(page: Page, chart) -> str:
    """The title of a chart's batch axis, as Vega says it to a screen reader ("X-axis titled 'batch' for a ...")."""
    said = chart.locator("[aria-label^='X-axis titled']").first.get_attribute("aria-label", timeout=30_000)
    return re.search(r"X-axis titled '([^']*)'", said).group(1)


def test_a_fast_run_opens_on_a_log_batch_axis_that_one_control_switches_for_every_chart(runs_root, browser, server):
    run = default_run(runs_root, FOREVER)  # XOR, unpaced: tens of thousands of batches a second
    with watched_page(browser, server + "/", height=2400) as (page, errors):
        batch_passes(run, 20_000, what="the run past four decades of batches", timeout=120)
        expect(loss_chart(page)).to_be_visible()
        wait_for(lambda: batch_axis_title(page, loss_chart(page)) == LOG_BATCH_TITLE, timeout=30,
                 what="the loss chart on a log batch axis")
        lines = chart_titled(page, "State vector")
        wait_for(lambda: batch_axis_title(page, lines) == LOG_BATCH_TITLE, what="the parameters on it too")
        screenshot(page, "log-batch-axis")
        main_area(page).get_by_test_id("stRadio").get_by_text("linear", exact=True).click()
        wait_for(lambda: batch_axis_title(page, loss_chart(page)) == "batch", what="the loss chart on a linear axis")
        wait_for(lambda: batch_axis_title(page, chart_titled(page, "State vector")) == "batch",
                 what="the parameters on a linear axis")
        assert not errors, errors


def test_every_view_of_a_run_draws_without_an_error_in_the_browser_console(runs_root, browser, server):
    run = RunDir.named("spiral", runs_root)
    new_run(run, RunConfig(**SPIRAL, target=FOREVER, report_every=500, pace=2000), by="test")
    batch_passes(run, 1000, what="a few state reports", timeout=60)
    with watched_page(browser, server + "/?run=spiral", height=2400) as (page, errors):
        for view, title in (("Parameters", "Decision surface"), ("Layers", "Weight norm per tensor"),
                            ("Neurons", None), ("Trajectory", "Path through parameter space"),
                            ("System", "Resident memory (MB)")):
            main_area(page).get_by_role("tab", name=view).click()
            drawn = chart_titled(page, title) if title else main_area(page).locator(".vega-embed").last
            expect(drawn.locator("canvas, svg").first).to_be_visible()
            wait_for_refreshes(page, 2)  # each chart drawn first without its data, then with it
            assert not titles_out_of_sight(page), f"{view}: chart titles drawn above their charts"
        assert not errors, "\n".join(errors)


def titles_out_of_sight(page: Page) -> list[str]:
    """The titles of the drawn charts cut by their chart's top edge, half of their text above it or more (a long axis
    title pushes them there): the box of a title in sight may start a few pixels above, its font's ascent."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('.vega-embed svg')).flatMap(svg => {
        const top = svg.getBoundingClientRect().top;
        return Array.from(svg.querySelectorAll('.role-title-text')).filter(title => {
            const box = title.getBoundingClientRect();
            return (box.top + box.bottom) / 2 < top;
        }).map(title => title.textContent);
    })""")
