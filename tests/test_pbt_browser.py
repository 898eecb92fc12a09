"""A population's family tree on the compare page, in a real browser: a real population trained by its controller, a
real `streamlit run app.py`, Debian's Chromium (the fixtures of test_browser.py)."""

from __future__ import annotations

import subprocess
import sys

from playwright.sync_api import expect

from conftest import wait_for
from nnobs.lab import pbt_controller
from nnobs.protocol.population import Journal, folder_of, load_population
from nnobs.reading.watcher import read_history
from nnobs.protocol.rundir import RunDir
from nnobs.views.family_tree import family_tree, schedule_text
from test_browser import browser, main_area, screenshot, server, servers, visit  # noqa: F401  (fixtures)
from test_pbt import ENV

MEMBERS = 4


def test_the_family_tree_shows_every_member_each_exploit_as_a_jump_and_the_best_lineages_eta(visit, runs_root):
    said = subprocess.run(
        [sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "fam", "--pbt", "--population",
         str(MEMBERS), "--eta", "0.01..1", "--task", "circle", "--target", "6000", "--interval", "1000", "--wait"],
        env=ENV, capture_output=True, text=True, timeout=180)
    assert said.returncode == 0, said.stderr
    try:
        folder = folder_of(runs_root, "fam")
        journal = wait_for(lambda: (j := Journal(folder / "decisions.jsonl")).done and j, what="the population's end")
        population = load_population(folder)
        tree = family_tree(population, journal, 6000)
        exploits = [e for entry in journal.decided.values() for e in entry["exploits"]]
        # The lineage runs from the start to the end without a gap, ends with the best member, and changes member
        # only where that member took the one before it's checkpoint.
        assert tree.best == min(journal.final["scores"], key=lambda m: journal.final["scores"][m])
        assert tree.lineage[0].start == 0 and tree.lineage[-1].end == 6000 and tree.lineage[-1].member == tree.best
        for before, after in zip(tree.lineage, tree.lineage[1:]):
            assert before.end == after.start
            took = [e for e in exploits if e["member"] == after.member and journal.decided[after.start // 1000 - 1]
                    ["batch"] == after.start]
            if before.member != after.member:
                assert any(e["donor"] == before.member for e in took)

        members = [f"fam-m{i}" for i in range(MEMBERS)]
        page = visit("/compare?" + "&".join(f"runs={m}" for m in members), height=1600)
        main = main_area(page)
        expect(main.get_by_role("heading", name="Population fam")).to_be_visible(timeout=60_000)
        expect(main.get_by_text(f"Done: {len(exploits)} exploits in 5 rounds.", exact=False)).to_be_visible()
        tree_chart = main.locator(".vega-embed").filter(
            has=page.locator("[aria-label=\"Title text 'Test loss: every member, exploits as jumps'\"]"))
        expect(tree_chart.locator(".role-legend-label text").first).to_be_attached(timeout=30_000)
        labels = tree_chart.evaluate("e => [...e.querySelectorAll('.role-legend-label text')].map(t => t.textContent)")
        assert labels == members
        drawn = tree_chart.evaluate("""e => ({
            lines: e.querySelectorAll('.mark-line.role-mark path').length,
            jumps: e.querySelectorAll('.mark-rule.role-mark line').length,
            landed: e.querySelectorAll('.mark-symbol.role-mark path').length,
        })""")
        # one line a member and the lineage's halo; a dashed rule and a triangle an exploit (none is at a score of
        # no value here: every member has a test loss at every round's end)
        assert drawn["lines"] == MEMBERS + 1, drawn
        assert drawn["jumps"] == len(exploits) and drawn["landed"] == len(exploits), drawn
        schedule = main.locator(".vega-embed").filter(
            has=page.locator("[aria-label=\"Title text 'The best lineage\\'s eta'\"]"))
        expect(schedule.locator(".mark-line path").first).to_be_attached(timeout=30_000)
        steps = schedule.evaluate("e => e.querySelectorAll('.mark-symbol.role-mark path').length")
        assert steps == len(tree.lineage) + 1  # a step at each segment's start, and the last held to its end
        expect(main.get_by_text(f"--eta-schedule {schedule_text(tree)}", exact=False)).to_be_visible()
        main.get_by_role("heading", name="Population fam").scroll_into_view_if_needed()
        screenshot(page, "family-tree")
        # A member's page says what it belongs to, and leads to the family tree; its chart marks its exploits but
        # not the controller's target raises, the population's rhythm.
        member = visit(f"/?run={tree.best}", height=1200)
        expect(main_area(member).get_by_text("A member of the population fam", exact=False)).to_be_visible()
        member_labels = [m.label for m in read_history(RunDir(runs_root / tree.best)).markers]
        assert not any(label.startswith("target") for label in member_labels), member_labels
        main_area(member).get_by_role("link", name="Its family tree").click()
        expect(main_area(member).get_by_role("heading", name="Population fam")).to_be_visible(timeout=60_000)
        # The replayed schedule, run as an ordinary run, sets each step's eta at its batch.
        replay = main.locator("code").filter(has_text="nnobs new fam-replay").inner_text()
        args = replay.split()[2:]
        made = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "new", *args],
                              env=ENV, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        run = RunDir(runs_root / "fam-replay")
        wait_for(lambda: read_history(run).batch == 6000, timeout=60, what="the replay to reach its target")
        history = read_history(run)
        scheduled = [(m.batch, m.label) for m in history.markers if m.label.endswith("(schedule)")]
        wanted = [(int(b), f"eta {float(e):g} (schedule)") for b, e in
                  (step.split(":") for step in schedule_text(tree).split(","))]
        assert scheduled == wanted
        assert history.eta == float(schedule_text(tree).split(",")[-1].split(":")[1])
    finally:
        pbt_controller.stop_controller(runs_root, "fam")
