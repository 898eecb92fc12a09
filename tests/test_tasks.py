"""Built-in tasks and net specs: every task trains in a real worker and its loss falls; bad configs are refused.

The runs are real worker processes started as the page and CLI start them (create_run, start_worker),
watched through their run files with a deadline; malformed configs are refused with a message that
names what is allowed, and nothing is created for them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import events, records_with, wait_for, wait_started
from nnobs.protocol.checkpoint import load_checkpoint, save_checkpoint
from nnobs.protocol.errors import NnobsError
from nnobs.training.builtin.netspec import ACTIVATION_NAMES, NetSpecError, format_net, parse_net
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import create_run, start_worker, stop_worker
from nnobs.training.builtin.sampler import Sampler
from nnobs.training.builtin.tasks import (
    ACTIVATIONS,
    TASKS,
    RunConfig,
    dataset,
    describe_task,
    task_names,
    training_rows,
)
from nnobs.training.worker import builtin_trainer

# -- net specs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, sizes, activations",
    [
        ("2x2tx1t", [2, 2, 1], ["tanh", "tanh"]),
        ("2x8tx8tx1t", [2, 8, 8, 1], ["tanh", "tanh", "tanh"]),
        ("2x8rx4sx3gx1", [2, 8, 4, 3, 1], ["relu", "sin", "sigmoid", "identity"]),
        ("1x16x1", [1, 16, 1], ["identity", "identity"]),
        ([2, [8, "tanh"], [8, "relu"], [1, "identity"]], [2, 8, 8, 1], ["tanh", "relu", "identity"]),
        ((2, (3, "sin"), (1, "sigmoid")), [2, 3, 1], ["sin", "sigmoid"]),
    ],
)
def test_a_net_spec_reads_as_widths_and_one_activation_per_layer_and_formats_back(spec, sizes, activations):
    assert parse_net(spec) == (sizes, activations)
    shorthand = format_net(sizes, activations)
    assert parse_net(shorthand) == (sizes, activations)
    if isinstance(spec, str):
        assert shorthand == spec


def test_every_spec_letter_names_an_activation_the_nets_are_built_with():
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS) == {"tanh", "relu", "sigmoid", "sin", "identity"}


@pytest.mark.parametrize(
    "spec, says",
    [
        ("2x8qx1t", "'q' is not an activation letter; use t tanh, r relu, s sin, g sigmoid or no letter for identity"),
        ("2x8Tx1t", "'T' is not an activation letter"),
        ("2x0tx1t", "a layer's width is a whole number from 1 to 100,000, not 0"),
        ("0x2tx1t", "a layer's width is a whole number from 1 to 100,000, not 0"),
        ("2x100001tx1t", "not 100001"),
        ("2", "has no layer after its input; write a shorthand like 2x8tx8tx1t"),
        ("", "does not start with the input width"),
        ("x8tx1t", "does not start with the input width"),
        ("2x8tx", "cannot read 'x'"),
        ("2x8tanhx1", "cannot read 'anhx1'"),
        ("2-8-1", "cannot read '-8-1'"),
        ([2], "needs the input width and at least one [width, activation] layer"),
        ([2, 8, 1], "each layer after the input is [width, activation], not 8"),
        ([2, [8]], "each layer after the input is [width, activation], not [8]"),
        ([2, [8, "tanh", 1]], "not [8, 'tanh', 1]"),
        ([2, ["8", "tanh"]], "a layer's width is a whole number from 1 to 100,000, not '8'"),
        ([2, [True, "tanh"]], "not True"),
        ([2.0, [8, "tanh"]], "not 2.0"),
        ([2, [8, "softmax"]], "unknown activation 'softmax'"),
        ([2, [8, "t"]], "built in: ['identity', 'relu', 'sigmoid', 'sin', 'tanh']"),
        (281, 'write a shorthand like 2x8tx8tx1t'),
        ({"sizes": [2, 1]}, 'or a list like [2, [8, "tanh"], [1, "tanh"]]'),
        (None, "write a shorthand"),
    ],
)
def test_a_malformed_net_spec_is_refused_naming_the_forms_allowed(spec, says):
    with pytest.raises(NetSpecError) as refused:
        parse_net(spec)
    assert isinstance(refused.value, NnobsError)
    assert says in str(refused.value)


# -- configs --------------------------------------------------------------------------------------


def test_the_default_config_is_the_notebooks_xor_net():
    config = RunConfig()
    assert (config.task, config.net, config.seed, config.batch_size) == ("xor", "2x2tx1t", 1, 4)
    assert config.sizes == [2, 2, 1] and config.activations == ["tanh", "tanh"]


def test_a_config_json_of_the_older_kind_loads_as_its_net_spec():
    old = json.dumps({"task": "xor", "sizes": [2, 3, 1], "activation": "relu", "seed": 7, "eta": 0.2, "target": 100,
                      "report_every": 10, "pace": 0.0, "min_free_mb": 50})
    config = RunConfig.from_json(old)
    assert config.net == "2x3rx1r" and config.sizes == [2, 3, 1] and config.activations == ["relu", "relu"]
    assert (config.seed, config.eta, config.noise, config.batch_size, config.train_share) == (7, 0.2, 0.0, 4, 0.5)
    assert RunConfig.from_json(config.to_json()) == config
    assert "sizes" not in json.loads(config.to_json()), "written anew, a config says its net one way"
    assert RunConfig(sizes=[2, 5, 1]).net == "2x5tx1t", "sizes alone: tanh after every layer, as before"


def test_a_config_json_round_trips_every_field():
    config = RunConfig(task="spiral", net=[2, [8, "tanh"], [8, "relu"], [1, "tanh"]], seed=3, eta=0.03, noise=0.1,
                       batch_size=16, train_share=0.7, eta_schedule="0:0.03,1000:0.01")
    assert config.net == "2x8tx8rx1t", "a list spec is kept as its shorthand"
    assert set(json.loads(config.to_json())) == {"task", "net", "seed", "eta", "target", "report_every", "pace",
                                                  "min_free_mb", "noise", "batch_size", "train_share", "eta_schedule"}
    assert RunConfig.from_json(config.to_json()) == config
    assert config.eta_schedule == [[0, 0.03], [1000, 0.01]]
    assert "eta_schedule" not in json.loads(RunConfig().to_json()), "a run without one says nothing of it"


def test_each_task_gets_a_net_and_batch_size_of_its_own_unless_told():
    for name, task in TASKS.items():
        config = RunConfig(task=name)
        config.check()
        assert (config.net, config.batch_size) == (task.net, task.batch_size)
        assert describe_task(name) and "\n" not in describe_task(name)
    assert task_names()[0] == "xor"
    assert set(task_names()) == {"xor", "circle", "noisy-xor", "gauss", "spiral", "plane", "sine"}


REFUSED = [
    ({"task": "moons"}, "unknown task 'moons'; built in: ['xor', 'circle', 'noisy-xor', 'gauss', 'spiral', 'plane', 'sine']"),
    ({"task": None}, "unknown task None"),
    ({"task": "spiral", "net": "2x8qx1t"}, "config: net '2x8qx1t': 'q' is not an activation letter"),
    ({"task": "spiral", "net": "2x0t"}, "a layer's width is a whole number from 1 to 100,000, not 0"),
    ({"task": "spiral", "net": [2, [8]]}, "each layer after the input is [width, activation]"),
    ({"task": "spiral", "net": "2x8tx2t"}, "the spiral task needs a net of 2 inputs and 1 output (such as 2x8tx8tx1t), "
                                           "not 2x8tx2t (2 in, 2 out)"),
    ({"task": "sine", "net": "2x8tx1"}, "the sine task needs a net of 1 input and 1 output (such as 1x8tx1)"),
    ({"task": "circle", "noise": 0.6}, "noise must be a number from 0 to 0.5 (0.1 is Playground's 10 %), not 0.6"),
    ({"task": "circle", "noise": -0.1}, "not -0.1"),
    ({"task": "circle", "noise": "some"}, "not 'some'"),
    ({"task": "circle", "noise": float("nan")}, "noise must be a number from 0 to 0.5"),
    ({"task": "gauss", "batch_size": 0}, "batch_size must be a whole number from 1 to 250 (the gauss task's training "
                                         "points at train_share 0.5), not 0"),
    ({"task": "gauss", "batch_size": 251}, "from 1 to 250"),
    ({"task": "gauss", "batch_size": 400, "train_share": 0.7}, "from 1 to 350 (the gauss task's training points at "
                                                               "train_share 0.7)"),
    ({"task": "gauss", "batch_size": 2.5}, "not 2.5"),
    ({"task": "gauss", "batch_size": True}, "not True"),
    ({"task": "plane", "train_share": 0.05}, "train_share must be a number from 0.1 to 0.9 (the share of the task's "
                                             "points trained on; the rest are its test set), not 0.05"),
    ({"task": "plane", "train_share": 1}, "not 1"),
    ({"noise": 0.1}, "the xor task is the notebook's four corners, every batch all four: noise 0, batch_size 4 and "
                     "train_share 0.5 only (noisy points: task noisy-xor)"),
    ({"batch_size": 2}, "the xor task is the notebook's four corners"),
    ({"train_share": 0.8}, "the xor task is the notebook's four corners"),
]


@pytest.mark.parametrize("fields, says", REFUSED, ids=[str(f) for f, _ in REFUSED])
def test_a_config_that_cannot_be_trained_is_refused_with_what_is_allowed(fields, says):
    with pytest.raises(NnobsError) as refused:
        RunConfig(**fields).check()
    assert says in str(refused.value)
    with pytest.raises(NnobsError) as from_file:
        RunConfig.from_json(json.dumps({"task": "xor", **fields}))  # NaN too: Python's json reads it
    assert says in str(from_file.value)


CREATE_REFUSED = [REFUSED[0], REFUSED[2], REFUSED[5], REFUSED[7], REFUSED[12], REFUSED[16], REFUSED[18]]


@pytest.mark.parametrize("fields, says", CREATE_REFUSED, ids=[str(f) for f, _ in CREATE_REFUSED])
def test_creating_a_run_of_a_refused_config_creates_nothing(runs_root, fields, says):
    run = RunDir.named("refused", root=runs_root)
    with pytest.raises(NnobsError) as refused:
        create_run(run, RunConfig(**fields))
    assert says in str(refused.value)
    assert not run.path.exists(), f"nothing created: {sorted(p.name for p in run.path.iterdir())}"


def test_a_tasks_points_come_from_its_seed_and_noise_and_split_by_the_train_share():
    for name, task in TASKS.items():
        if task.draw is None:
            continue
        config = RunConfig(task=name, seed=5, noise=0.2, train_share=0.7)
        data, again = dataset(config), dataset(config)
        assert len(data.train_x) == training_rows(config) == 350 and len(data.test_x) == 150
        assert data.train_x.shape[1] == data.test_x.shape[1] == task.n_in
        assert data.train_y.shape == (350, 1) and data.test_y.shape == (150, 1)
        np.testing.assert_array_equal(data.train_x, again.train_x)
        assert not np.array_equal(dataset(RunConfig(task=name, seed=6, noise=0.2)).train_x[:5], data.train_x[:5])
        assert np.abs(data.train_x).max() <= data.extent + 0.3, "the points lie in the decision surface's square"
        assert np.abs(data.train_y).max() <= 0.5 * (1 + config.noise), "targets within ±0.5, up to noise"
    circle = dataset(RunConfig(task="circle"))
    assert set(circle.train_y[:, 0]) == {-0.5, 0.5}, "class labels are ±0.5, as the notebook's targets"
    noisy = dataset(RunConfig(task="circle", noise=0.5))
    inside = np.hypot(*noisy.train_x.T) < 5 / 12
    assert (noisy.train_y[:, 0][inside] == -0.5).any(), "noise moves labels across the border"
    xor = dataset(RunConfig())
    assert xor.train_x.tolist() == [[-0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.5, -0.5]] and len(xor.test_x) == 0


# -- the sampler ----------------------------------------------------------------------------------


def test_the_sampler_reads_every_point_once_an_epoch_and_goes_on_exactly_from_a_saved_state():
    x = np.arange(20, dtype=float).reshape(10, 2)
    sampler = Sampler(x, x[:, :1], batch_size=3, seed=[4, 1])
    first_epochs = np.concatenate([sampler()[0][:, 0] for _ in range(10)])  # 30 rows: three epochs of 10
    for epoch in range(3):
        assert sorted(first_epochs[10 * epoch: 10 * epoch + 10]) == list(range(0, 20, 2))
    saved = json.loads(json.dumps(sampler.state()))  # as the checkpoint keeps it
    ahead = [sampler() for _ in range(7)]
    restored = Sampler(x, x[:, :1], batch_size=3, seed=[4, 1])
    restored.restore(saved)
    for expected in ahead:
        got = restored()
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(ValueError, match="of 10 training rows, this run has 9"):
        Sampler(x[:9], x[:9, :1], 3, [4, 1]).restore(saved)
    bad = {
        "no state": {**saved, "generator": {"bit_generator": "PCG64"}},
        "a state of words": {**saved, "generator": {**saved["generator"], "state": {"state": "x", "inc": 1}}},
        "a row that is a bool": {**saved, "at": True},
        "an epoch that is text": {**saved, "epoch": "2"},
    }
    for what, state in bad.items():
        untouched = Sampler(x, x[:, :1], batch_size=3, seed=[4, 1])
        expected = untouched.state()
        with pytest.raises(ValueError):
            untouched.restore(state)
        assert untouched.state() == expected, f"{what}: a refused state changes nothing"


def test_a_checkpoint_keeps_the_sampler_state_without_pickle_and_a_load_goes_on_with_the_same_batches(tmp_path):
    from nnobs.protocol.checkpoint import Checkpoint

    config = RunConfig(task="spiral", seed=2, batch_size=7)
    trainer = builtin_trainer(config)
    for _ in range(1234):  # into the middle of an epoch: 250 points, 7 a batch
        trainer.net.learn_one(*trainer.next_batch())
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, Checkpoint(batch=1234, eta=0.1, target=10, report_every=0, gen=1, last_seq=0, run_offset=0,
                                     state=trainer.save()))
    losses = [trainer.net.learn_one(*trainer.next_batch()) for _ in range(500)]

    resumed = builtin_trainer(config)
    resumed.load(load_checkpoint(path).state)  # np.load(allow_pickle=False) inside

    assert [resumed.net.learn_one(*resumed.next_batch()) for _ in range(500)] == losses


# -- training in the real worker ------------------------------------------------------------------

# Every task, and every activation in some net: (task, net, eta, batches).
TRAINED = [
    ("xor", "2x4gx1t", 0.5, 20_000),
    ("circle", "2x8rx8rx1t", 0.1, 20_000),
    ("noisy-xor", "2x4tx2tx1t", 0.1, 20_000),
    ("gauss", "2x8sx1", 0.1, 10_000),
    ("spiral", "2x8tx8tx1t", 0.1, 30_000),
    ("plane", "2x4gx1", 0.1, 20_000),
    ("sine", [1, [8, "sin"], [1, "identity"]], 0.1, 20_000),
]


def _window_means(records: list[dict]) -> list[tuple[int, float]]:
    """(batch, mean loss of the batches the report covers) of each loss report."""
    out = []
    for record in records:
        batch, loss = record["loss"]
        mean = record["window"][1][5] if "window" in record else loss
        if mean is not None:
            out.append((batch, mean))
    return out


@pytest.mark.parametrize("task, net, eta, batches", TRAINED, ids=[t[0] for t in TRAINED])
def test_every_task_trains_in_the_worker_and_its_loss_falls(runs_root, task, net, eta, batches):
    seed = 1 + TRAINED.index(next(t for t in TRAINED if t[0] == task))
    print(f"task {task}, net {net}, seed {seed}")
    run = RunDir.named(task, root=runs_root)
    # Paced to two seconds: test losses come by the clock (a few a second), and a flat-out run could end before a
    # second one. The pace changes when batches are trained, not what they are.
    create_run(run, RunConfig(task=task, net=net, seed=seed, eta=eta, target=batches, noise=0.05 * (task != "xor"),
                              pace=batches / 2))
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), timeout=120, what=f"{task} to train {batches:,} batches")
    stop_worker(run)

    reports = [r for r in records_with(run, "loss") if r["loss"][0] > 0]
    means = _window_means(reports)
    first = np.mean([m for b, m in means if b <= 100])  # every batch of the first hundred is reported
    last = np.mean([m for b, m in means if b > 0.9 * batches])
    assert last < 0.5 * first, f"{task}: the loss fell from {first:.4f} to only {last:.4f}"

    tested = [(r["metrics"][0], r["metrics"][1]["test_loss"][0]) for r in records_with(run, "metrics")
              if "test_loss" in r["metrics"][1]]
    if task == "xor":
        assert not tested, "xor has no test set"
        return
    assert len(tested) >= 2
    batches_tested = [b for b, _ in tested]
    assert batches_tested == sorted(set(batches_tested)), "at most one test loss a batch, in order"
    assert tested[-1][1] < 0.5 * tested[0][1], f"{task}: the test loss fell from {tested[0][1]} to only {tested[-1][1]}"
    # It rides a loss report: each test loss sits in a record that reports the loss at its batch.
    assert all(r["loss"][0] == r["metrics"][0] for r in records_with(run, "metrics"))


def test_the_test_loss_is_the_nets_loss_on_the_test_points_at_its_batch(runs_root):
    run = RunDir.named("gauss", root=runs_root)
    # A state report at every batch (the net at each), paced to three seconds so that test losses, which come by
    # the clock, fall at several of them.
    config = RunConfig(task="gauss", target=3_000, report_every=1, pace=1_000)
    create_run(run, config)
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), timeout=60, what="3,000 batches")
    stop_worker(run)

    states = {r["sv"][0]: r["sv"][1] for r in records_with(run, "sv")}
    tested = [(r["metrics"][0], r["metrics"][1]["test_loss"][0]) for r in records_with(run, "metrics")
              if "test_loss" in r["metrics"][1]]  # the worker's machine rides in loss reports of its own
    trainer = builtin_trainer(config)
    checked = 0
    for batch, test_loss in tested:
        if batch in states:
            trainer.net.set_state_from_vector(np.array(states[batch]))
            assert test_loss == pytest.approx(trainer.test_loss(), rel=1e-12)
            checked += 1
    assert checked >= 2


def test_a_checkpoint_without_a_sampler_state_still_loads_and_the_log_says_batches_start_afresh(runs_root):
    run = RunDir.named("older", root=runs_root)
    create_run(run, RunConfig(task="circle", target=2_000))
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="2,000 batches")
    stop_worker(run)
    ckpt = load_checkpoint(run.checkpoint)
    assert "sampler" in ckpt.state
    del ckpt.state["sampler"]  # as a checkpoint written before batches were sampled
    save_checkpoint(run.checkpoint, ckpt)

    start_worker(run)

    assert wait_started(run, 2)["resumed_from"] == ckpt.batch
    wait_for(lambda: "no sampler state" in run.worker_log.read_text(), what="worker.log to say so")
    assert "batches are drawn afresh from the run's seed" in run.worker_log.read_text()
