"""What the Layers, Neurons, replay and Trajectory views are made of, checked against numpy on the same vectors,
with real workers writing real run files where the numbers come from training."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import events, records_with, wait_for
from nnobs.views import layer_charts
from nnobs.views import neurons
from nnobs.views import trajectory
from nnobs.reading.history import RunHistory
from nnobs.reading.watcher import RunWatcher
from nnobs.launching.lifecycle import start_worker
from nnobs.protocol.schema import BANDS, SUMMARY, tensor_bounds, tensor_summary
from nnobs.reading.series import StateArchive
from nnobs.training.builtin.tasks import RunConfig, dataset, tensors
from nnobs.views.view import build_view

SMALL = {"task": "spiral", "net": "2x8rx8tx1t", "eta": 0.03, "seed": 3}  # relu first: dead units to count


def state_vectors(run) -> dict[int, np.ndarray]:
    """Every state report's whole vector in the run file, by batch (the newest of a batch reported twice)."""
    return {r["sv"][0]: np.array(r["sv"][1]) for r in records_with(run, "sv")}


@pytest.fixture
def trained(new_run):
    """A small spiral net trained to batch 3,000 by a real worker, with a state report every 500 batches."""
    run = new_run("spiral", **SMALL, target=3000, report_every=500)
    start_worker(run)
    wait_for(lambda: events(run, "target_reached"), what="batch 3,000")
    return run


def test_per_tensor_statistics_of_whole_state_vectors_are_numpys_on_the_same_vectors(trained):
    history = RunWatcher(trained.run_file).refresh()
    parts, reported = tensors(RunConfig(**SMALL)), state_vectors(trained)
    assert history.layers.n_columns == len(parts) * len(SUMMARY)
    batch, sv = max(reported.items())
    assert history.layers.last[0] == batch
    newest = history.layers.last[1].reshape(len(parts), len(SUMMARY))
    before = reported[max(b for b in reported if b < batch)]
    for (name, _), (start, end), row in zip(parts, tensor_bounds(parts), newest):
        values = sv[start:end]
        expected = [np.linalg.norm(values), values.mean(), values.std(), values.min(), values.max(),
                    np.linalg.norm(values - before[start:end]) / np.linalg.norm(before[start:end]),
                    *np.percentile(values, BANDS)]
        np.testing.assert_allclose(row, expected, rtol=1e-12, err_msg=name)
    # A large net's worker summarizes its vector with the same numbers, to seven digits.
    worker_rows = tensor_summary(sv, parts, before)
    np.testing.assert_allclose(np.array(worker_rows, float), newest, rtol=1e-6)


def test_the_update_ratio_beside_a_report_is_the_step_into_it_and_dead_units_are_the_relus_silent_on_every_point(trained):
    reported = state_vectors(trained)
    updates = {r["update"][0]: r for r in records_with(trained, "update")}
    config = RunConfig(**SMALL)
    parts = tensors(config)
    checked = 0
    for batch, record in updates.items():
        if batch - 1 not in reported:
            continue  # the state one batch before is reported only in the dense start: there it can be checked
        ratios = [np.linalg.norm(reported[batch][s:e] - reported[batch - 1][s:e]) / np.linalg.norm(reported[batch - 1][s:e])
                  for s, e in tensor_bounds(parts)]
        np.testing.assert_allclose(record["update"][1], ratios, rtol=1e-6, err_msg=f"batch {batch}")
        checked += 1
    assert checked >= 5, f"the dense start reports every batch: {sorted(updates)[:12]}"
    assert 3000 in updates and 500 in updates, "the scheduled reports get one too"
    # Dead units: relu outputs of 0 on every training point, from the state reported at that batch.
    points = dataset(config).train_x
    for batch in (1, 3000):
        w = reported[batch][: 2 * 8].reshape(2, 8)
        b = reported[batch][2 * 8 : 3 * 8]
        silent = int((np.maximum(points @ w + b, 0).max(axis=0) == 0).sum())
        assert updates[batch]["dead"][1] == [silent], f"batch {batch}"
    frames = layer_charts.layer_frames(RunWatcher(trained.run_file).refresh(), tuple(n for n, _ in parts),
                                       layer_charts.relu_layers(config))
    assert set(frames) == {"norm", "bands", "update", "dead"} and set(frames["dead"]["layer"]) == {"L1 (8 units)"}


def test_replay_at_a_reported_batch_shows_the_state_reported_there_also_from_the_fold_cache(trained):
    reported = state_vectors(trained)
    config = RunConfig(**SMALL)
    watcher = RunWatcher(trained.run_file)
    view = build_view(trained, watcher, config)
    assert set(view.state_batches.tolist()) == set(reported), "a short run keeps every state it reported"
    for batch in (0, 7, 500, 3000):
        at, sv = view.state_at(batch)
        assert at == batch and np.array_equal(sv, reported[batch]), f"batch {batch}"
    before = max(b for b in reported if b < 2999)
    assert 2999 not in reported and before > 2500, "log-spaced snapshots lie close together"
    at, sv = view.state_at(2999)
    assert at == before and np.array_equal(sv, reported[before]), "between reports: the last state before"
    watcher.save()
    reopened = RunWatcher(trained.run_file)
    reopened.refresh()
    assert reopened.resumed_at > 0, "the second reader starts from the fold cache"
    again = reopened.history.archive.at(500)
    assert again[0] == 500 and np.array_equal(again[1], reported[500])
    # The pictures drawn at a replayed batch are drawn from that state.
    maps = neurons.unit_maps(config, reported[500])
    assert not np.array_equal(maps[-1], neurons.unit_maps(config, reported[3000])[-1])


def test_the_archive_stays_within_its_capacity_spread_over_the_run_with_the_first_and_newest_state():
    archive = StateArchive(width=3, max_states=16)
    batches = np.arange(1000)
    archive.extend(batches, np.column_stack((batches, -batches, batches * 2.0)).astype(float))
    kept, vectors = archive.kept()
    assert len(kept) <= 17 and kept[0] == 0 and kept[-1] == 999
    assert np.array_equal(vectors[:, 0], kept) and np.all(np.diff(kept) > 0)
    gaps = np.diff(kept[:-1])
    assert gaps.min() == gaps.max(), "evenly spread over the reports"
    archive.truncate(500)
    assert archive.kept()[0][-1] <= 500, "a rewind forgets the states after its batch"


def test_the_neuron_maps_of_a_known_net_are_its_forward_pass_on_the_grid():
    config = RunConfig(task="circle", net="2x3tx1g", seed=1)
    rng = np.random.default_rng(5)
    sv = rng.normal(size=2 * 3 + 3 + 3 + 1)
    w1, b1, w2, b2 = sv[:6].reshape(2, 3), sv[6:9], sv[9:12].reshape(3, 1), sv[12:]
    axis = np.linspace(-1, 1, neurons.GRID)
    x1, x2 = (a.ravel() for a in np.meshgrid(axis, axis))
    hidden = np.tanh(np.column_stack((x1, x2)) @ w1 + b1)
    output = 1 / (1 + np.exp(-(hidden @ w2 + b2)))
    maps = neurons.unit_maps(config, sv)
    assert [m.shape for m in maps] == [(2, neurons.GRID**2), (3, neurons.GRID**2), (1, neurons.GRID**2)]
    np.testing.assert_allclose(maps[0], np.vstack((x1, x2)))
    np.testing.assert_allclose(maps[1], hidden.T, rtol=1e-12)
    np.testing.assert_allclose(maps[2], output.T, rtol=1e-12)
    frame = neurons.neurons_frame(config.to_json(), sv.tobytes())
    cells = frame[frame["kind"] == "cell"]
    unit = cells[cells["unit"] == "L1.2"].sort_values(["gy", "gx"])
    np.testing.assert_allclose(unit["value"], hidden[:, 2], rtol=1e-6)
    links = frame[frame["kind"] == "link"]
    np.testing.assert_allclose(sorted(links["value"]), sorted(np.concatenate((w1.ravel(), w2.ravel()))), rtol=1e-6)
    assert neurons.drawable(config) == "" and "2 inputs" in neurons.drawable(RunConfig(task="xor", net="3x2tx1t"))


def test_the_path_of_a_run_that_moves_along_one_direction_is_a_line_and_a_turn_shows():
    rng = np.random.default_rng(11)
    start, direction = rng.normal(size=50), rng.normal(size=50)
    t = np.cumsum(rng.uniform(0.1, 1.0, size=40))
    straight = trajectory.principal_path(np.arange(40), start + t[:, None] * direction)
    assert straight.explained[0] == pytest.approx(1.0, abs=1e-12)
    spread = np.ptp(straight.coordinates[:, 0])
    assert np.abs(straight.coordinates[:, 1]).max() < 1e-6 * spread, "no second direction to move in (to drawing precision)"
    assert np.all(np.diff(straight.coordinates[:, 0]) > 0), "in order along the line, starting on its negative side"
    other = rng.normal(size=50)
    turned = np.vstack((start + t[:20, None] * direction, start + t[19] * direction + (t[20:] - t[19])[:, None] * other))
    corner = trajectory.principal_path(np.arange(40), turned)
    assert corner.explained[1] > 0.05, "a turn takes a second direction"
    losses = trajectory.losses_at(np.array([0, 5, 39]), np.array([0, 4, 10]), np.array([1.0, 0.5, 0.1]))
    assert losses.tolist() == [1.0, 0.5, 0.1]
    frame = trajectory.path_frame(straight, np.ones(40), marked=7)
    assert frame["marked"].sum() == 1 and frame.loc[frame["marked"], "batch"].item() == 7


def test_summaries_of_a_history_are_made_only_once_its_params_say_what_the_vector_holds():
    history = RunHistory()
    history.add([{"eta": [0, 0.1], "sv": [0, [1.0, 2.0, 3.0]], "target": [0, 9], "report_every": [0, 1]}])
    assert history.layers is None, "without a params record nothing says where one tensor ends"
    assert history.archive.at(0)[0] == 0, "the state is kept for replay all the same"
