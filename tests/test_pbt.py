"""Population-based training with real workers and a real controller process: exploits at the interval, a donor's
checkpoint taken bit for bit, every exploit recorded and marked, a controller killed at random moments deciding as an
uninterrupted one, fewer places than members, a member steered by hand, and a population on Slurm."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, kill_worker, records_with, wait_for, wait_started
from nnobs.lab import pbt_controller
from nnobs.protocol.population import Journal, folder_of, load_population
from nnobs.launching.lifecycle import worker_pid
from nnobs.protocol.checkpoint import load_checkpoint_meta
from nnobs.protocol.commands import marker_label
from nnobs.protocol.control import queue_command, read_commands
from nnobs.protocol.records import read_all
from nnobs.protocol.rundir import RunDir
from nnobs.reading.watcher import read_history
from slurm_support import cancel_jobs_under, slurm  # noqa: F401 (fixture)

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
INTERVAL = 1000
# A small population on a task with a test set: 4 members, 6 rounds of 1,000 batches, a state report at every
# round's end (report_every), so that each donor's own parameters there are in its run file.
SETTINGS = ("--population", "4", "--eta", "0.01..1", "--task", "circle", "--target", "6000",
            "--interval", str(INTERVAL), "--report-every", str(INTERVAL))


def nnobs(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), *args], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"nnobs {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.fixture
def populations(runs_root: Path):
    """runs_root, and at teardown every population's controller in it stopped (before its members' workers are)."""
    yield runs_root
    for folder in (runs_root / ".populations").glob("*"):
        pbt_controller.stop_controller(runs_root, folder.name)


def done(root: Path, name: str, timeout: float = 120) -> Journal:
    return wait_for(lambda: (j := Journal(folder_of(root, name) / "decisions.jsonl")).done and j,
                    timeout=timeout, what=f"the population {name} to finish")


def member_index(name: str) -> int:
    return int(name.rsplit("-m", 1)[1])


def shape_of(journal: Journal) -> list:
    """The decisions as member indexes, scores and etas: what two populations of different names share."""
    return [
        (r, entry["batch"], [(member_index(m), s) for m, s in entry["scores"].items()],
         [(member_index(e["member"]), member_index(e["donor"]), e["batch"], e["eta_before"], e["eta"], e["how"])
          for e in entry["exploits"]])
        for r, entry in sorted(journal.decided.items())
    ]


def state_at(run: RunDir, batch: int) -> np.ndarray:
    """The run's own state report of batch (the last one, as a resumed worker may report a batch again)."""
    found = [r["sv"][1] for r in records_with(run, "sv") if r["sv"][0] == batch and "exploited" not in r]
    assert found, f"{run.name} reported no state at batch {batch}"
    return np.array(found[-1])


def test_exploits_happen_at_the_interval_take_the_donors_parameters_bit_for_bit_and_are_recorded_and_marked(
        populations):
    root = populations
    said = nnobs(root, "sweep", "pop", "--pbt", *SETTINGS, "--wait").stdout
    journal = done(root, "pop")
    plan = load_population(folder_of(root, "pop"))
    assert "every member trained to batch 6,000" in said
    assert sorted(journal.decided) == [0, 1, 2, 3, 4]  # after every interval but the last
    for index, entry in journal.decided.items():
        assert entry["batch"] == INTERVAL * (index + 1)
        assert len(entry["exploits"]) == 1  # the bottom quarter of 4
        ranked = sorted(entry["scores"], key=lambda m: entry["scores"][m])
        exploit = entry["exploits"][0]
        assert exploit["member"] == ranked[-1] and exploit["donor"] == ranked[0]
        if exploit["how"] == "resampled":
            assert plan.eta_range[0] <= exploit["eta"] <= plan.eta_range[1]
        else:
            factor = float(exploit["how"][1:])
            assert exploit["eta"] == pytest.approx(entry["etas"][exploit["donor"]] * factor, rel=1e-5)
        member, donor = RunDir(root / exploit["member"]), RunDir(root / exploit["donor"])
        acks = [r for r in records_with(member, "exploited") if r["ack"][1]["id"] == f"pop-r{index}-{member.name}"]
        assert len(acks) == 1, f"the exploit of round {index} is answered once: {acks}"
        ack = acks[0]
        assert ack["ack"][0] == entry["batch"]  # at the interval's end
        assert ack["exploited"] == {"from": donor.name, "batch": entry["batch"],
                                    "eta": [exploit["eta_before"], exploit["eta"]]}
        assert ack["eta"] == [entry["batch"], exploit["eta"]]
        # The member's parameters after the exploit, as its own state report says them, are the donor's, as the
        # donor's own state report at that batch says them: bit for bit.
        assert np.array_equal(np.array(ack["sv"][1]), state_at(donor, entry["batch"]))
        label = marker_label("exploit", ack["ack"][1]["value"], ack)
        assert label.startswith(f"exploit: {donor.name}'s batch")
        assert any(marker.label == label and marker.batch == entry["batch"] for marker in read_history(member).markers)
    for name in plan.members:
        history = read_history(RunDir(root / name))
        assert history.batch == 6000
        ids = [c["id"] for c in read_commands(RunDir(root / name).control_file)]
        assert len(ids) == len(set(ids))  # no command sent twice
        assert worker_pid(RunDir(root / name)) is None  # stopped at the end


def test_a_controller_killed_at_random_moments_and_started_again_decides_as_an_uninterrupted_one(populations):
    root = populations
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    draw = random.Random(seed)
    nnobs(root, "sweep", "calm", "--pbt", *SETTINGS, "--pace", "4000")
    nnobs(root, "sweep", "hit", "--pbt", *SETTINGS, "--pace", "4000")
    kills = 0
    journal = Journal(folder_of(root, "hit") / "decisions.jsonl")
    while not journal.done:
        time.sleep(draw.uniform(0.05, 0.6))  # a random moment of the controller's life: the seed above replays them
        pid = pbt_controller.controller_pid(root, "hit")
        if pid is not None and pid > 0:
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pbt_controller.controller_pid(root, "hit") is None, what="the killed controller's lock")
            kills += 1
        journal = Journal(folder_of(root, "hit") / "decisions.jsonl")
        if not journal.done:
            nnobs(root, "sweep", "hit", "--pbt")  # started again: it goes on from its journal
    calm = done(root, "calm")
    print(f"the controller was killed {kills} times")
    assert kills >= 3
    assert shape_of(journal) == shape_of(calm)
    for name in load_population(folder_of(root, "hit")).members:
        run = RunDir(root / name)
        ids = [c["id"] for c in read_commands(run.control_file)]
        assert len(ids) == len(set(ids))
        exploited = [r["ack"][1]["id"] for r in records_with(run, "exploited")]
        assert len(exploited) == len(set(exploited)), f"{name} took an exploit twice: {exploited}"


def test_with_fewer_places_than_members_they_train_in_rounds_and_decide_as_with_all(populations):
    root = populations
    nnobs(root, "sweep", "all", "--pbt", *SETTINGS)
    nnobs(root, "sweep", "two", "--pbt", *SETTINGS, "--parallel", "2")
    members = [RunDir(root / f"two-m{i}") for i in range(4)]
    most = 0
    journal = Journal(folder_of(root, "two") / "decisions.jsonl")
    while not journal.done:
        most = max(most, sum(worker_pid(run) is not None for run in members))
        journal = Journal(folder_of(root, "two") / "decisions.jsonl")
    assert most == 2
    assert shape_of(journal) == shape_of(done(root, "all"))
    for run in members:  # each stopped at every round's end, to free its place
        assert len([r for r in records_with(run, "event") if r["event"][1] == "started"]) == 6


def test_a_member_steered_by_hand_keeps_its_eta_until_its_next_exploit(populations):
    root = populations
    nnobs(root, "sweep", "steer", "--pbt", *SETTINGS, "--pace", "2000")
    member = RunDir(root / "steer-m0")
    wait_for(lambda: read_history(member).batch > 1500, what="the population's second round")
    command = queue_command(member, "eta", 0.0123, by="cli")
    journal = done(root, "steer")
    records = read_all(member.run_file)
    acked = next(i for i, r in enumerate(records) if "ack" in r and r["ack"][1]["id"] == command["id"])
    set_at = records[acked]["ack"][0]
    exploits = [e for _, entry in sorted(journal.decided.items()) for e in entry["exploits"] if e["member"] == member.name]
    later = [i for i, r in enumerate(records) if i > acked and "exploited" in r]
    until = records[later[0]]["ack"][0] if later else 6001
    etas = [r["eta"] for r in records[acked : later[0] if later else None] if "eta" in r]
    assert len(etas) > 3 and all(eta == 0.0123 for _, eta in etas), etas  # every state report's, in file order
    for index, entry in journal.decided.items():
        if set_at < entry["batch"] <= until:
            assert entry["etas"][member.name] == 0.0123  # what the controller saw, and perturbs if it donates
    if later:
        assert next(e for e in exploits if e["batch"] == until)["eta_before"] == 0.0123
    sent = [c for c in read_commands(member.control_file) if c.get("by") == "pbt"]
    assert {c["cmd"] for c in sent} <= {"target", "exploit", "shutdown"}  # the controller never sets eta itself


def test_a_population_on_slurm_is_one_job_array_and_exploits_at_the_interval(slurm, populations):
    root = populations
    try:
        said = nnobs(root, "sweep", "sl", "--pbt", "--population", "3", "--eta", "0.01..1", "--task", "circle",
                     "--target", "3000", "--interval", str(INTERVAL), "--report-every", str(INTERVAL),
                     "--on", "slurm", "--wait").stdout
        assert "submitted sl-m0, sl-m1, sl-m2 as job array" in said
        journal = done(root, "sl")
        assert sorted(journal.decided) == [0, 1]
        for index, entry in journal.decided.items():
            exploit = entry["exploits"][0]
            ack = next(r for r in records_with(RunDir(root / exploit["member"]), "exploited")
                       if r["ack"][1]["id"] == f"sl-r{index}-{exploit['member']}")
            assert ack["ack"][0] == entry["batch"] == INTERVAL * (index + 1)
            assert ack["eta"] == [entry["batch"], exploit["eta"]]
            assert np.array_equal(np.array(ack["sv"][1]), state_at(RunDir(root / exploit["donor"]), entry["batch"]))
    finally:
        cancel_jobs_under(root.parent)


def test_bad_population_settings_are_refused_and_nothing_is_made(runs_root):
    cases = [
        (("--eta", "0.1,1"), "a range LO..HI"),
        (("--eta", "1..0.1"), "0 < LO < HI"),
        (("--eta", "0.01..1", "--population", "1"), "2 to 256 members"),
        (("--eta", "0.01..1", "--interval", "5000", "--target", "5000"), "below the target"),
        (("--eta", "0.01..1", "--quantile", "0.7"), "at most 0.5"),
        (("--eta", "0.01..1", "--resample", "2"), "probability from 0 to 1"),
        (("--population", "4"), "--pbt needs --eta LO..HI"),
        (("--eta", "0.01..1", "--population", "0"), "2 to 256 members"),
        (("--eta", "0.01..1", "--interval", "0"), "--interval 0 refused"),
        (("--eta", "0.01..1", "--metric", "accuracy"), "ranked by test_loss or loss"),
        (("--eta", "0.01..1", "--task", "xor", "--metric", "test_loss"), "the xor task has no test set"),
        (("--eta", "0.01..1", "--eta-schedule", "0:0.1"), "take no --eta-schedule"),
        (("--stop",), "there is no population named bad"),
    ]
    for args, said in cases:
        done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "bad", "--pbt",
                               *args], env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
    done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "bad", "--eta",
                           "0.1,1", "--interval", "10"], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "add --pbt" in done.stderr
    assert not any(runs_root.iterdir()) or not (runs_root / ".populations").exists()
    assert not list(runs_root.glob("bad*"))


SCRIPT = """
import numpy as np
import nnobs

rng = np.random.default_rng(0)
w, goal = np.zeros(5), np.arange(5.0)


def save(path):
    with open(path, "wb") as f:
        np.save(f, w)


def load(path):
    with open(path, "rb") as f:
        w[:] = np.load(f)


with nnobs.Run("script", state=lambda: w, save=save, load=load, eta=0.01, report_every=1000) as run:
    for batch in run.batches():
        x = rng.normal(size=5)
        error = x @ (w - goal)
        w -= run.eta * error * x
        run.log(float(error**2))
"""


def test_a_population_of_a_scripts_runs_exploits_through_its_own_save_and_load(populations, tmp_path):
    root = populations
    (tmp_path / "train.py").write_text(SCRIPT)
    done_ = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), "sweep", "sp", "--pbt",
                            "--population", "4", "--eta", "0.001..0.3", "--target", "3000", "--interval", "1000",
                            "--wait", "--", sys.executable, "train.py"],
                           env=ENV, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done_.returncode == 0, done_.stderr
    journal = done(root, "sp")
    assert sorted(journal.decided) == [0, 1]
    plan = load_population(folder_of(root, "sp"))
    assert plan.metric == "loss"  # a script's population is ranked by its training loss unless told
    for index, entry in journal.decided.items():
        exploit = entry["exploits"][0]
        member = RunDir(root / exploit["member"])
        ack = next(r for r in records_with(member, "exploited") if r["ack"][1]["id"] == f"sp-r{index}-{member.name}")
        assert ack["ack"][0] == entry["batch"] and ack["eta"] == [entry["batch"], exploit["eta"]]
        # The member's parameters after the exploit, through the script's own save and load, are the donor's at that
        # batch as the donor's own state report says them; the file taken is dropped once the member has applied it.
        assert np.array_equal(np.array(ack["sv"][1]), state_at(RunDir(root / exploit["donor"]), entry["batch"]))
    for name in plan.members:
        assert not list((root / name / "exploits").glob("*-1000.npz")), "applied in round 1, checkpointed since"
    for name in plan.members:  # each script ended at every round's end and was started again: its run goes on
        run = RunDir(root / name)
        assert read_history(run).batch == 3000
        assert len([r for r in records_with(run, "event") if r["event"][1] == "started"]) == 3


def test_a_scripts_population_refuses_the_built_in_workers_settings(runs_root):
    said = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "sp", "--pbt",
                           "--eta", "0.01..1", "--task", "spiral", "--", sys.executable, "train.py"],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert said.returncode == 2 and "--task is a setting of the built-in worker" in said.stderr
    said = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "sweep", "sp", "--eta",
                           "0.1,1", "--", sys.executable, "train.py"], env=ENV, capture_output=True, text=True,
                          timeout=60)
    assert said.returncode == 2 and "add --pbt" in said.stderr
    assert not list(runs_root.glob("sp*"))


def test_an_eta_schedule_sets_each_step_at_its_batch_through_a_crash_and_a_hand_set_eta_holds_until_the_next(
        runs_root):
    nnobs(runs_root, "new", "sched", "--task", "circle", "--target", "3500", "--pace", "400",
          "--eta-schedule", "0:0.3,1000:0.5,2500:0.05")
    run = RunDir(runs_root / "sched")
    wait_for(lambda: (load_checkpoint_meta(run.checkpoint) or {}).get("batch", 0) > 1000, timeout=60,
             what="a checkpoint past the schedule's second step")
    kill_worker(run)  # a crash between two steps: the one passed is in the checkpoint, the next still to come
    nnobs(runs_root, "start", "sched")
    resumed = wait_started(run, 2)["event"][0]
    assert 1000 < resumed < 2500
    wait_for(lambda: read_history(run).batch > resumed, what="the resumed run")
    command = queue_command(run, "eta", 0.0123, by="cli")
    wait_for(lambda: read_history(run).batch == 3500, timeout=60, what="the run's target")
    records = read_all(run.run_file)
    steps = [(r["eta"][0], r["eta"][1]) for r in records if r.get("event", [0, ""])[1] == "eta_scheduled"]
    assert steps == [(0, 0.3), (1000, 0.5), (2500, 0.05)]  # each once, the crash notwithstanding
    set_at = next(i for i, r in enumerate(records) if "ack" in r and r["ack"][1]["id"] == command["id"])
    until = next(i for i, r in enumerate(records) if r.get("event", [0, ""])[1] == "eta_scheduled" and
                 r["eta"][0] == 2500)
    assert all(r["eta"][1] == 0.0123 for r in records[set_at:until] if "eta" in r)
    assert read_history(run).eta == 0.05
    markers = [(m.batch, m.label) for m in read_history(run).markers if m.label.endswith("(schedule)")]
    assert markers == [(0, "eta 0.3 (schedule)"), (1000, "eta 0.5 (schedule)"), (2500, "eta 0.05 (schedule)")]
    refused = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), "new", "bad",
                              "--eta-schedule", "0:0.3,1000:-1"], env=ENV, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "eta must be a number above 0" in refused.stderr
    assert not (runs_root / "bad").exists()


def test_members_whose_loss_diverges_are_exploited_and_do_not_hold_the_population_up(populations):
    root = populations
    # etas up to 50 on the plane regression: some members diverge within a hundred batches and wait for a new eta
    said = nnobs(root, "sweep", "dv", "--pbt", "--population", "4", "--eta", "0.01..50", "--task", "plane",
                 "--target", "2000", "--interval", "500", "--wait").stdout
    journal = done(root, "dv", timeout=60)
    first = journal.decided[0]
    unscored = [m for m, score in first["scores"].items() if score is None]
    assert unscored, f"some member diverged in the first round: {first['scores']}\n{said}"
    assert {e["member"] for e in first["exploits"]} <= set(unscored)  # the bottom: those without a score
    assert all(first["scores"][e["donor"]] is not None for e in first["exploits"])  # a donor has a score
    for exploit in first["exploits"]:
        ack = next(r for r in records_with(RunDir(root / exploit["member"]), "exploited"))
        assert ack["ack"][0] < 500  # taken where it waited: the batch it diverged at


def test_a_member_stopped_by_hand_leaves_and_one_restarted_by_hand_stays(populations):
    root = populations
    nnobs(root, "sweep", "hand", "--pbt", *SETTINGS, "--pace", "2000")
    wait_for(lambda: read_history(RunDir(root / "hand-m1")).batch > 1200, what="the population's second round")
    nnobs(root, "restart", "hand-m1")
    nnobs(root, "stop", "hand-m2")
    journal = done(root, "hand")
    assert journal.left == {"hand-m2": "stopped by hand"}
    assert read_history(RunDir(root / "hand-m1")).batch == 6000
    assert read_history(RunDir(root / "hand-m2")).batch < 6000
    later = [entry for entry in journal.decided.values() if "hand-m2" not in entry["scores"]]
    assert later and not any("hand-m2" in (e["member"], e["donor"]) for entry in later for e in entry["exploits"])


def test_a_rewound_run_takes_its_schedule_again_and_a_fork_given_its_own_eta_leaves_it(runs_root):
    nnobs(runs_root, "new", "sr", "--task", "circle", "--target", "1500", "--eta-schedule", "0:0.3,1000:0.05")
    run = RunDir(runs_root / "sr")
    wait_for(lambda: read_history(run).batch == 1500, what="the run at its target")
    nnobs(runs_root, "rewind", "sr", "--to", "900", "--yes")
    rewound_to = wait_for(lambda: next((r["event"][0] for r in records_with(run, "event")
                                        if r["event"][1] == "rewound"), None), what="the rewind")
    assert rewound_to < 1000
    wait_for(lambda: read_history(run).batch == 1500, what="the rewound run back at its target")
    steps = [r["eta"] for r in records_with(run, "event") if r["event"][1] == "eta_scheduled"]
    assert steps == [[0, 0.3], [1000, 0.05], [1000, 0.05]]  # the step at 1,000 taken again on the way back
    nnobs(runs_root, "fork", "sr", "sr-hot", "--eta", "0.9", "--target", "1700", "--at", "900")
    fork = RunDir(runs_root / "sr-hot")
    wait_for(lambda: read_history(fork).batch == 1700, what="the fork at its target")
    assert not [r for r in records_with(fork, "event") if r["event"][1] == "eta_scheduled"]
    assert read_history(fork).eta == 0.9
