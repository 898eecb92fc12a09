"""Records faithful to the learning: dense early reports with their windows, slow motion, rewind and reinit.

Real worker processes on real files throughout; the one with a planted spike is a real process
too, running the worker's own loop over a batch source that returns one outlier batch.
"""

from __future__ import annotations

import statistics
import textwrap

import numpy as np
from conftest import FOREVER, answered, events, python, records_with, wait_for, wait_started

from nnobs.launching.lifecycle import run_status, start_worker
from nnobs.protocol.checkpoint import kept_batches, load_kept
from nnobs.protocol.control import send_command
from nnobs.protocol.schema import SUMMARY
from nnobs.reading.history import RunHistory
from nnobs.reading.watcher import read_history
from nnobs.training.builtin.tasks import RunConfig, build, build_network
from nnobs.views.frames import loss_frame


def loss_points(history: RunHistory) -> set[tuple[int, float]]:
    """(batch, loss) of every point the loss chart draws."""
    frame = loss_frame(history)
    return set(zip(frame["batch"].tolist(), frame["loss"].tolist()))


def test_the_default_runs_first_10000_batches_give_100_loss_points_and_the_chart_keeps_every_window_minimum(new_run):
    run = new_run("default", target=10_000)  # the notebook's XOR, which learns in these batches
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="the target 10,000 to be reached")

    history = read_history(run)
    batches, losses = history.loss_series()
    assert len(batches[batches <= 10_000]) >= 100
    assert losses[0] > 0.1 and losses[-1] < 1e-3, "the drop happens in these batches"
    assert np.all(np.diff(batches) > 0)
    windows = [r["window"][1] for r in records_with(run, "window")]
    assert windows, "reports past the first hundred batches cover the batches since the one before"
    drawn = loss_points(history)
    for n, low, low_at, high, high_at, mean in windows:
        assert (low_at, low) in drawn and (high_at, high) in drawn
        assert low <= mean <= high and n > 1
    # Every batch is in one window: the counts add up to the batches trained.
    assert 1 + sum(w[0] for w in windows) + sum(1 for r in records_with(run, "loss") if "window" not in r) >= 10_000


SPIKE_AT = 50_000
SPIKING_WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from nnobs.protocol.rundir import RunDir
    from nnobs.training.sdk import Run
    from nnobs.training.builtin.tasks import load_config
    from nnobs.training.worker import builtin_trainer, train

    run = RunDir(Path(sys.argv[1]))
    config = load_config(run.config)
    trainer = builtin_trainer(config)
    next_batch = trainer.next_batch
    calls = 0

    def spiking_batch():
        # The {spike}th training batch has its targets flipped: one batch whose loss stands out.
        global calls
        calls += 1
        x, ideal = next_batch()
        return (x, -ideal) if calls == {spike} + 1 else (x, ideal)  # +1: the worker looks at one batch first

    trainer.next_batch = spiking_batch
    with Run(run.name, root=run.path.parent, trainer=trainer, builtin=True, target=config.target) as observed:
        train(observed, trainer)
    """
).replace("{spike}", str(SPIKE_AT))


def test_a_one_batch_spike_between_two_reports_is_in_the_file_and_on_the_chart(new_run):
    run = new_run(target=2 * SPIKE_AT)
    worker = python(SPIKING_WORKER, str(run.path))
    try:
        wait_for(lambda: events(run, "target_reached"), what=f"the target {2 * SPIKE_AT:,} to be reached")
    finally:
        worker.terminate()
        worker.communicate(timeout=30)

    reports = records_with(run, "loss")
    assert SPIKE_AT not in [r["loss"][0] for r in reports], "no report falls on the spike's batch itself"
    holding = [r for r in reports if "window" in r and r["window"][1][4] == SPIKE_AT]
    assert len(holding) == 1, "exactly one report's window holds the spike as its maximum"
    n, _, _, high, _, _ = holding[0]["window"][1]
    assert n > 1 and high > 0.1
    before = [r["loss"][1] for r in reports if r["loss"][0] < SPIKE_AT][-1]  # the last report before it
    assert high > 1000 * before, "the spike stands far above the losses around it"
    assert (SPIKE_AT, high) in loss_points(read_history(run))


def test_pace_holds_the_rate_and_commands_are_still_answered_at_once(new_run):
    # Bounds loose enough for a loaded machine: how fast commands are answered is measured by bench/ (12 ms here).
    pace = 200
    run = new_run(target=FOREVER)
    start_worker(run)
    command = send_command(run.control_file, "pace", pace)
    assert answered(run, command).ok
    paced_from = next(r for r in records_with(run, "ack") if r["ack"][1]["id"] == command["id"])

    def five_seconds_later():
        later = [r for r in records_with(run, "loss") if r["t"] >= paced_from["t"] + 5.5]
        return later[0] if later else None

    end = wait_for(five_seconds_later, what="five seconds of paced training")
    start = next(r for r in records_with(run, "loss") if r["t"] >= paced_from["t"] + 0.5)
    rate = (end["loss"][0] - start["loss"][0]) / (end["t"] - start["t"])
    assert abs(rate - pace) <= 0.25 * pace, f"{rate:.1f} batches/s at pace {pace}"

    delays = []
    for _ in range(10):
        sent = send_command(run.control_file, "target", FOREVER)
        answered(run, sent)
        ack = next(r for r in records_with(run, "ack") if r["ack"][1]["id"] == sent["id"])
        delays.append(ack["t"] - sent["t"])
    assert statistics.median(delays) <= 0.5, f"answers took {delays} s"  # not only between long sleeps
    history = read_history(run)
    assert history.pace == pace and any(m.label == f"pace {pace}/s" for m in history.markers)


def test_rewind_after_eta_50_brings_back_the_kept_checkpoints_loss_and_training_goes_on(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    wait_for(lambda: (h := read_history(run)).loss is not None and h.batch > 200_000 and h.loss < 1e-20,
             timeout=120, what="XOR to converge")  # as long as test_page gives it: a loaded machine trains slowly
    ruin = send_command(run.control_file, "eta", 50)
    ruined_at = answered(run, ruin).batch
    status = wait_for(lambda: (s := run_status(run, read_history(run))).label == "not learning" and s,
                      what="the saturated net to read as not learning")
    assert status.loss > 0.1 and status.best_loss < 1e-20

    rewind = send_command(run.control_file, "rewind", ruined_at - 1)
    answer = answered(run, rewind)
    assert answer.ok, answer.reason
    kept = max(b for b in kept_batches(run.checkpoint) if b <= ruined_at - 1)
    assert answer.batch == kept < ruined_at
    rewound = events(run, "rewound")[0]
    net, next_batch = build(RunConfig())
    net.set_state_from_vector(load_kept(run.checkpoint, kept).sv)
    assert rewound["loss"] == [kept, net.losses([next_batch()])[0]], "the kept checkpoint's own loss"
    assert rewound["rewound_from"] >= ruined_at and rewound["eta"] == [kept, 0.1]

    history = wait_for(lambda: (h := read_history(run)).batch > kept + 50_000 and h, what="training to go on")
    assert history.gen == 2 and history.eta == 0.1 and history.loss < 1e-20
    batches = history.loss_series()[0]
    assert np.all(np.diff(batches) >= 0), "the chart shows the run's line of training, not the one abandoned"
    assert not run_status(run, history).not_learning
    assert any(m.label.startswith("gen 2") or "rewind from" in m.label for m in history.markers if m.batch == kept)


def test_reinitialize_starts_the_net_afresh_from_another_seed_and_keeps_the_history(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    wait_for(lambda: read_history(run).batch > 20_000, what="training past batch 20,000")
    command = send_command(run.control_file, "reinit", 7)
    answer = answered(run, command)
    assert answer.ok, answer.reason

    reinit = events(run, "reinit")[0]
    fresh = build_network(RunConfig(seed=7))
    _, next_batch = build(RunConfig())
    assert reinit["sv"] == [answer.batch, fresh.state_vector().tolist()]
    assert reinit["loss"] == [answer.batch, fresh.losses([next_batch()])[0]] and reinit["seed"] == 7
    history = wait_for(lambda: (h := read_history(run)).batch > answer.batch + 1000 and h, what="training to go on")
    assert history.gen == 2 and history.loss_series()[0][0] == 0, "the history before the reinit stays"


def test_a_rewind_to_before_every_kept_checkpoint_is_refused_and_says_what_is_kept(new_run):
    run = new_run(target=FOREVER)
    start_worker(run)
    wait_started(run)
    answer = answered(run, send_command(run.control_file, "rewind", 0))
    assert answer.ok  # the start's own checkpoint, at batch 0, is always kept
    refused = answered(run, send_command(run.control_file, "reinit", -3))
    assert not refused.ok and "seed from 0 to 4,294,967,295" in refused.reason


EARLIER_LINES = b"".join(
    line + b"\n"
    for line in (
        # as this project wrote them before loss windows and pace: still read, by the fast path too
        b'{"loss":[0,0.5],"event":[0,"started"],"pid":7,"resumed_from":null,"eta":[0,0.1],"sv":[0,[1.5,-0.5]],'
        b'"target":[0,100],"report_every":[0,10],"t":1.0,"gen":1}',
        b'{"loss":[5,0.25],"t":1.1,"gen":1}',
        b'{"eta":[10,0.1],"sv":[10,[1.25,-0.25]],"target":[10,100],"report_every":[10,10],"t":1.2,"gen":1}',
        b'{"loss":[10,0.125],"t":1.2,"gen":1}',
    )
)


def test_files_written_before_windows_and_pace_still_read_the_same():
    history = RunHistory()
    history.add_lines(EARLIER_LINES * 1)
    batches, losses = history.loss_series()
    assert batches.tolist() == [0, 5, 10] and losses.tolist() == [0.5, 0.25, 0.125]
    assert history.sv_batches.values().tolist() == [0, 10] and history.sv_latest.tolist() == [1.25, -0.25]
    assert (history.eta, history.target, history.report_every, history.pace) == (0.1, 100, 10, None)
    assert history.loss_windows.values()[:, 0].tolist() == [1, 1, 1], "each report stands for its own batch"


def test_a_restart_from_a_checkpoint_replaces_what_the_dead_worker_trained_after_it():
    history = RunHistory()
    first = [{"loss": [b, 1.0 / (b + 1)], "t": 1.0 + b, "gen": 1} for b in range(0, 100, 10)]
    restart = [{"loss": [60, 1.0 / 61], "event": [60, "started"], "pid": 2, "resumed_from": 60, "t": 200.0, "gen": 2}]
    second = [{"loss": [b, 2.0 / (b + 1)], "t": 200.0 + b, "gen": 2} for b in range(70, 130, 10)]
    history.add(first)  # read while the first worker ran
    history.add(restart + second)  # then the restart, in the next refresh
    one_read = RunHistory()
    one_read.add(first + restart + second)

    for seen in (history, one_read):
        batches, losses = seen.loss_series()
        assert batches.tolist() == [0, 10, 20, 30, 40, 50, 60, 60, 70, 80, 90, 100, 110, 120]
        assert losses[-6:].tolist() == [2.0 / (b + 1) for b in range(70, 130, 10)]
        assert set(loss_frame(seen)["batch"]) == set(batches.tolist())
        assert [m.label for m in seen.markers] == ["gen 2"]


def test_the_training_rate_after_a_rewind_counts_only_the_line_gone_on_with():
    history = RunHistory()
    for second in range(10):  # 10,000 batches a second up to batch 100,000
        history.add([{"loss": [10_000 * (second + 1), 0.5], "t": 100.0 + second, "gen": 1}])
    history.add([{"ack": [50_000, {"id": "r", "cmd": "rewind", "value": 60_000}], "event": [50_000, "rewound"],
                  "rewound_from": 100_000, "loss": [50_000, 0.1], "t": 110.0, "gen": 2}])
    for second in range(1, 4):  # then 1,000 batches a second from 50,000
        history.add([{"loss": [50_000 + 1_000 * second, 0.1], "t": 110.0 + second, "gen": 2}])
    rate, _ = history.rate()
    assert rate == 1_000


def test_the_training_rate_after_a_new_pace_counts_from_it():
    history = RunHistory()
    for second in range(10):
        history.add([{"loss": [10_000 * (second + 1), 0.5], "t": 100.0 + second, "gen": 1}])
    history.add([{"ack": [100_000, {"id": "p", "cmd": "pace", "value": 20}], "pace": [100_000, 20], "t": 110.0, "gen": 1}])
    for second in range(1, 4):
        history.add([{"loss": [100_000 + 20 * second, 0.5], "t": 110.0 + second, "gen": 1}])
    assert history.rate()[0] == 20


def test_a_large_net_reports_a_summary_and_a_sample_only_every_n_batches(new_run):
    run = new_run(sizes=[2, 100, 100, 1], target=300, report_every=100)  # 10,501 parameters: more than are reported whole
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="the target 300 to be reached")
    assert not records_with(run, "sv"), "no state report holds the whole vector"
    reports = records_with(run, "summary")
    assert [r["summary"][0] for r in reports] == [0, 100, 200, 300]
    params = records_with(run, "params")[0]["params"][1]
    assert [name for name, _ in params["tensors"]] == ["L1.W", "L1.b", "L2.W", "L2.b", "L3.W", "L3.b"]
    assert all(len(r["summary"][1]) == 6 and all(len(row) == len(SUMMARY) for row in r["summary"][1]) for r in reports)
    updates = records_with(run, "update")
    assert [r["update"][0] for r in updates] == [100, 200, 300], "a step's update beside each scheduled report after the first"
    assert all(len(r["update"][1]) == 6 and all(0 < ratio < 1 for ratio in r["update"][1]) for r in updates)
    assert all(len(r["sample"][1]) == len(params["sample"]) for r in reports)
    assert 200 <= len(params["sample"]) <= 300 and params["sample"] == sorted(set(params["sample"]))
    change = [r["summary"][1][0][5] for r in reports]
    assert change[0] is None and all(c > 0 for c in change[1:]), "the change since the report before, from the second on"


def test_a_reinitialized_net_is_judged_against_its_own_best_loss():
    old = [{"loss": [b, 1e-30], "t": 1.0, "gen": 1} for b in range(0, 1000, 10)]
    reinit = [{"ack": [1000, {"id": "r", "cmd": "reinit", "value": None}], "event": [1000, "reinit"], "seed": 1,
               "loss": [1000, 0.5], "t": 2.0, "gen": 2}]
    plateau = [{"loss": [b, 0.5], "t": 3.0, "gen": 2} for b in range(1010, 1500, 10)]  # before it learns
    for history in (RunHistory(), RunHistory()):
        history.add(old + reinit + plateau)
        assert history.best_loss == 0.5 and not history.not_learning
    split = RunHistory()
    split.add(old)
    split.add(reinit + plateau)
    assert split.best_loss == 0.5 and not split.not_learning


def test_a_restart_after_a_reinit_keeps_the_fresh_nets_best_loss():
    old = [{"loss": [b, 1e-30], "t": 1.0, "gen": 1} for b in range(0, 1000, 10)]
    reinit = [{"ack": [1000, {"id": "r", "cmd": "reinit", "value": None}], "event": [1000, "reinit"], "seed": 1,
               "loss": [1000, 0.5], "t": 2.0, "gen": 2}]
    fresh = [{"loss": [b, 0.5], "t": 3.0, "gen": 2} for b in range(1010, 1500, 10)]
    restart = [{"event": [1200, "started"], "pid": 9, "resumed_from": 1200, "t": 4.0, "gen": 3},
               {"loss": [1210, 0.5], "t": 4.0, "gen": 3}]
    history = RunHistory()
    history.add(old + reinit + fresh + restart)
    assert history.best_loss == 0.5, "going back to a checkpoint after the reinit keeps the fresh net's best"
    back = RunHistory()
    back.add(old + reinit + fresh + [{"event": [500, "started"], "pid": 9, "resumed_from": 500, "t": 4.0, "gen": 3},
                                     {"loss": [510, 1e-30], "t": 4.0, "gen": 3}])
    assert back.best_loss == 1e-30, "going back before the reinit is the old net again"


def test_a_diverged_run_put_back_at_finite_parameters_has_a_loss_again_at_the_same_batch():
    learnt = [{"loss": [b, 0.125], "window": [b, [100, 0.125, b - 99, 0.125, b - 50, 0.125]], "t": 1.0, "gen": 1}
              for b in range(100, 5001, 100)]
    diverged = [{"loss": [5050, None], "window": [5050, [50, 0.125, 5001, None, 5050, None]],
                 "event": [5050, "diverged"], "t": 2.0, "gen": 1}, {"loss": [5050, None], "t": 3.0, "gen": 1}]
    back = [{"loss": [5050, 0.125], "t": 4.0, "gen": 1}, {"loss": [5050, 0.125], "t": 5.0, "gen": 1}]
    whole = RunHistory()
    whole.add(learnt + diverged)
    assert whole.loss is None, "no mean while the newest batch diverged"
    whole.add(back)
    assert whole.loss == 0.125 and whole.best_loss == 0.125, "eta lowered: the batch it went back to counts"
    at_once = RunHistory()
    at_once.add(learnt + diverged + back)
    assert at_once.loss == 0.125
