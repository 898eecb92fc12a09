"""What the page and status say is so: an address starts nothing by itself, a start that failed reads failed."""

from __future__ import annotations

import json

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import wait_for
from test_cli_truths import noisy_run
from nnobs.app.widgets import wrong_guesses
from nnobs.protocol.control import queue_command
from nnobs.launching.lifecycle import record_launch, run_status
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def page(runs_root, monkeypatch):
    """The page on runs_root, as a freshly started server shows it; the caller runs it."""
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    wrong_guesses.clear()
    return AppTest.from_file(APP, default_timeout=60)


def badge(at: AppTest) -> str:
    header = next(m.value for m in at.markdown if "-badge[" in m.value)
    return header.split("-badge[", 1)[1].split("]", 1)[0]


def test_a_missing_run_named_in_the_url_starts_nothing_and_is_offered_to_an_operator(page, runs_root):
    page.query_params["run"] = "does-not-exist"
    page.run()
    assert not page.exception, page.exception
    assert list(runs_root.iterdir()) == [], "naming a run in the address created nothing"
    assert any("no run named `does-not-exist`" in i.value for i in page.info)
    create = next(b for b in page.main.button if b.label == "Create and start does-not-exist")

    create.click().run()
    assert not page.exception, page.exception
    run = RunDir(runs_root / "does-not-exist")
    assert run.config.exists() and run_status(run, read_history(run)).state in ("training", "idle")


def test_the_root_address_names_the_default_run_and_starts_it_only_in_a_fresh_runs_root(page, runs_root):
    (runs_root / "other").mkdir()
    (runs_root / "other" / "run.jsonl").write_bytes(b"")
    page.run()
    assert not page.exception, page.exception
    assert page.query_params["run"] in ("default", ["default"])
    assert sorted(p.name for p in runs_root.iterdir()) == ["other"], "beside other runs, the default run is offered"
    assert any(b.label == "Create and start default" for b in page.main.button)

    (runs_root / "other" / "run.jsonl").unlink()
    (runs_root / "other").rmdir()
    page.run()
    assert not page.exception, page.exception
    default = RunDir(runs_root / "default")
    assert default.config.exists() and run_status(default, read_history(default)).state in ("training", "idle")


@pytest.fixture
def broken_script(runs_root, tmp_path) -> RunDir:
    """A script's run whose command fails as it starts, as one missing a package does."""
    run = RunDir(runs_root / "needs-torch")
    record_launch(run, [sys.executable, "-c", "import no_such_module_for_nnobs"], str(tmp_path))
    return run


def test_a_script_that_fails_to_start_reads_failed_with_its_error_once_and_is_not_run_again(page, broken_script):
    page.query_params["run"] = broken_script.name
    page.run()
    assert not page.exception, page.exception
    assert badge(page) == "FAILED TO START"
    assert not any("Not started yet" in c.value for c in page.caption), "the badge says it"
    shown = [c.value for c in page.code if "no_such_module_for_nnobs" in c.value]
    assert len(shown) == 1, f"the error is shown once: {shown}"
    assert "Traceback" in shown[0] and "\nModuleNotFoundError" in shown[0], "its lines are kept"
    assert not any("no_such_module_for_nnobs" in e.value for e in page.error), "not again as a one-line error"

    again = AppTest.from_file(APP, default_timeout=60)
    again.query_params["run"] = broken_script.name
    again.run()
    assert not again.exception, again.exception
    assert badge(again) == "FAILED TO START"
    assert broken_script.worker_log.read_text().count("Traceback") == 1, "opening the page did not run it again"


def test_status_of_a_script_that_failed_to_start_says_so(broken_script):
    with pytest.raises(Exception, match="exited before it started"):
        from nnobs.launching.lifecycle import start_worker

        start_worker(broken_script, by="cli")
    status = run_status(broken_script, read_history(broken_script))
    assert status.label == "failed to start"
    assert "ModuleNotFoundError" in status.error


def test_a_run_ruined_by_eta_500_that_then_reaches_its_target_shows_a_problem(page, new_run):
    run = new_run("circle-a", task="circle", eta=0.03, target=20000)
    page.query_params["run"] = run.name
    page.run()  # an operator's first sight starts it
    wait_for(lambda: run_status(run, read_history(run)).state == "idle", timeout=120, what="circle-a at its target")
    queue_command(run, "eta", 500.0, by="cli")
    queue_command(run, "target", 21000, by="cli")
    wait_for(lambda: read_history(run).batch == 21000, timeout=60, what="the new target reached")

    def problem_shown() -> bool:
        page.run()
        assert not page.exception, page.exception
        return badge(page) == "LOSS ROSE" and any("the loss rose" in w.value for w in page.warning)

    wait_for(problem_shown, what="the LOSS ROSE badge and its problem")
    warning = next(w.value for w in page.warning if "the loss rose" in w.value)
    assert "after eta 500" in warning and "Lower eta" in warning


def _new_run_page() -> None:
    from nnobs.app.new_run_page import new_run_page

    new_run_page()


def test_the_new_run_form_reports_every_error_at_once_in_plain_words(runs_root, monkeypatch):
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    at = AppTest.from_function(_new_run_page, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    typed = {"Name": "no spaces", "Net": "2x8qx1t", "Learning rate (eta)": "-1", "Noise": "0.9", "Seed": "1.5"}
    for label, text in typed.items():
        next(t for t in at.text_input if t.label == label).input(text)
    next(b for b in at.button if b.label == "Create and start").click().run()
    assert not at.exception, at.exception
    (shown,) = [e.value for e in at.error]
    for says in ("net ", "Eta must be a number above 0", "noise must be", "Seed must be a whole number", "run name"):
        assert says in shown, f"{says!r} is missing from {shown!r}"
    assert "config:" not in shown
    assert list(runs_root.iterdir()) == [], "nothing was created"


def _compare_page() -> None:
    from nnobs.app.compare_page import compare_page

    compare_page()


def test_compare_shows_each_runs_loss_over_its_newest_batches_and_when_it_was_tested(runs_root, monkeypatch):
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    noisy_run(runs_root, "sweep-eta0.1-seed1")
    noisy_run(runs_root, "sweep-eta0.1-seed2")
    at = AppTest.from_function(_compare_page, default_timeout=60)
    at.query_params["runs"] = ["sweep-eta0.1-seed1", "sweep-eta0.1-seed2"]
    at.run()
    assert not at.exception, at.exception
    figures = next(d.value for d in at.dataframe if "tested at" in d.value.columns)
    assert figures.index.tolist() == ["sweep-eta0.1-seed1", "sweep-eta0.1-seed2"]
    assert (0.28 < figures["loss"]).all() and (figures["loss"] < 0.31).all(), "not the last minibatch's 0.0067"
    assert figures["tested at"].tolist() == [1, 1] and figures["batch"].tolist() == [5000, 5000]


def test_compare_puts_runs_that_span_decades_on_a_log_batch_axis_and_offers_the_linear_one(runs_root, monkeypatch):
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    noisy_run(runs_root, "sweep-eta0.1-seed1")  # batches 1 to 5,000: past three decades
    at = AppTest.from_function(_compare_page, default_timeout=60)
    at.query_params["runs"] = ["sweep-eta0.1-seed1"]
    at.run()
    assert not at.exception, at.exception

    def batch_scales() -> list:
        return [json.loads(c.proto.spec)["encoding"]["x"].get("scale", {}) for c in at.get("vega_lite_chart")]

    assert batch_scales() and all(scale.get("type") == "log" for scale in batch_scales()), "auto: log"
    at.segmented_control(key="compare_x").set_value("linear").run()
    assert batch_scales() and all(scale.get("type") != "log" for scale in batch_scales())


def test_a_script_run_that_reports_no_parameters_says_so_instead_of_empty_charts(page, runs_root):
    import nnobs

    with nnobs.Run("no-state", root=runs_root, target=60) as run:  # no trainer, no state: only a loss
        for batch in run.batches():
            run.log(1.0 / batch)
            if batch >= 60:
                break
    page.query_params["run"] = "no-state"
    page.run()
    assert not page.exception, page.exception
    assert any("This run reports no parameters" in c.value for c in page.caption)
