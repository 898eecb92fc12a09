"""The page driven through Streamlit's AppTest: a real script run, a real worker, real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import events, kill_worker, wait_for
from nnobs.protocol.control import read_commands
from nnobs.reading.shared_readers import watcher_for as _watcher
from nnobs.app.widgets import wrong_guesses
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import worker_pid
from nnobs.lab.create import landing_of

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def page(runs_root, monkeypatch):
    """The page on runs_root, as a freshly started server shows it; the caller runs it."""
    monkeypatch.setenv("NNOBS_RUNS", str(runs_root))
    wrong_guesses.clear()  # the server's count of wrong passwords, kept across sessions in this process
    return AppTest.from_file(APP, default_timeout=60)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def metric(at: AppTest, label: str):
    return next(m for m in at.metric if m.label == label)


def header(at: AppTest) -> str:
    return next(m.value for m in at.markdown if "-badge[" in m.value)


def state(at: AppTest) -> str:
    """The state badge's text, e.g. "IDLE"."""
    return header(at).split("-badge[", 1)[1].split("]", 1)[0]


def generation(at: AppTest) -> int | None:
    """The worker generation, from the caption under the header: "Generation 2 (each start, ...) · ..."."""
    text = next((c.value for c in at.caption if c.value.startswith("Generation ")), "Generation -:")
    number = text.split(" ")[1].rstrip(":")
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
    """A sidebar button by its label."""
    return next(b for b in at.sidebar.button if b.label == label)


def dialog(at: AppTest):
    """The open confirmation dialog, or None."""
    return next(iter(at.get("dialog")), None)


def say_yes(at: AppTest, opener: str, yes: str) -> None:
    """Press a sidebar button that asks first ("Shut down…"), then the dialog's yes ("Yes, shut down")."""
    button(at, opener).click().run()
    assert dialog(at) is not None, f"{opener} asks first"
    next(b for b in at.button if b.label == yes).click().run()
    assert not at.exception, at.exception


def field(at: AppTest, label: str):
    return next(t for t in at.sidebar.text_input if t.label == label)


def submit(at: AppTest, label: str, typed: str, button_label: str) -> None:
    """Type into a sidebar field and press its form's button."""
    field(at, label).input(typed)
    button(at, button_label).click().run()
    assert not at.exception, at.exception


def form_of(at: AppTest, label: str):
    """The sidebar form holding the field labelled label."""
    return next(f for f in at.sidebar.get("form") if any(t.label == label for t in f.text_input))


def refusals(at: AppTest) -> list[str]:
    return [e.value for e in at.sidebar.error]


def commands_sent(run: RunDir) -> list[tuple[str, object]]:
    return [(c["cmd"], c["value"]) for c in read_commands(run.control_file)] if run.control_file.exists() else []


def commands_list(at: AppTest):
    return next(e for e in at.expander if e.label.startswith("Commands and starts"))


def listed(at: AppTest) -> str:
    return "\n".join(m.value for m in commands_list(at).markdown)


def test_page_starts_a_new_run_and_steers_it_from_the_sidebar(page, new_run):
    run = new_run("default", target=0)
    page.run()
    assert not page.exception, page.exception
    assert worker_pid(run) is not None, "opening the page starts a run that never ran"
    rerun_until(page, lambda at: state(at) == "IDLE", "the idle badge of a run at target 0")

    submit(page, "Target batches", "3,000", "Set target")
    assert commands_sent(run) == [("target", 3000)]
    rerun_until(page, lambda at: metrics(at)["Batch"] == "3,000" and state(at) == "IDLE", "batch 3,000, idle")
    assert "**Target 3,000 batches** from the page: :green[done at batch" in listed(page)
    assert field(page, "Target batches").value == "3,000", "the field follows the run"

    say_yes(page, "Shut down…", "Yes, shut down")
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
    assert metric(page, "Last record").delta == "worker died", "a dead worker's last record is no heartbeat"

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
    submit(page, "Learning rate (eta)", "-1", "Set eta")
    assert refusals(page) == ["Eta must be a number above 0 and at most 1,000,000, not “-1”."]
    assert commands_sent(run) == []


@pytest.mark.parametrize("label, typed, button_label, allowed", [
    ("Target batches", "abc", "Set target", "a whole number of batches from 0 to 1,000,000,000,000"),
    ("Target batches", "1.5", "Set target", "a whole number of batches from 0 to 1,000,000,000,000"),
    ("Target batches", "", "Set target", "a whole number of batches from 0 to 1,000,000,000,000"),
    ("Target batches", "10000000000000", "Set target", "a whole number of batches from 0 to 1,000,000,000,000"),
    ("Parameter snapshot every N batches", "1e13", "Set interval", "to 1,000,000,000,000"),
    ("Learning rate (eta)", "nan", "Set eta", "a number above 0"),
    ("Pace (batches a second)", "fast", "Set pace", "from 0 (flat out)"),
])
def test_a_typed_value_that_is_not_what_was_meant_is_refused_under_its_field_and_nothing_is_sent(
    page, new_run, label, typed, button_label, allowed
):
    run = new_run("default", target=0)
    page.run()
    submit(page, label, typed, button_label)
    assert len(refusals(page)) == 1 and allowed in refusals(page)[0]
    assert [e.value for e in form_of(page, label).error] == refusals(page), "the refusal shows under its own field"
    assert commands_sent(run) == [], "nothing is sent: not target 0, not 1, not a silently dropped click"
    page.run()
    assert len(refusals(page)) == 1, "the refusal stays while the page refreshes"


def test_a_new_submit_clears_every_older_refusal(page, new_run):
    run = new_run("default", target=0)
    page.run()
    submit(page, "Learning rate (eta)", "-1", "Set eta")
    submit(page, "Target batches", "lots", "Set target")
    assert len(refusals(page)) == 1 and "The target must be" in refusals(page)[0], "the eta refusal is gone"
    submit(page, "Target batches", "1e3", "Set target")
    assert refusals(page) == [] and commands_sent(run) == [("target", 1000)]


def test_presses_folded_into_one_rerun_are_all_done(page, new_run):
    run = new_run("default", target=0)
    page.run()
    # Two presses before the server runs the page once, as when their reruns are folded into one under load.
    field(page, "Target batches").input("2,000")
    button(page, "Set target").click()
    field(page, "Learning rate (eta)").input("0.2")
    button(page, "Set eta").click().run()
    assert not page.exception, page.exception
    assert commands_sent(run) == [("target", 2000), ("eta", 0.2)]


def test_pace_is_set_from_the_sidebar_and_shown(page, new_run):
    run = new_run("default", target=10**9)
    page.run()
    rerun_until(page, lambda at: state(at) == "TRAINING", "training")
    submit(page, "Pace (batches a second)", "50", "Set pace")
    assert commands_sent(run) == [("pace", 50.0)]
    rerun_until(page, lambda at: metric(at, "Batches/s").delta == "at most 50", "the pace under the rate")
    assert any("paced at most 50 batches a second" in c.value for c in page.caption)
    assert field(page, "Pace (batches a second)").value == "50"


def test_rewind_asks_first_then_goes_back_to_a_checkpoint_as_a_new_generation(page, new_run):
    run = new_run("default", target=10**9)
    page.run()
    rerun_until(page, lambda at: read_history(run).batch > 50_000, "training past batch 50,000")
    field(page, "Rewind to batch").input("1,000")
    button(page, "Rewind…").click().run()
    assert dialog(page) is not None and commands_sent(run) == [], "nothing is sent before yes"
    landed = landing_of(run, 1000, read_history(run).batch).landed
    assert landed is not None and 1000 / 1.25 <= landed <= 1000, "kept checkpoints lie close below any batch"
    assert f"the checkpoint kept at batch **{landed:,}**, the newest at or before batch 1,000 now" in \
        dialog(page).markdown[0].value, "the dialog says where the rewind lands"
    next(b for b in page.button if b.label == "Yes, rewind").click().run()
    assert dialog(page) is None and commands_sent(run) == [("rewind", 1000)]
    wait_for(lambda: events(run, "rewound"), what="the worker's rewound record")
    rerun_until(page, lambda at: "**Rewind to batch 1,000** from the page: :green[done" in listed(at), "rewind done")


def test_reinitialize_asks_first_and_refuses_a_fractional_seed(page, new_run):
    run = new_run("default", target=10**9)
    page.run()
    submit(page, "Reinitialize with seed", "1.5", "Reinitialize…")
    assert dialog(page) is None and "The seed must be blank" in refusals(page)[0], "a bad seed opens no dialog"
    field(page, "Reinitialize with seed").input("")
    button(page, "Reinitialize…").click().run()
    assert refusals(page) == [] and "the run's own seed" in dialog(page).markdown[0].value
    next(b for b in page.button if b.label == "Yes, reinitialize").click().run()
    assert commands_sent(run) == [("reinit", None)]
    rerun_until(page, lambda at: "Reinitialize with the run's own seed** from the page: :green[done" in listed(at),
                "reinit done")


def test_a_confirmation_closes_after_yes_or_cancel_and_does_not_come_back(page, new_run):
    run = new_run("default", target=0)
    page.run()
    button(page, "Shut down…").click().run()
    assert "saves a checkpoint and exits" in dialog(page).markdown[0].value
    next(b for b in page.button if b.label == "Cancel").click().run()
    assert dialog(page) is None and commands_sent(run) == []
    page.run()
    assert dialog(page) is None, "a cancelled dialog stays closed"

    say_yes(page, "Shut down…", "Yes, shut down")
    assert dialog(page) is None and commands_sent(run) == [("shutdown", None)]
    rerun_until(page, lambda at: state(at) == "STOPPED" and has_button(at, "Start"), "STOPPED and a Start button")
    assert dialog(page) is None


def test_commands_are_collapsed_under_a_summary_and_say_who_did_what_with_starts_newest_first(page, new_run):
    run = new_run("default", target=0)
    page.run()
    rerun_until(page, lambda at: state(at) == "IDLE", "idle")
    assert not commands_list(page).proto.expanded, "collapsed: the loss chart stays in view"
    say_yes(page, "Restart…", "Yes, restart")
    rerun_until(page, lambda at: generation(at) == 2 and "done" in listed(at), "generation 2, the shutdown answered")
    lines = listed(page).splitlines()
    assert lines[0] == "- **Worker started (generation 2)** from the page: resumed from the checkpoint at batch 0"
    assert lines[1].startswith("- **Shut down** by Restart on the page: :green[done at batch 0]")
    assert lines[2] == "- **Worker started (generation 1)** from the page: at batch 0"
    assert "by you" not in listed(page) and "by stop" not in listed(page)
    assert commands_list(page).label == "Commands and starts · none pending"

    kill_worker(run)
    submit(page, "Target batches", "500", "Set target")
    rerun_until(page, lambda at: state(at) == "CRASHED", "crashed")
    assert commands_list(page).label == "Commands and starts · 1 pending"
    assert "(waits for the next worker)" in listed(page).splitlines()[0]


def test_a_target_lowered_below_the_batch_reads_as_past_it(page, new_run):
    new_run("default", target=3000)
    page.run()
    rerun_until(page, lambda at: metrics(at)["Batch"] == "3,000" and state(at) == "IDLE", "idle at 3,000")
    submit(page, "Target batches", "1", "Set target")
    rerun_until(page, lambda at: at.get("progress")[0].text.startswith("Batch 3,000 is past the target of 1"),
                "the progress text of a lowered target")
    assert "of 1 target batches" not in page.get("progress")[0].text


def test_an_idle_runs_flat_loss_shows_no_change(page, new_run):
    run = new_run("default", target=2000)
    page.run()
    rerun_until(page, lambda at: state(at) == "IDLE", "idle at its target")
    rerun_until(page, lambda at: len(_watcher(str(run.run_file)).history.progress) >= 3,
                "the page to have watched the idle run for a second and more")
    for _ in range(3):
        page.run()
        assert metric(page, "Loss").delta == "", "an idle run's loss does not move: no +0.0%"


def test_a_run_stopped_at_its_first_state_report_says_its_lines_start_with_the_second(page, new_run):
    new_run("default", target=0)
    page.run()
    rerun_until(page, lambda at: state(at) == "IDLE", "idle at batch 0")
    said = [c.value for c in page.caption if c.value.startswith("One state report so far")]
    assert said == ["One state report so far, at batch 0: the parameters' lines start with the second."]


def test_controls_and_metrics_say_in_plain_words_what_they_do(page, new_run):
    new_run("default", target=0)
    page.run()
    rerun_until(page, lambda at: generation(at) == 1, "generation 1")
    labels = {b.label for b in page.sidebar.button} | {t.label for t in page.sidebar.text_input}
    assert "Tell state now" not in labels and "Snapshot parameters now" in labels
    assert not any("State report" in label for label in labels)
    forms_buttons = [b for b in page.sidebar.button if b.form_id]  # "Set eta": its field says what it sets
    for control in list(page.sidebar.text_input) + [b for b in page.sidebar.button if b not in forms_buttons]:
        assert control.help, f"{control.label} says what it does"
    assert all(m.help for m in page.metric), "every metric says what it is"
    assert "Heartbeat" not in metrics(page) and "Last record" in metrics(page)
    assert any(c.value.startswith("Generation 1 (each start, restart, rewind or reinitialize begins the next)") for c in page.caption)


def test_page_shows_a_diverged_run_and_its_recovery_when_eta_is_lowered(page, new_run):
    new_run("default", activation="identity", eta=5.0, target=10**9)  # a linear net this eta blows up at once
    page.run()
    rerun_until(page, lambda at: state(at) == "DIVERGED", "the DIVERGED badge")
    assert header(page).count("-badge[") == 1, "one badge: the run's state is diverged"
    assert metrics(page)["Loss"] == "diverged"
    assert any("lower eta" in w.value and "rewind" in w.value for w in page.warning)

    submit(page, "Learning rate (eta)", "0.01", "Set eta")
    rerun_until(page, lambda at: state(at) == "TRAINING" and metrics(at)["Loss"] != "diverged", "training again")


def test_a_run_that_stopped_learning_reads_as_not_learning_with_its_way_out(page, new_run):
    run = new_run("default", target=10**9)
    page.run()
    wait_for(lambda: (h := read_history(run)).batch > 200_000 and h.loss is not None and h.loss < 1e-20,
             timeout=120, what="XOR to converge")
    submit(page, "Learning rate (eta)", "50", "Set eta")  # far too high: the net saturates, its loss stuck high
    rerun_until(page, lambda at: state(at) == "NOT LEARNING", "the NOT LEARNING badge")
    assert header(page).count("-badge[") == 1, "one badge: the run's state is not learning"
    warning = next(w.value for w in page.warning if "not learning" in w.value)
    assert "**Lower eta**" in warning and "**rewind**" in warning and "far above its best" in warning


def sign_in(at: AppTest, password: str, where=None) -> None:
    where = where or at.sidebar
    next(t for t in where.text_input if t.label == "Operator password").input(password)
    next(b for b in where.button if b.label == "Sign in").click().run()


def test_with_an_operator_password_viewers_see_the_run_read_only_until_they_sign_in(page, new_run):
    run = new_run("default", target=0)
    page.secrets["operator_password"] = "s3cret"
    page.run()
    assert not page.exception, page.exception
    assert not has_button(page, "Set target") and not has_button(page, "Snapshot parameters now"), "no controls"
    assert worker_pid(run) is None, "a viewer's visit starts nothing"
    assert any("not started yet" in i.value for i in page.info)

    sign_in(page, "guess")
    assert any("Wrong password" in e.value for e in page.sidebar.error)
    assert not has_button(page, "Set target") and worker_pid(run) is None

    sign_in(page, "s3cret")
    assert has_button(page, "Set target") and has_button(page, "Sign out")
    assert worker_pid(run) is not None, "the operator's visit starts the run that never ran"
    rerun_until(page, lambda at: state(at) == "IDLE", "the idle badge")
    submit(page, "Target batches", "2000", "Set target")
    rerun_until(page, lambda at: metrics(at)["Batch"] == "2,000", "batch 2,000 after the operator's target")


def _act_as_signed_in_with(entered: str) -> None:
    """A script run that sends tell_state and starts the run for a session signed in with entered."""
    from pathlib import Path

    import streamlit as st

    from nnobs.app import run_controls as page
    from nnobs.protocol.rundir import RunDir

    run = RunDir(Path(st.query_params["run_dir"]))
    st.session_state["operator_entered"] = entered
    page._send(run, "tell_state")
    page._start(run)
    refused = st.session_state.get("refusals", {})
    st.write(refused.get("tell_state", "sent"), refused.get("start", "started"))


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


def test_a_viewer_cannot_create_a_run_by_naming_it_in_the_url_and_is_shown_the_sign_in(page, runs_root):
    page.secrets["operator_password"] = "s3cret"
    page.query_params["run"] = "brand-new"
    page.run()
    assert not page.exception, page.exception
    assert any("no run named" in i.value and "sign in" in i.value for i in page.info)
    assert not (runs_root / "brand-new").exists()
    assert any(t.label == "Operator password" for t in page.main.text_input), "the sign-in is right there"

    sign_in(page, "s3cret", where=page.main)
    assert not (runs_root / "brand-new").exists(), "signed in, the address alone still creates nothing"
    next(b for b in page.main.button if b.label == "Create and start brand-new").click().run()
    assert (runs_root / "brand-new" / "config.json").exists(), "the operator's button creates the run"
    wait_for(lambda: events(RunDir(runs_root / "brand-new"), "started"), what="the new run's start")


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
