"""Chart data: downsampling that keeps extremes, and charts drawn from a real run file."""

from __future__ import annotations

import numpy as np

from conftest import SEED_RUN
from nnobs import charts
from nnobs.history import RunHistory
from nnobs.records import read_all
from nnobs.tasks import RunConfig, parameter_names


def test_minmax_downsampling_keeps_every_point_below_the_bound():
    values = np.random.default_rng(0).normal(size=500)
    assert np.array_equal(charts.minmax_indices(values, 2000), np.arange(500))


def test_minmax_downsampling_keeps_first_last_and_a_one_batch_spike():
    values = np.random.default_rng(0).normal(size=1_000_000)
    values[654_321] = 40.0  # a spike one batch wide
    values[123_456] = -40.0
    kept = charts.minmax_indices(values, 2000)
    assert len(kept) <= 2000 and np.all(np.diff(kept) > 0)
    assert {0, 654_321, 123_456, 999_999} <= set(kept.tolist())


def test_minmax_downsampling_survives_diverged_points():
    values = np.full(10_000, np.nan)
    values[:100] = np.linspace(1, 0, 100)
    kept = charts.minmax_indices(values, 200)
    assert kept[0] == 0 and kept[-1] == 9_999 and len(kept) <= 200


def test_seed_notebook_run_file_plots_loss_and_state_vector():
    history = RunHistory()
    history.add(read_all(SEED_RUN))
    names = parameter_names(RunConfig())

    loss = charts.loss_chart(charts.loss_frame(*history.loss_series()), log_scale=True).to_dict()
    lines, heat = charts.sv_frames(*history.sv_series(), names)
    sv_lines = charts.sv_lines_chart(lines, names).to_dict()
    heatmap = charts.sv_heatmap(heat, names).to_dict()

    assert loss["mark"]["type"] == "line" and len(next(iter(loss["datasets"].values()))) == 19
    assert set(lines["parameter"]) == set(names) and lines["batch"].max() == 20_000
    assert sv_lines["encoding"]["color"]["field"] == "parameter"
    assert heatmap["mark"]["type"] == "rect" and len(heat) == charts.HEATMAP_COLUMNS * len(names)
