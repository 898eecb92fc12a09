"""The page driven through Streamlit's AppTest: a real script run, a real worker, real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import events, kill_worker, wait_for
from nnobs.page import _wrong_guesses
from nnobs.runs import worker_pid

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def page(runs_root, monkeypatch):
    """The page on runs_root, as a freshly started server shows it; the caller runs it."""
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    _wrong_guesses.clear()  # the server's count of wrong passwords, kept across sessions in this process
    return AppTest.from_file(APP, default_timeout=60)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def state(at: AppTest) -> str:
    """The state badge's text, e.g. "IDLE"."""
    header = next(m.value for m in at.markdown if "-badge[" in m.value)
    return header.split("-badge[", 1)[1].split("]", 1)[0]


def generation(at: AppTest) -> int | None:
    """The worker generation, from the caption under the header."""
    text = next((c.value for c in at.caption if c.value.startswith("Generation ")), "Generation -")
    number = text.split(" ")[1]
    return int(number) if number.isdigit() else None


def rerun_until(at: AppTest, predicate, what: str) -> None:
    def check():
        at.run()
        assert not at.exception, at.exception
        return predicate(at)

    wait_for(check, what=what)


def has_button(at: AppTest, label: str) -> bool:
    return any(b.label == label for b in at.sidebar.button)


def button(at: AppTest, label: str):
    """A sidebar button by its label, inside a confirmation popover or not."""
    return next(b for b in at.sidebar.button if b.label == label)


def test_page_starts_a_new_run_and_steers_it_from_the_sidebar(page, new_run):
    run = new_run("default", target=0)
    page.run()
    assert not page.exception, page.exception
    assert worker_pid(run) is not None, "opening the page starts a run that never ran"
    rerun_until(page, lambda at: state(at) == "IDLE", "the idle badge of a run at target 0")

    target = next(n for n in page.sidebar.number_input if n.label == "Target batches")
    target.set_value(3000)
    button(page, "Set target").click().run()
    assert any("pending" in m.value or "done at batch" in m.value for m in page.markdown), "the command is listed"
    rerun_until(page, lambda at: metrics(at)["Batch"] == "3,000" and state(at) == "IDLE", "batch 3,000, idle")
    assert any("`target = 3000` by you: :green[done at batch" in m.value for m in page.markdown)

    button(page, "Yes, shut down").click().run()
    rerun_until(page, lambda at: state(at) == "STOPPED" and has_button(at, "Start"), "STOPPED and a Start button")
    assert worker_pid(run) is None

    button(page, "Start").click().run()
    rerun_until(page, lambda at: state(at) == "IDLE" and generation(at) == 2, "generation 2 after Start")
    assert metrics(page)["Batch"] == "3,000", "the new generation resumes where the last one stopped"


def test_page_shows_a_killed_worker_as_crashed_with_its_log_and_restarts_it(page, new_run):
    run = new_run("default", target=0)
    page.run()
    wait_for(lambda: events(run, "started"), what="the worker's start record")
    kill_worker(run)
    rerun_until(page, lambda at: state(at) == "CRASHED" and has_button(at, "Restart"), "CRASHED and a Restart button")
    assert any("worker died" in e.value for e in page.error)
    assert any("nnobs worker" in c.value for c in page.code), "the tail of worker.log is shown"

    button(page, "Restart").click().run()
    rerun_until(page, lambda at: state(at) == "IDLE" and generation(at) == 2, "generation 2 after Restart")


def test_page_refuses_a_bad_run_name_in_the_url(page, runs_root):
    page.query_params["run"] = "../etc"
    page.run()
    assert any("refused" in e.value for e in page.error)
    assert list(runs_root.iterdir()) == [] and not (runs_root.parent / "etc").exists(), "nothing was created"


def test_page_explains_a_refused_eta_and_sends_nothing(page, new_run):
    run = new_run("default", target=0)
    page.run()
    eta = next(n for n in page.sidebar.number_input if n.label == "Learning rate (eta)")
    eta.set_value(-1.0)
    button(page, "Set eta").click().run()
    assert any("eta must be a number above 0" in e.value for e in page.sidebar.error)
    assert not run.control_file.exists() or '"eta"' not in run.control_file.read_text()


def test_page_shows_a_diverged_run_and_its_recovery_when_eta_is_lowered(page, new_run):
    new_run("default", activation="identity", eta=5.0, target=10**9)  # a linear net this eta blows up at once
    page.run()
    rerun_until(page, lambda at: "DIVERGED" in next(m.value for m in at.markdown if "-badge[" in m.value),
                "the DIVERGED badge")
    assert state(page) == "IDLE" and metrics(page)["Loss"] == "diverged"
    assert any("lower eta" in w.value for w in page.warning)

    eta = next(n for n in page.sidebar.number_input if n.label == "Learning rate (eta)")
    eta.set_value(0.01)
    button(page, "Set eta").click().run()
    rerun_until(page, lambda at: state(at) == "TRAINING" and metrics(at)["Loss"] != "diverged", "training again")
    assert not any("DIVERGED" in m.value for m in page.markdown if "-badge[" in m.value)


def sign_in(at: AppTest, password: str) -> None:
    next(t for t in at.sidebar.text_input if t.label == "Operator password").input(password)
    button(at, "Sign in").click().run()


def test_with_an_operator_password_viewers_see_the_run_read_only_until_they_sign_in(page, new_run):
    run = new_run("default", target=0)
    page.secrets["operator_password"] = "s3cret"
    page.run()
    assert not page.exception, page.exception
    assert not has_button(page, "Set target") and not has_button(page, "Tell state now"), "no controls for viewers"
    assert worker_pid(run) is None, "a viewer's visit starts nothing"
    assert any("not started yet" in i.value for i in page.info)

    sign_in(page, "guess")
    assert any("Wrong password" in e.value for e in page.sidebar.error)
    assert not has_button(page, "Set target") and worker_pid(run) is None

    sign_in(page, "s3cret")
    assert has_button(page, "Set target") and has_button(page, "Sign out")
    assert worker_pid(run) is not None, "the operator's visit starts the run that never ran"
    rerun_until(page, lambda at: state(at) == "IDLE", "the idle badge")
    target = next(n for n in page.sidebar.number_input if n.label == "Target batches")
    target.set_value(2000)
    button(page, "Set target").click().run()
    rerun_until(page, lambda at: metrics(at)["Batch"] == "2,000", "batch 2,000 after the operator's target")


def _act_as_signed_in_with(entered: str) -> None:
    """A script run that sends tell_state and starts the run for a session signed in with entered."""
    from pathlib import Path

    import streamlit as st

    from nnobs import page
    from nnobs.runs import RunDir

    run = RunDir(Path(st.query_params["run_dir"]))
    st.session_state["operator_entered"] = entered
    page._send(run, "tell_state")
    page._start(run)
    st.write(st.session_state.get("refused_tell_state", "sent"), st.session_state.get("refused_start", "started"))


@pytest.mark.parametrize("entered, allowed", [("current", True), ("before it changed", False)])
def test_every_action_checks_the_operator_password_again_on_the_server(new_run, entered, allowed):
    run = new_run("default", target=0)
    act = AppTest.from_function(_act_as_signed_in_with, args=(entered,), default_timeout=60)
    act.secrets["operator_password"] = "current"
    act.query_params["run_dir"] = str(run.path)
    act.run()
    assert not act.exception, act.exception
    said = " ".join(m.value for m in act.markdown)
    if allowed:
        assert "sent started" in said and worker_pid(run) is not None and run.control_file.exists()
    else:
        assert said.count("Only operators steer this run") == 2
        assert worker_pid(run) is None and not run.control_file.exists(), "nothing was sent or started"


def test_a_viewer_cannot_create_a_run_by_naming_it_in_the_url(page, runs_root):
    page.secrets["operator_password"] = "s3cret"
    page.query_params["run"] = "brand-new"
    page.run()
    assert not page.exception, page.exception
    assert any("no run named" in i.value for i in page.info)
    assert not (runs_root / "brand-new").exists()


def test_unreadable_lines_in_the_run_file_are_skipped_and_counted_on_the_page(page, new_run):
    run = new_run("default", target=0)
    page.run()
    wait_for(lambda: events(run, "started"), what="the worker's start record")
    with open(run.run_file, "ab") as f:  # O_APPEND, beside the worker's own appends
        f.write(b'{"loss": [5, 0.1]\n\xff\xfe not json\n')
    rerun_until(page, lambda at: any("2 unreadable lines skipped" in c.value for c in at.caption), "the count shown")
    assert state(page) == "IDLE" and not page.exception


def test_a_changed_password_turns_a_signed_in_page_read_only(page, new_run):
    new_run("default", target=0)
    page.secrets["operator_password"] = "old"
    page.run()
    sign_in(page, "old")
    assert has_button(page, "Set target")

    page.secrets["operator_password"] = "new"
    page.run()
    assert not has_button(page, "Set target") and any("Read-only" in i.value for i in page.sidebar.info)


def test_after_ten_wrong_passwords_on_the_server_even_the_right_one_waits(page, new_run):
    new_run("default", target=0)
    page.secrets["operator_password"] = "s3cret"
    page.run()
    for _ in range(10):
        sign_in(page, "guess")
        assert any("Wrong password" in e.value for e in page.sidebar.error)
    sign_in(page, "s3cret")
    assert any("Too many wrong passwords" in e.value for e in page.sidebar.error)
    assert not has_button(page, "Set target"), "no password is checked during the pause"
