"""`nnobs new`, `fork` and `list`: runs made, forked and listed by the real command, with real workers."""

from __future__ import annotations

import json

import pytest

from conftest import events, wait_for, wait_started
from test_cli import bytes_read_by_this_process, nnobs

from nnobs.protocol.checkpoint import load_checkpoint
from nnobs.protocol.records import encode_record
from nnobs.protocol.rundir import RunDir, list_runs
from nnobs.reading.origin import created_at, fork_origin
from nnobs.reading.watcher import read_history
from nnobs.views.frames import loss_means_frame
from nnobs.views.overview import read_row, run_rows, sparkline


def checkpointed(run: RunDir, beyond: int = 0) -> int:
    """Wait for a checkpoint beyond batch; its batch."""
    return wait_for(lambda: (c := load_checkpoint(run.checkpoint)) is not None and c.batch > beyond and c.batch,
                    what=f"{run.name} to checkpoint beyond batch {beyond}")


def test_fork_starts_at_its_parents_checkpoint_with_the_new_eta(runs_root, new_run):
    parent = new_run("parent", target=10**9)
    assert nnobs(runs_root, "start", "parent").returncode == 0
    checkpointed(parent, 5000)
    done = nnobs(runs_root, "fork", "parent", "child", "--eta", "0.3", "--target", "50000000")
    assert done.returncode == 0, done.stderr
    child = RunDir.named("child", runs_root)
    origin = fork_origin(child)
    started = wait_started(child)
    assert started["resumed_from"] == origin["batch"] > 5000  # its records start where the parent's checkpoint was
    assert started["gen"] == 1
    assert started["eta"][1] == 0.3 and started["target"][1] == 50_000_000
    assert origin["run"] == "parent" and origin["changed"] == {"eta": 0.3, "target": 50_000_000}
    assert origin["parent"]["eta"] == 0.1
    assert json.loads(child.config.read_text())["eta"] == 0.3
    history = wait_for(lambda: (h := read_history(child)).batch > origin["batch"] + 1000 and h, what="the fork to train")
    assert history.loss_batches.values().min() >= origin["batch"]  # no batch of the parent's is told again
    assert nnobs(runs_root, "stop", "parent").returncode == 0  # the two go on apart: stopping one leaves the other
    assert read_row(child).label == "training"
    assert nnobs(runs_root, "stop", "child").returncode == 0


def test_a_fork_from_a_kept_checkpoint_starts_at_or_before_the_batch_asked(runs_root, new_run):
    parent = new_run("parent", target=400_000)
    assert nnobs(runs_root, "start", "parent").returncode == 0
    # 400,000 XOR batches: seconds here, the better part of a minute on a loaded machine
    wait_for(lambda: events(parent, "target_reached"), timeout=120, what="the parent to reach its target")
    done = nnobs(runs_root, "fork", "parent", "early", "--at", "200000")
    assert done.returncode == 0, done.stderr
    batch = fork_origin(RunDir.named("early", runs_root))["batch"]
    assert batch <= 200_000
    assert wait_started(RunDir.named("early", runs_root))["resumed_from"] == batch


def test_a_script_run_is_listed_by_its_program_name_not_its_interpreters_path(runs_root):
    script = RunDir.named("script", runs_root)
    script.path.mkdir()
    script.description.write_text(json.dumps({"argv": ["/home/me/project/.venv/bin/python", "train.py", "--lr", "0.1"],
                                              "cwd": "/home/me/project"}))
    row = read_row(script)
    assert (row.task, row.net) == ("script", "python train.py --lr 0.1")


def test_forks_that_cannot_be_made_are_refused_and_create_nothing(runs_root, new_run):
    new_run("fresh")  # never started: no checkpoint
    script = RunDir.named("script", runs_root)
    script.path.mkdir()
    script.description.write_text(json.dumps({"argv": ["python", "train.py"], "cwd": "/tmp"}))
    cases = [
        (("fork", "nowhere", "a"), "no run named nowhere"),
        (("fork", "fresh", "a"), "no checkpoint yet"),
        (("fork", "script", "a"), "served by a script"),
        (("fork", "fresh", "fresh"), "exists already"),
        (("fork", "fresh", "a", "--eta", "-1"), "eta must be a number above 0"),
        (("fork", "fresh", "a", "--eta", "0.o3"), "invalid float value"),
        (("fork", "fresh", "../a"), "run name '../a' refused"),
    ]
    for args, said in cases:
        done = nnobs(runs_root, *args)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
    assert sorted(p.name for p in runs_root.iterdir()) == ["fresh", "script"]


def test_new_refuses_bad_settings_and_creates_nothing(runs_root):
    cases = [
        (("--task", "spirals"), "unknown task"),
        (("--net", "2x8qx1t"), "net"),
        (("--net", "2x0tx1t"), "net"),
        (("--task", "spiral", "--noise", "0.9"), "noise"),
        (("--task", "spiral", "--batch-size", "0"), "batch"),
        (("--task", "spiral", "--train-share", "1.5"), "train"),
        (("--eta", "0"), "eta"),
        (("--eta", "fast"), "invalid float value"),
    ]
    for args, said in cases:
        done = nnobs(runs_root, "new", "r", *args)
        assert done.returncode == 2 and said in done.stderr.lower(), (args, done.stderr)
        assert list(runs_root.iterdir()) == [], args
    assert nnobs(runs_root, "new", "default").returncode == 0
    done = nnobs(runs_root, "new", "default", "--task", "spiral")
    assert done.returncode == 2 and "exists already" in done.stderr
    assert json.loads(RunDir.named("default", runs_root).config.read_text())["task"] == "xor"  # the run kept its own


def test_new_trains_the_task_and_net_it_was_given(runs_root):
    done = nnobs(runs_root, "new", "spiral", "--task", "spiral", "--net", "2x8tx8tx1t", "--eta", "0.03",
                 "--batch-size", "16", "--noise", "0.1", "--seed", "3", "--target", "3000")
    assert done.returncode == 0, done.stderr
    run = RunDir.named("spiral", runs_root)
    config = json.loads(run.config.read_text())
    assert (config["task"], config["net"], config["eta"], config["batch_size"], config["noise"], config["seed"],
            config["target"]) == ("spiral", "2x8tx8tx1t", 0.03, 16, 0.1, 3, 3000)
    wait_for(lambda: events(run, "target_reached"), what="the spiral run to reach its target")
    row = read_row(run)
    assert (row.task, row.net, row.batch, row.label) == ("spiral", "2x8tx8tx1t", 3000, "idle")
    assert row.test_loss is not None


def test_list_shows_every_run_with_its_state_in_the_order_made(runs_root, new_run):
    for name in ("b-first", "a-second", "c-third"):
        new_run(name, target=2000)
        assert nnobs(runs_root, "start", name).returncode == 0
    for name in ("b-first", "a-second", "c-third"):
        wait_for(lambda: events(RunDir.named(name, runs_root), "target_reached"), what=f"{name} to reach its target")
    assert nnobs(runs_root, "stop", "a-second").returncode == 0
    rows = json.loads(nnobs(runs_root, "list", "--json").stdout)
    assert [r["name"] for r in rows] == ["b-first", "a-second", "c-third"]
    assert [r["label"] for r in rows] == ["idle", "stopped", "idle"]
    assert all(r["batch"] == 2000 and r["task"] == "xor" and r["net"] == "2x2tx1t" for r in rows)
    assert all(0 < r["loss"] < 0.2 and r["sparkline"] for r in rows)
    text = nnobs(runs_root, "list").stdout.splitlines()
    assert text[0].split()[:3] == ["RUN", "STATE", "TASK"]
    assert [line.split()[:2] for line in text[1:]] == [["b-first", "idle"], ["a-second", "stopped"], ["c-third", "idle"]]
    assert created_at(RunDir.named("b-first", runs_root)) <= created_at(RunDir.named("c-third", runs_root))
    by_name = [line.split()[0] for line in nnobs(runs_root, "list", "--sort", "name").stdout.splitlines()[1:]]
    assert by_name == ["a-second", "b-first", "c-third"]
    by_state = [line.split()[1] for line in nnobs(runs_root, "list", "--sort", "state").stdout.splitlines()[1:]]
    assert by_state == ["idle", "idle", "stopped"]
    done = nnobs(runs_root, "list", "--sort", "los")
    assert done.returncode == 2 and "invalid choice: 'los'" in done.stderr  # a typo is no order of its own
    for name in ("b-first", "c-third"):
        assert nnobs(runs_root, "stop", name).returncode == 0


def test_a_row_reads_a_bounded_part_of_a_long_run_file(runs_root, new_run):
    run = new_run("long")
    lines = (encode_record({"loss": [i, 1.0 / i], "window": [i, [1, 1.0 / i, i, 1.0 / i, i, 1.0 / i]], "t": 1.0 + i,
                            "gen": 1}) for i in range(1, 400_001))
    run.run_file.write_bytes(b"".join(lines))
    size = run.run_file.stat().st_size
    before = bytes_read_by_this_process()
    row = read_row(run)
    line = sparkline(run.run_file)
    read = bytes_read_by_this_process() - before
    assert size > 40_000_000 and read < 1_000_000, (size, read)
    assert row.batch == 400_000 and row.label == "stopped"  # no worker, no start record
    assert row.loss == pytest.approx(1.0 / 399_950.5, rel=1e-6)  # the mean of the newest 100 batches' losses
    batches = [b for b, _ in line]
    assert batches == sorted(batches) and batches[0] < 1000 and batches[-1] > 390_000 and len(batches) >= 30
    assert all(abs(loss - 1.0 / b) < 1e-6 for b, loss in line)  # each point is the loss at its batch


def test_the_sparklines_end_is_the_last_windows_mean_not_a_shutdowns_repeat_of_one_minibatch(runs_root, new_run):
    run = new_run("ended")
    run.run_file.write_bytes(b"".join(encode_record(r) for r in [
        {"loss": [100, 0.5], "window": [100, [100, 0.1, 3, 0.9, 7, 0.5]], "t": 1.0, "gen": 1},
        {"loss": [200, 0.002], "window": [200, [100, 0.001, 150, 0.1, 120, 0.03]], "t": 2.0, "gen": 1},
        {"loss": [200, 0.002], "event": [200, "shutdown"], "t": 3.0, "gen": 1},  # no window: the last loss again
    ]))
    assert sparkline(run.run_file)[-1] == (200, 0.03)
    history = read_history(run)
    assert loss_means_frame(history)["mean"].tolist()[-1] == 0.03, "the smoothed line's end, likewise"


def test_rows_of_runs_that_did_not_change_are_not_read_again(runs_root, new_run):
    run = new_run("still")
    run.run_file.write_bytes(b"".join(encode_record({"loss": [i, 0.5], "t": 1.0 + i, "gen": 1}) for i in range(1, 5000)))
    assert [r.name for r in run_rows(runs_root)] == ["still"]
    before = bytes_read_by_this_process()
    assert [r.batch for r in run_rows(runs_root)] == [4999]
    assert bytes_read_by_this_process() - before < 10_000  # the directory listing and a stat or two
    with open(run.run_file, "ab") as f:
        f.write(encode_record({"loss": [5000, 0.25], "t": 5001.0, "gen": 1}))
    assert [(r.batch, r.loss) for r in run_rows(runs_root)] == [(5000, 0.4975)]  # the newest 100 batches' mean
    assert list_runs(runs_root) == ["still"]


def test_a_row_shows_the_newest_test_loss_even_when_the_tail_holds_only_heartbeats(runs_root, new_run):
    run = new_run("idle", task="spiral")
    first = {"loss": [1, 0.5], "t": 1.0, "gen": 1, "metrics": [1, {"test_loss": [0.6]}]}
    newest = {"loss": [900, 0.02], "t": 2.0, "gen": 1, "metrics": [900, {"test_loss": [0.03]}]}
    beats = (encode_record({"loss": [900, 0.02], "t": 3.0 + i, "gen": 1}) for i in range(3000))  # 150 KB, idle
    run.run_file.write_bytes(encode_record(first) + encode_record(newest) + b"".join(beats))
    row = read_row(run)
    assert (row.batch, row.loss, row.test_loss) == (900, 0.02, 0.03)


def test_a_live_runs_row_follows_it_from_where_it_last_read(runs_root, new_run):
    run = new_run("live", target=10**9)
    assert nnobs(runs_root, "start", "live").returncode == 0
    first = run_rows(runs_root)[0]
    later = wait_for(lambda: (r := run_rows(runs_root)[0]).batch > first.batch and r.rate and r,
                     what="the row to show the run's progress and rate")
    assert later.label == "training" and later.rate > 100
    assert nnobs(runs_root, "stop", "live").returncode == 0
    stopped = wait_for(lambda: (r := run_rows(runs_root)[0]).label == "stopped" and r, what="the row to say stopped")
    assert stopped.batch == read_history(run).batch and stopped.rate is None


def test_a_rows_rate_counts_only_the_newest_line_of_training():
    from nnobs.views.overview import tail_rate
    before = [encode_record({"loss": [100 * i, 0.1], "t": float(i), "gen": 1}) for i in range(100)]  # 100 a second
    restart = [encode_record({"loss": [5000, 0.1], "event": [5000, "started"], "t": 1000.0, "gen": 2})]
    after = [encode_record({"loss": [5000 + 1000 * i, 0.1], "t": 1000.0 + i, "gen": 2}) for i in range(1, 6)]
    assert tail_rate(b"".join(before + restart + after)) == 1000.0  # not the 9 a second from the first line to the last
    assert tail_rate(b"".join(before[-1:] + restart)) is None  # no second of the new line yet


def test_hand_edited_checkpoint_and_fork_files_do_not_take_the_overview_down(runs_root, new_run):
    import numpy as np
    run = new_run("edited")
    run.run_file.write_bytes(encode_record({"loss": [10, 0.5], "t": 1.0, "gen": 1}))
    np.savez(run.checkpoint, meta=np.array(json.dumps({"batch": "x", "target": "lots", "eta": [1]})))
    (run.path / "fork.json").write_text(json.dumps({"run": "parent", "batch": "x", "changed": "eta"}))
    row = read_row(run)
    assert (row.batch, row.forked_from) == (10, "parent")
    assert fork_origin(run) == {"run": "parent", "batch": 0}  # only what is of the shape a fork writes
    (run.path / "fork.json").write_text("[1, 2")
    assert fork_origin(run) is None
