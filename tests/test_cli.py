"""The `nnobs` command, run as a real process against real runs."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading

from conftest import FOREVER, REPO, events, kill_worker, wait_for
from nnobs import cli
from nnobs.views import wording
from nnobs.protocol.checkpoint import landing, load_checkpoint
from nnobs.protocol.records import encode_record
from nnobs.launching.lifecycle import worker_pid
from nnobs.training.builtin.tasks import RunConfig, build

STATUS_KEYS = {
    "run", "state", "batch", "target", "eta", "report_every", "loss", "generation", "pid",
    "heartbeat_age_s", "diverged", "error", "skipped_lines",
}
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def command_line(runs_root, *args: str) -> list[str]:
    return [sys.executable, "-m", "nnobs.cli", "--runs", str(runs_root), *args]


def nnobs(runs_root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(command_line(runs_root, *args), env=ENV, capture_output=True, text=True, timeout=120)


def status(runs_root, run: str = "default") -> dict:
    done = nnobs(runs_root, "status", run, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write_records(run, count: int, tail: bytes = b"") -> None:
    """A run file of count loss reports, batch i on the i-th, ending in tail."""
    lines = (encode_record({"loss": [i, 1.0 / (i + 1)], "t": 1.0 + i, "gen": 1}) for i in range(1, count + 1))
    run.run_file.write_bytes(b"".join(lines) + tail)


def append_record(run, record: dict) -> None:
    with open(run.run_file, "ab") as f:
        f.write(encode_record(record))


def batches(lines) -> list[int]:
    return [json.loads(line)["loss"][0] for line in lines]


def bytes_read_by_this_process() -> int:
    """Every byte this process has read through read() and the like, from the page cache or not (Linux)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_cli_start_set_tell_state_stop_and_status(runs_root, new_run):
    run = new_run("default", target=0)
    assert nnobs(runs_root, "start").returncode == 0
    first = status(runs_root)
    assert STATUS_KEYS <= set(first) and first["state"] == "idle" and first["generation"] == 1

    done = nnobs(runs_root, "set", "--target", "2000", "--eta", "0.05")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("acknowledged at batch") == 2
    wait_for(lambda: status(runs_root)["batch"] == 2000, what="batch 2000")
    assert status(runs_root)["eta"] == 0.05 and status(runs_root)["state"] == "idle"

    assert "acknowledged" in nnobs(runs_root, "tell-state").stdout
    done = nnobs(runs_root, "stop")
    assert done.returncode == 0 and "stopped at batch 2,000" in done.stdout
    assert status(runs_root)["state"] == "stopped" and worker_pid(run) is None


def test_cli_refuses_bad_values_and_names_with_a_message(runs_root, new_run):
    new_run("default", target=0)
    done = nnobs(runs_root, "set", "--eta", "-1")
    assert done.returncode == 2 and "eta must be a number above 0" in done.stderr
    done = nnobs(runs_root, "status", "../x")
    assert done.returncode == 2 and "refused" in done.stderr
    done = nnobs(runs_root, "set", "nosuchrun", "--target", "5")
    assert done.returncode == 2 and "no run named 'nosuchrun'" in done.stderr
    for refused in (("rewind", "--to", "-1"), ("reinit", "--seed", "-1"), ("set", "--pace", "-1")):
        done = nnobs(runs_root, *refused)
        assert done.returncode == 2 and f"{refused[0].replace('set', 'pace')} " in done.stderr, done.stderr
    assert not (runs_root / "default" / "control.json").exists(), "nothing is written for a refused value"


def test_cli_restart_after_kill_resumes_from_checkpoint(runs_root, new_run):
    run = new_run("default", target=10**9)
    nnobs(runs_root, "start")
    wait_for(lambda: (saved := load_checkpoint(run.checkpoint)) and saved.batch > 0, what="a checkpoint past batch 0")
    kill_worker(run)
    assert status(runs_root)["state"] == "crashed"
    saved = load_checkpoint(run.checkpoint)
    done = nnobs(runs_root, "restart")
    assert done.returncode == 0, done.stderr
    started = events(run, "started")[-1]
    assert started["gen"] == saved.gen + 1 and started["resumed_from"] == saved.batch
    assert status(runs_root)["generation"] == saved.gen + 1


def test_cli_tail_from_the_first_record_prints_every_record_as_a_json_line(runs_root, new_run):
    new_run("default", target=0)
    nnobs(runs_root, "start")
    lines = nnobs(runs_root, "tail", "-n", "+1").stdout.splitlines()
    assert json.loads(lines[0])["event"] == [0, "started"]


def test_cli_status_of_a_missing_run_says_where_it_looked_and_exits_1(runs_root, new_run, tmp_path):
    new_run("default", target=0)
    done = nnobs(runs_root, "status", "nosuch")
    assert done.returncode == 1 and done.stdout == ""
    assert f"no run named 'nosuch' in {runs_root}" in done.stderr and "runs there: default" in done.stderr

    done = nnobs(runs_root, "status", "nosuch", "--json")
    assert done.returncode == 1 and "no run named 'nosuch'" in done.stderr
    shown = json.loads(done.stdout)
    assert STATUS_KEYS <= set(shown) and shown["state"] == "absent" and shown["label"] == "absent"

    nowhere = tmp_path / "no-such-root"
    done = nnobs(nowhere, "status")
    assert done.returncode == 1 and f"the runs root {nowhere} does not exist" in done.stderr


def test_cli_status_of_a_dead_worker_shows_its_last_record_and_no_heartbeat(runs_root, new_run):
    run = new_run("default", target=0)
    nnobs(runs_root, "start")
    live = nnobs(runs_root, "status").stdout
    assert "heartbeat" in live and "last record" not in live
    kill_worker(run)
    crashed = nnobs(runs_root, "status").stdout
    assert "crashed" in crashed and "heartbeat" not in crashed
    assert "worker pid    - (no worker is alive)" in crashed
    last = next(line for line in crashed.splitlines() if line.startswith("last record"))
    assert last.endswith(" s ago"), last
    assert nnobs(runs_root, "stop").stdout.startswith("default: no worker is alive (crashed")


def test_cli_ages_are_said_in_plain_words():
    assert [wording.ago(s) for s in (None, 0.42, 37.2, 190, 4 * 3600, 3 * 86400)] == [
        "-", "0.4 s ago", "37 s ago", "3 min ago", "4 h ago", "3 days ago",
    ]


def test_cli_status_and_help_say_what_each_thing_is(runs_root, new_run):
    new_run("default", target=0, report_every=0)
    nnobs(runs_root, "start")
    shown = nnobs(runs_root, "status").stdout
    for line in (
        "state         idle: the worker is alive and at its target",
        "batch         0 of 0 (the target)",
        "eta           0.1 (the learning rate)",
        "state report  only when asked (tell-state) (the parameters, or a large net's summary)",
        "pace          flat out",
        "generation    1 (each start of the worker is one)",
    ):
        assert line in shown, shown
    assert status(runs_root)["label"] == "idle"
    assert nnobs(runs_root, "set", "--target", "100").returncode == 0
    wait_for(lambda: status(runs_root)["batch"] == 100, what="the run to reach its target 100")
    assert nnobs(runs_root, "set", "--target", "50").returncode == 0
    shown = nnobs(runs_root, "status").stdout
    assert "batch         100, past the target of 50 (lowered since): it trains no further until the target is raised" in shown, shown

    overview = nnobs(runs_root, "--help").stdout
    for verb in ("start", "status", "set", "tell-state", "rewind", "reinit", "stop", "restart", "tail"):
        assert re.search(rf"^ +{verb}\b", overview, re.MULTILINE), f"{verb} is not listed: {overview}"
    assert "exit codes" in overview
    assert "report the full parameter vector (the state vector) now" in nnobs(runs_root, "tell-state", "--help").stdout
    assert "batches a second" in nnobs(runs_root, "set", "--help").stdout
    assert "newest kept checkpoint at or before" in nnobs(runs_root, "rewind", "--help").stdout


def test_cli_status_says_diverged_as_the_page_does(runs_root, new_run):
    run = new_run("default", activation="identity", eta=0.05, target=FOREVER)  # a linear net: a large eta blows it up
    nnobs(runs_root, "start")
    wait_for(lambda: (c := load_checkpoint(run.checkpoint)) and c.batch > 0, what="a checkpoint after batch 0")
    assert nnobs(runs_root, "set", "--eta", "5").returncode == 0
    wait_for(lambda: events(run, "diverged"), what="the worker to report the divergence")
    shown = status(runs_root)
    assert shown["state"] == "idle" and shown["label"] == "diverged"
    text = nnobs(runs_root, "status").stdout
    assert "state         diverged: the loss is no longer a number" in text and "loss          diverged" in text


def test_cli_tail_prints_the_last_records_reading_only_the_end_of_a_long_file(runs_root, new_run, capsysbinary):
    run = new_run("default")
    write_records(run, 100_000, tail=b'{"loss":[100001,0.')  # the last line is still being written
    lines = run.run_file.read_bytes().splitlines(keepends=True)
    lines.insert(-3, b'{"loss":[99998,\n')  # a line torn by a crash among the last ten: skipped, not counted
    run.run_file.write_bytes(b"".join(lines))
    size = run.run_file.stat().st_size
    assert size > 4_000_000

    before = bytes_read_by_this_process()
    assert cli.main(["--runs", str(runs_root), "tail"]) == 0
    read = bytes_read_by_this_process() - before
    printed = capsysbinary.readouterr().out.splitlines()
    assert batches(printed) == list(range(99_991, 100_001))
    assert read < 200_000, f"tail read {read:,} bytes of a {size:,}-byte file to print 10 lines"

    assert cli.main(["--runs", str(runs_root), "tail", "-n", "3"]) == 0
    assert batches(capsysbinary.readouterr().out.splitlines()) == [99_998, 99_999, 100_000]
    assert cli.main(["--runs", str(runs_root), "tail", "-n", "0"]) == 0
    assert capsysbinary.readouterr().out == b""
    assert cli.main(["--runs", str(runs_root), "tail", "-n", "+1"]) == 0
    assert batches(capsysbinary.readouterr().out.splitlines()) == list(range(1, 100_001))
    assert cli.main(["--runs", str(runs_root), "tail", "-n", "+99999"]) == 0
    assert batches(capsysbinary.readouterr().out.splitlines()) == [99_999, 100_000]


def test_cli_tail_of_a_short_file_prints_what_there_is(runs_root, new_run):
    run = new_run("default")
    write_records(run, 4)
    assert batches(nnobs(runs_root, "tail").stdout.splitlines()) == [1, 2, 3, 4]
    done = nnobs(runs_root, "tail", "-n", "x")
    assert done.returncode == 2 and "+K" in done.stderr


def test_cli_tail_follow_with_n_0_prints_only_new_records(runs_root, new_run):
    run = new_run("default")
    write_records(run, 1000)
    follower = subprocess.Popen(command_line(runs_root, "tail", "-f", "-n", "0"), env=ENV, stdout=subprocess.PIPE, text=True)
    printed: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [printed.put(line) for line in follower.stdout], daemon=True).start()
    try:
        appended = []

        def append_new() -> None:
            appended.append(10**6 + len(appended))
            append_record(run, {"loss": [appended[-1], 0.5], "t": 2.0, "gen": 1})

        def append_and_look() -> str | None:
            append_new()  # until the follower shows one, it may have started after what was appended
            try:
                return printed.get_nowait()
            except queue.Empty:
                return None

        first = batches([wait_for(append_and_look, what="tail -f to print a record appended after it started")])[0]
        assert first in appended, "nothing written before tail -n 0 -f started is printed"
        append_new()  # so that at least one more follows the first, however soon it was seen
        assert batches([printed.get(timeout=30)])[0] == first + 1, "then every new record, in order"
    finally:
        follower.kill()
        follower.wait()


def test_cli_tail_into_a_pipe_closed_early_ends_quietly(runs_root, new_run, tmp_path):
    run = new_run("default", target=FOREVER)
    write_records(run, 100_000)  # far more than a pipe holds, so tail is still writing when head leaves
    nnobs(runs_root, "start")
    for args, lines in ((("tail", "-n", "+1"), 1), (("tail", "-f", "-n", "0"), 2)):
        errors = tmp_path / "tail.err"
        with open(errors, "wb") as stderr:
            tail = subprocess.Popen(command_line(runs_root, *args), env=ENV, stdout=subprocess.PIPE, stderr=stderr)
            head = subprocess.Popen(["head", "-n", str(lines)], stdin=tail.stdout, stdout=subprocess.PIPE)
            tail.stdout.close()  # head alone reads the pipe: once it exits, the pipe is closed
            shown = head.communicate(timeout=60)[0].splitlines()
            assert tail.wait(timeout=60) == 0, errors.read_text()
        assert len(shown) == lines and all(json.loads(line) for line in shown)
        assert errors.read_bytes() == b"", f"{args}: {errors.read_text()}"


def test_cli_set_pace_is_acknowledged_and_shown_by_status(runs_root, new_run):
    new_run("default", target=FOREVER)
    nnobs(runs_root, "start")
    done = nnobs(runs_root, "set", "--pace", "100")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pace 100: acknowledged at batch" in done.stdout
    wait_for(lambda: status(runs_root)["pace"] == 100, what="status to show pace 100")
    assert "pace          at most 100 batches a second" in nnobs(runs_root, "status").stdout
    done = nnobs(runs_root, "set", "--pace", "0")
    assert done.returncode == 0 and "pace 0: acknowledged" in done.stdout
    wait_for(lambda: status(runs_root)["pace"] in (0, None), what="status to show flat out again")


def test_cli_rewind_goes_back_to_a_kept_checkpoint_as_a_new_generation(runs_root, new_run):
    run = new_run("default", target=1000)
    nnobs(runs_root, "start")
    wait_for(lambda: status(runs_root)["state"] == "idle", what="the run to reach its target 1000")
    assert nnobs(runs_root, "set", "--target", "3000").returncode == 0
    wait_for(lambda: status(runs_root)["batch"] == 3000, what="the run to reach its target 3000")
    generation = status(runs_root)["generation"]

    landed = landing(run.checkpoint, 1500)
    refused = nnobs(runs_root, "rewind", "--to", "1500")  # back from 3,000 to under 1,500: more than half the run
    assert refused.returncode == 2 and "throws away more than half of the run; add --yes" in refused.stderr
    done = nnobs(runs_root, "rewind", "--to", "1500", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"rewinding to batch 1,500 lands on the checkpoint kept at batch {landed:,}" in done.stdout
    assert "sent rewind 1500" in done.stdout
    assert f"rewind 1500: acknowledged at batch {landed:,} (the kept checkpoint it went back to" in done.stdout
    rewound = events(run, "rewound")[-1]
    assert rewound["event"][0] == landed >= 1500 / 1.25 and rewound["gen"] == generation + 1

    for kept in (run.path / "checkpoints").glob("*.npz"):  # nothing left to go back to
        kept.unlink()
    done = nnobs(runs_root, "rewind", "--to", "500")
    assert done.returncode == 1 and "rewind 500: rejected: no checkpoint is kept at or before batch 500" in done.stdout


def test_cli_reinit_starts_the_net_afresh_and_keeps_the_history(runs_root, new_run):
    run = new_run("default", target=1000)
    nnobs(runs_root, "start")
    wait_for(lambda: status(runs_root)["state"] == "idle", what="the run to reach its target")
    history = run.run_file.read_bytes()

    done = nnobs(runs_root, "reinit", "--seed", "7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reinit 7: acknowledged at batch 1,000 (fresh parameters" in done.stdout
    assert run.run_file.read_bytes().startswith(history), "the run's records so far are kept"
    fresh = events(run, "reinit")[-1]
    assert fresh["sv"][1] == build(RunConfig(target=1000, seed=7))[0].state_vector().tolist()
    assert status(runs_root)["generation"] == fresh["gen"] == 2


def test_cli_commands_to_a_run_without_a_worker_are_pending_and_exit_1(runs_root, new_run):
    new_run("default", target=0)
    for args in (("rewind", "--to", "0"), ("reinit",), ("tell-state",)):
        done = nnobs(runs_root, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "pending: no worker is alive to answer; the next start applies it" in done.stdout
