"""What the charts show: smoothing over unevenly spaced batches, the loss chart's labels and axes, the decision
surface's colours, and one batch range for every chart over batches, without a spec that changes between refreshes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nnobs.launching.lifecycle import create_run
from nnobs.protocol.records import RecordWriter
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.schema import SUMMARY
from nnobs.reading.history import RunHistory
from nnobs.reading.watcher import RunWatcher
from nnobs.training.builtin.tasks import RunConfig
from nnobs.app.run_views import parameters_shown
from nnobs.views import charts, layer_charts
from nnobs.views import neurons, trajectory
from nnobs.views.vegalite import LOG_BATCH_TITLE, LOG_LABELS, PLAIN_LABELS, log_batches_by_default, on_log_batches
from nnobs.views.frames import (
    MAX_SV_LINES,
    layer_of,
    loss_chart_frame,
    loss_frame,
    loss_means_frame,
    markers_frame,
    metric_frames,
    smooth,
    surface_frame,
)
from nnobs.views.surface import GRID
from nnobs.views.view import as_tables, build_view, chart_frames

BATCH_CHARTS = ("loss", "sv_lines", "sv_heat", "step_lengths", "step_cosines")


def history_of(batches, losses) -> RunHistory:
    history = RunHistory()
    history.add([{"loss": [int(b), float(v)], "t": 1.0, "gen": 1} for b, v in zip(batches, losses)])
    return history


def loss_chart(history: RunHistory, smoothing: float, log_scale: bool = True) -> pd.DataFrame:
    means = loss_means_frame(history)
    batches = (int(history.loss_batches.values()[0]), history.batch)
    return loss_chart_frame(loss_frame(history), means, markers_frame(history), smoothing,
                                   log_scale, batches)


def smoothed_line(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    line = frame.dropna(subset=["smoothed"])
    return line["batch"].to_numpy(), line["smoothed"].to_numpy()


def dense_then_sparse(end: int) -> np.ndarray:
    """Reports as a fast worker writes them: every batch at first, a steady number per decade, then by the clock."""
    return np.unique(np.concatenate((np.arange(100), np.geomspace(100, 10_000, 200).astype(int),
                                     np.arange(10_000, end + 1, 5_000))))


SPACINGS = {
    "even": np.arange(0, 20_000, 7),
    "dense then sparse": dense_then_sparse(100_000),
    "random gaps": np.cumsum(np.random.default_rng(0).integers(1, 5_000, size=300)),
}


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("smoothing", [0.3, 0.6, 0.9, 0.99])
@pytest.mark.parametrize("log_scale", [True, False])
def test_a_flat_loss_smooths_to_itself_at_any_spacing(spacing, smoothing, log_scale):
    batches = SPACINGS[spacing]
    frame = loss_chart(history_of(batches, np.full(len(batches), 0.125)), smoothing, log_scale)
    _, smoothed = smoothed_line(frame)
    assert len(smoothed) > 10
    np.testing.assert_allclose(smoothed, 0.125, rtol=1e-9)


@pytest.mark.parametrize("smoothing", [0.6, 0.9])
def test_the_smoothed_loss_follows_a_drop_of_30_decades_and_never_lags_far_behind(smoothing):
    """The loss falls 30 decades in the first 0.4% of 100,000 batches, reported every batch, then stays flat,
    reported every 5,000 batches: the smoothed line must sit on it for all but the first few percent of the run."""
    end = 100_000
    dense = np.arange(400)
    batches = np.concatenate((dense, np.arange(5_000, end + 1, 5_000)))
    falling = np.clip((dense - 370) / 30, 0, 1)  # flat at 1 until batch 370, then down to 1e-30 by batch 400
    losses = np.concatenate((10.0 ** (-30 * falling), np.full(len(batches) - len(dense), 1e-30)))
    at, smoothed = smoothed_line(loss_chart(history_of(batches, losses), smoothing))
    later = at >= 0.05 * end
    assert later.sum() >= 19
    lag = np.log10(smoothed[later]) - np.log10(1e-30)  # decades above the raw line
    # A tenth of a decade, a factor of 1.26: a hair on a 30-decade axis. The first flat report, at batch 5,000, is
    # drawn there and weighs the 4,600 batches since the drop (drawn halfway to the next, it once weighed 7,100).
    assert np.abs(lag).max() < 0.1, f"smoothed line up to {lag.max():.2f} decades above the flat loss"


def test_the_smoothing_weighs_batches_not_points():
    """A dense stretch of reports does not outweigh a sparse one: what counts is how many batches each stands for."""
    batches = np.concatenate((np.arange(0, 1_000), np.arange(1_000, 100_001, 1_000)))  # 1,000 reports, then 100
    losses = np.where(batches < 1_000, 1.0, 0.5)
    at, smoothed = smoothed_line(loss_chart(history_of(batches, losses), 0.99, log_scale=False))
    middle = smoothed[np.searchsorted(at, 50_000)]
    assert abs(middle - 0.5) < 0.01, f"{middle:.3f}: the 1,000 early reports held the line up"


def test_smoothing_zero_is_off_and_diverged_points_pass_through():
    batches = np.arange(0, 1_000, 10)
    values = np.linspace(1.0, 0.1, len(batches))
    assert np.array_equal(smooth(batches, values, 0.0, 1.0), values)
    values[40] = np.nan
    smoothed = smooth(batches, values, 0.9, 1.0)
    assert np.isnan(smoothed[40]) and np.isfinite(np.delete(smoothed, 40)).all()
    np.testing.assert_array_equal(smoothed[:40], smooth(batches[:40], values[:40], 0.9, 1.0))


def test_no_loss_chart_until_two_batches_have_a_loss():
    assert len(loss_chart(history_of([0], [0.25]), 0.6)) == 0
    assert len(loss_chart(history_of([0, 1], [0.25, 0.0]), 0.6)) == 0, "a log axis cannot draw a zero loss"
    assert len(loss_chart(history_of([0, 1], [0.25, 0.0]), 0.6, log_scale=False)) > 0
    assert len(loss_chart(history_of([0, 1], [0.25, 0.24]), 0.6)) > 0
    assert "two" in charts.LOSS_PENDING


def write_run(tmp_path, records: list[dict]) -> tuple[RunDir, RunConfig]:
    run = RunDir(tmp_path / "run")
    config = RunConfig()
    create_run(run, config)
    out = RecordWriter(run.run_file, gen=1)
    for record in records:
        out.write(record)
    return run, config


def state_report(batch: int, sv) -> dict:
    return {"eta": [batch, 0.1], "sv": [batch, list(sv)], "target": [batch, 10**6], "report_every": [batch, 2_000]}


def test_the_lines_of_a_net_beyond_the_heatmaps_rows_say_which_parameters_they_are_taken_from(tmp_path):
    run = RunDir(tmp_path / "run")
    config = RunConfig(task="spiral", sizes=[2, 32, 32, 1])  # 1,185 parameters: whole in every report, not sampled
    create_run(run, config)
    out = RecordWriter(run.run_file, gen=1)
    for batch in (0, 100):
        out.write(state_report(batch, np.full(1185, batch / 100)))
    view = build_view(run, RunWatcher(run.run_file), config)
    assert not view.sampled and len(view.sv_names) < 1185
    lines, heat = view.sv_shown
    assert heat == f"the first {len(view.sv_names)} of 1,185 parameters"
    assert lines == f"a sample of {MAX_SV_LINES} of the first {len(view.sv_names)} of 1,185 parameters"
    shown = parameters_shown(view, as_tables(chart_frames(view, 0.6)))
    every_tensor = {"L1.W", "L1.b", "L2.W", "L2.b", "L3.W", "L3.b"}
    assert {layer_of(name) for name in shown.names} == every_tensor, "the charts draw every layer, the output's too"
    lines = shown.lines.to_pandas()
    assert set(lines["layer"].dropna()) == every_tensor and lines["parameter"].nunique() == MAX_SV_LINES
    assert set(shown.heat.to_pandas()["parameter"].dropna()) == set(shown.names) and 250 <= len(shown.names) <= 262
    assert shown.lines_said == f"{MAX_SV_LINES} of 1,185 parameters, spread over every tensor"
    assert shown.caption.startswith(f"This net has 1,185 parameters: the charts draw {len(shown.names)} of them, "
                                    "spread over every tensor")
    extent = lines[lines["extent"].fillna(False).astype(bool)]
    assert extent["batch"].tolist() == [0, 100], "they span the run as every chart over batches does"


def test_a_small_net_shows_every_parameter_as_a_line_and_in_the_heatmap(tmp_path):
    run = RunDir(tmp_path / "run")
    config = RunConfig(task="spiral", net="2x8tx8tx1t")  # 105 parameters, the spiral example's net
    create_run(run, config)
    out = RecordWriter(run.run_file, gen=1)
    for batch in (0, 100):
        out.write(state_report(batch, np.full(105, batch / 100)))
    view = build_view(run, RunWatcher(run.run_file), config)
    assert view.sv_shown == ("every parameter", "every parameter")
    assert parameters_shown(view, as_tables(chart_frames(view, 0.6))).caption == ""
    assert view.sv_lines["parameter"].nunique() == 105


def test_every_chart_over_batches_spans_the_whole_run(tmp_path):
    """State reports only between batches 4,000 and 8,000 of a run at 100,000: their charts still span the run."""
    rng = np.random.default_rng(1)
    records: list[dict] = [{"loss": [b, 1.0 / (b + 1)]} for b in range(0, 100_001, 500)]
    records += [state_report(b, rng.normal(size=9)) for b in range(4_000, 8_001, 500)]
    run, config = write_run(tmp_path, records)
    view = build_view(run, RunWatcher(run.run_file), config)
    frames = chart_frames(view, 0.6)

    for name in BATCH_CHARTS:
        frame = frames[name]
        assert (frame["batch"].min(), frame["batch"].max()) == (0, 100_000), name
        extent = frame[frame["extent"].fillna(False).astype(bool)]
        assert extent["batch"].tolist() == [0, 100_000], f"{name}: two invisible rows hold the run's range"
    assert frames["sv_lines"]["parameter"].dtype == "category", "names still travel once, not once a row"
    for spec in (charts.loss_spec(True), charts.sv_lines_spec(view.sv_names), charts.sv_heatmap_spec(view.sv_names),
                 charts.steps_spec("length"), charts.steps_spec("cosine")):
        first = spec["layer"][0]
        assert first["transform"] == [{"filter": "datum.extent === true"}] and first["mark"]["opacity"] == 0
        for layer in spec["layer"]:
            x = layer["encoding"]["x"]
            assert x["field"] == "batch" and x["scale"] == {"nice": False, "zero": False}, "no rounding past the run"
            if layer is not first:
                # the marks never draw the extent rows: they filter them out, or every row without a value
                assert "datum.extent === true" not in str(layer.get("transform")), "only the invisible layer draws them"


def test_a_chart_frame_costs_two_rows_more_however_long_the_run(tmp_path):
    run, config = write_run(tmp_path, [{"loss": [b, 0.5 + 0.1 * np.sin(b)]} for b in range(30_000)])
    view = build_view(run, RunWatcher(run.run_file), config)
    frames = chart_frames(view, 0.6)
    assert len(frames["loss"]) == len(view.loss) + len(view.loss_means) + len(view.markers) + 2
    assert len(frames["loss"]) <= 2_002 + 1_000 + 2


def test_the_decision_surface_colours_are_anchored_to_the_outputs_range(tmp_path):
    """A tanh net whose output is near -1 everywhere is drawn full blue: the scale spans -1..1, not the data."""
    cells = GRID * GRID
    x1 = x2 = np.zeros(cells)
    facts = (np.array([[-0.5, -0.5], [0.5, 0.5]]), np.array([[-0.5], [0.5]]))
    tanh = surface_frame(x1, x2, np.full(cells, -0.99), facts, "tanh")
    assert (tanh["output"].min(), tanh["output"].max()) == (-1.0, 1.0)
    identity = surface_frame(x1, x2, np.linspace(-3.0, 0.25, cells), facts, "identity")
    assert (identity["output"].min(), identity["output"].max()) == (-3.0, 3.0), "symmetric around zero"
    flat_zero = surface_frame(x1, x2, np.zeros(cells), (facts[0], np.zeros((2, 1))), "relu")
    assert flat_zero["output"].max() > 0, "a net that outputs only zeros still has a scale"
    with np.errstate(over="raise"):  # no float32 overflow into infinities that would break the colour scale
        diverged = surface_frame(x1, x2, np.linspace(-1e300, 1e300, cells), facts, "identity")
    assert not np.isinf(diverged["output"]).any() and diverged["output"].max() == np.float32(1e30), \
        "a diverged net's output is drawn at the scale's ends"
    assert tanh["x1"].isna().sum() == 2, "only the two range rows have no place on the plane"

    spec = charts.surface_spec()
    ranges = [layer for layer in spec["layer"] if layer.get("transform") == [{"filter": "!isValid(datum.x1)"}]]
    assert {channel for layer in ranges for channel in layer["encoding"]} == {"color", "fill"}, \
        "the cells' colour and the points' fill both see the range rows"
    for layer in spec["layer"]:
        for channel in set(layer["encoding"]) & {"color", "fill"}:
            scale = layer["encoding"][channel]["scale"]
            assert scale["domain"] == {"unionWith": [-1e-30, 1e-30]} and scale["domainMid"] == 0, \
                "the domain comes from the data, centred on 0"


def test_the_surface_cells_tile_the_plane_without_gaps():
    spec = charts.surface_spec()
    cells = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rect" and "x" in layer["encoding"])
    left = next(t for t in cells["transform"] if t.get("as") == "left")["calculate"]
    half = float(left.split("-")[1])
    assert half >= 2 * 1.0 / (GRID - 1) / 2, "a cell spans the grid's step, 2 * EXTENT / (GRID - 1)"


def test_loss_labels_stay_inside_the_chart_on_a_halo_and_the_markers_need_no_legend():
    spec = charts.loss_spec(True)
    kinds = [layer["mark"]["type"] for layer in spec["layer"]]
    halo_at, label_at = (i for i, kind in enumerate(kinds) if kind == "text")
    halo, label = spec["layer"][halo_at], spec["layer"][label_at]
    assert halo_at < label_at and not {"line", "rule"} & set(kinds[halo_at:]), "no line or rule drawn over a label"
    assert halo["mark"]["stroke"] == "white" and halo["mark"]["strokeWidth"] >= 4 and "color" not in halo["encoding"]
    for layer in (halo, label):  # right of the rule, or left of it where the label would run past the right edge
        side = layer["mark"]["align"]["expr"]
        assert "scale('x', datum.batch)" in side and "> width" in side and side.endswith("? 'right' : 'left'")
    assert all(layer["encoding"]["color"]["legend"] is None for layer in spec["layer"] if "color" in layer["encoding"])


def test_loss_axes_use_one_number_style():
    log_axis = charts.loss_spec(True)["layer"][1]["encoding"]["y"]["axis"]
    linear_axis = charts.loss_spec(False)["layer"][1]["encoding"]["y"]["axis"]
    assert log_axis["format"] == "~e" and "'e+', 'e'" in log_axis["labelExpr"], "1e-2, 1e-6, 1e-10: never 0.000001"
    assert linear_axis["format"] == "~r" and linear_axis["labelExpr"] == PLAIN_LABELS, "60, 40, 0.5: never 6e+1"
    batch_axis = charts.loss_spec(True)["layer"][1]["encoding"]["x"]["axis"]
    assert batch_axis["format"] == ",d" and batch_axis["tickMinStep"] == 1, "whole batches, never 0.000000"


def test_specs_stay_identical_between_refreshes_whatever_the_data():
    def specs() -> list[dict]:
        return [charts.loss_spec(True), charts.surface_spec(), charts.steps_spec("cosine"), charts.sv_heatmap_spec(("a",))]

    before = specs()
    loss_chart(history_of(np.arange(50), np.linspace(1, 0.1, 50)), 0.6)
    after = specs()
    assert before == after and all("data" not in spec and "datasets" not in spec for spec in after)


def test_the_smoothed_loss_starts_afresh_where_a_reinitialized_net_begins():
    history = RunHistory()
    old = [{"loss": [b, 1e-30], "t": 1.0, "gen": 1} for b in range(0, 10_000, 10)]
    reinit = [{"ack": [10_000, {"id": "r", "cmd": "reinit", "value": 3}], "event": [10_000, "reinit"], "seed": 3,
               "loss": [10_000, 0.25], "t": 2.0, "gen": 2}]
    new = [{"loss": [b, 0.25 * 0.999 ** (b - 10_000)], "t": 3.0, "gen": 2} for b in range(10_010, 12_000, 10)]
    history.add(old + reinit + new)
    frame = loss_chart_frame(loss_frame(history), loss_means_frame(history),
                                    markers_frame(history), 0.9, log_scale=True)
    smoothed = frame.dropna(subset=["smoothed"])
    after = smoothed[smoothed["batch"] > 10_000]
    assert after["smoothed"].iloc[0] > 0.1, "the new net's first losses, not the old net's 1e-30"
    assert np.all(np.diff(after["smoothed"].to_numpy()) <= 0), "a falling loss smooths to a falling line"
    assert set(markers_frame(history)["kind"]) == {"generation"}, "the reinit reads as a generation"


def test_the_step_lines_break_where_there_is_no_step_instead_of_bridging_the_gap():
    for figure in ("length", "cosine"):
        line = charts.steps_spec(figure)["layer"][1]
        filters = [t["filter"] for t in line.get("transform", []) if "filter" in t]
        assert filters == ["!datum.extent"], "rows without a value stay, so the path breaks there"
        assert line["mark"].get("invalid") in (None, "break-paths-show-domains")


# -- a script's metrics, a large net's summaries and sample ----------------------------------

TENSORS = [["fc1.weight", [3, 4]], ["fc1.bias", [3]]]  # 15 parameters


def started(batch: int = 0, sample=None, resumed_from=None) -> dict:
    return {"heartbeat": [batch, None], "event": [batch, "started"], "pid": 1, "resumed_from": resumed_from,
            "params": [batch, {"tensors": TENSORS, "sample": sample}]}


def summary_line(batch: int, change) -> dict:
    rows = [[2.0 + batch / 1000, 0.0, 0.5, -1.0, 1.0, change], [0.1, 0.01, 0.02, -0.03, 0.05, change]]
    return {"eta": [batch, 0.1], "summary": [batch, rows], "sample": [batch, [0.5, -0.25, 0.125]],
            "target": [batch, 10**6], "report_every": [batch, 100], "pace": [batch, 0.0]}


def script_run(tmp_path, records: list[dict]) -> RunDir:
    """A script's run directory: run.json and the run file, no config.json."""
    run = RunDir(tmp_path / "script")
    run.path.mkdir()
    run.description.write_text(json.dumps({"kind": "script", "argv": ["python", "train.py"], "cwd": "/home/me", "pid": 1}))
    out = RecordWriter(run.run_file, gen=1)
    for record in records:
        out.write(record)
    return run


def test_a_metric_keeps_its_latest_value_and_every_windows_extremes():
    history = RunHistory()
    history.add([started()] + [
        {"loss": [b, 1.0 / b], "metrics": [b, {"accuracy": [0.5 + b / 1000, 10, 0.01, b - 7, 0.99, b - 3, 0.6]}]}
        for b in range(10, 101, 10)
    ] + [{"loss": [105, 0.01], "metrics": [105, {"accuracy": [0.75]}]}])
    accuracy = history.metrics["accuracy"]
    assert accuracy.latest == (105, 0.75)
    points, means = metric_frames(history)["accuracy"]
    assert {0.01, 0.99, 0.75} <= set(points["value"]), "the window's min and max and the latest value"
    assert points["batch"].is_monotonic_increasing and 93 in set(points["batch"]), "each extreme where it was"
    assert np.isclose(means["mean"].iloc[0], 0.6)


def test_a_metric_logged_once_or_never_as_a_number_says_so_instead_of_a_chart(tmp_path):
    run = script_run(tmp_path, [started(), {"loss": [1, 0.5], "metrics": [1, {"once": [0.25], "never": [None]}]},
                                {"loss": [2, 0.4], "metrics": [2, {"never": [None]}]}])
    view = build_view(run, RunWatcher(run.run_file), None)
    frames = chart_frames(view, 0.6)
    assert len(frames["metric:once"]) == 0 and len(frames["metric:never"]) == 0
    assert charts.metric_pending("once", view.metrics["once"][0]) == \
        "**once**: 0.25 at batch 1, the one batch it was logged at so far."
    assert "not yet as a number" in charts.metric_pending("never", view.metrics["never"][0])
    assert view.status.loss == 0.45 and not view.status.diverged, "a null metric does not make the loss diverged"


def test_summaries_written_before_the_bands_become_per_tensor_series_named_by_the_params_record(tmp_path):
    run = script_run(tmp_path, [started(sample=[0, 7, 14])] + [summary_line(b, None if b == 0 else 1e-3 * (b + 1))
                                                               for b in range(0, 501, 100)])
    watcher = RunWatcher(run.run_file)
    view = build_view(run, watcher, None)
    assert view.tensors == ("fc1.weight", "fc1.bias") and view.sampled
    layers = layer_charts.layer_frames(watcher.history, view.tensors, ())
    norm = layers["norm"]
    assert norm.loc[norm["tensor"] == "fc1.weight", "value"].tolist() == [2.0 + b / 1000 for b in range(0, 501, 100)]
    assert layers["bands"]["p50"].isna().all(), "summaries without the bands leave them unknown, not zero"
    assert layers["bands"]["max"].tolist()[:1] == [1.0]
    assert np.isnan(watcher.history.layers.first[1][SUMMARY.index("change")]), "no change at the first report"
    assert view.sv_names == ("fc1.weight[0,0]", "fc1.weight[1,3]", "fc1.bias[2]"), "the sample's own names"
    assert view.sv_shown[1] == "a sample of 3 of 15 parameters"
    frames = chart_frames(view, 0.6)
    assert "step_lengths" not in frames and view.surface is None
    assert view.script["argv"] == ["python", "train.py"]


def test_parameter_names_come_from_the_run_files_params_before_the_configs(tmp_path):
    sv = {"eta": [0, 0.1], "sv": [0, list(np.arange(15.0))], "target": [0, 9], "report_every": [0, 1]}
    run, config = write_run(tmp_path, [started(), sv])  # the config's net (L1.W, ...) does not have 15 parameters
    view = build_view(run, RunWatcher(run.run_file), config)
    assert view.sv_names[:2] == ("fc1.weight[0,0]", "fc1.weight[0,1]") and view.sv_names[-1] == "fc1.bias[2]"
    assert view.sv_shown == ("every parameter", "every parameter") and view.surface is None


def test_a_restart_from_an_earlier_checkpoint_truncates_metrics_and_summaries_too():
    history = RunHistory()
    history.add([started(sample=[0, 7, 14])]
                + [summary_line(b, 0.01) for b in range(0, 1001, 100)]
                + [{"loss": [b, 0.5], "metrics": [b, {"accuracy": [b / 1000]}]} for b in range(10, 1001, 10)]
                + [started(500, sample=[0, 7, 14], resumed_from=500)])
    assert history.layers.last[0] <= 500 and history.metrics["accuracy"].outline.last[0] <= 500
    points, _ = metric_frames(history)["accuracy"]
    assert points["batch"].max() <= 500 and points["value"].max() <= 0.5, "nothing of the line gone back from"
    assert layer_charts.layer_frames(history, ("a", "b"), ())["norm"]["batch"].max() <= 500
    history.add([{"loss": [510, 0.4], "metrics": [510, {"accuracy": [0.2]}]}])
    assert history.metrics["accuracy"].latest == (510, 0.2)


def charts_over_batches() -> dict[str, dict]:
    names = ("L1.W[0,0]", "L1.b[0]")
    return {"loss": charts.loss_spec(True), "metric": charts.metric_spec("accuracy"),
            "lines": charts.sv_lines_spec(names), "heatmap": charts.sv_heatmap_spec(names),
            "steps": charts.steps_spec("length"), "norm": layer_charts.norm_spec(("L1.W",)),
            "update": layer_charts.update_spec(("L1.W",)), "dead": layer_charts.dead_spec(("L1 (8 units)",), 8),
            "bands": layer_charts.bands_spec(("L1.W",))}


def views_over_batches(spec: dict) -> list[dict]:
    parts = [*spec.get("layer", []), *([spec["spec"]] if "spec" in spec else [])]
    own = [spec] if spec.get("encoding", {}).get("x", {}).get("title", "").startswith("batch") else []
    return own + [view for part in parts for view in views_over_batches(part)]


def test_a_run_that_spans_decades_of_batches_opens_on_a_log_batch_axis():
    fast = np.array([0, 1, 2, 3, 5_000, 478_000])  # the default XOR run six seconds in
    assert log_batches_by_default(fast, 478_000)
    assert not log_batches_by_default(np.array([0, 1, 2, 900]), 900), "a run under three decades stays linear"
    assert not log_batches_by_default(np.array([10_000, 20_000, 400_000]), 400_000), "a fork from batch 10,000 too"
    assert not log_batches_by_default(np.array([0]), 0) and not log_batches_by_default(np.array([], int), 5)


def test_every_chart_over_batches_goes_log_from_batch_1_and_keeps_its_marks_at_their_batches():
    for name, spec in charts_over_batches().items():
        views = views_over_batches(on_log_batches(spec))
        assert views, name
        for view in views:
            x, transforms = view["encoding"]["x"], view.get("transform", [])
            assert x["scale"]["type"] == "log" and x["title"] == LOG_BATCH_TITLE, name
            assert x["axis"]["labelExpr"] and 1000 in x["axis"]["values"], f"{name}: labelled at the decades alone"
            if transforms[:1] == [{"filter": "datum.extent === true"}] or "x2" in view["encoding"]:
                # the run's extent and a heatmap's bins start at batch 1 where they began at 0
                assert x["field"].endswith("_from_1"), name
                assert {"calculate": f"max(datum.{x['field'].removesuffix('_from_1')}, 1)",
                        "as": x["field"]} in transforms, name
            else:
                assert transforms[0] == {"filter": "datum.batch >= 1"} and x["field"] == "batch", \
                    f"{name}: every mark at its own batch, those at 0 left out"
    labels = [view for view in on_log_batches(charts.loss_spec(True))["layer"] if view["mark"]["type"] == "text"]
    assert all("scale('x', datum.batch)" in view["mark"]["align"]["expr"] for view in labels), \
        "the markers' labels placed by their own batch"
    assert charts.loss_spec(True)["layer"][1]["encoding"]["x"]["scale"] == {"nice": False, "zero": False}, \
        "the specs handed out are not changed"


def test_diverging_colour_scales_keep_their_middle_inside_their_domain_with_no_data_yet():
    """Vega's legend reads a diverging scale whose middle (0) lies outside its domain at NaN and throws
    "TypeError: a[t] is not a function": so it does for a chart drawn before its data arrive."""
    for spec in (charts.surface_spec(), charts.sv_heatmap_spec(("a",))):
        for layer in spec["layer"]:
            for channel in {"color", "fill"} & set(layer.get("encoding", {})):
                scale = layer["encoding"][channel]["scale"]
                if "domainMid" in scale:
                    low, high = scale["domain"]["unionWith"]
                    assert low < scale["domainMid"] < high


def axes_of(spec) -> list[dict]:
    """Every axis a spec sets, wherever it is layered or faceted."""
    if isinstance(spec, dict):
        found = [spec["axis"]] if isinstance(spec.get("axis"), dict) else []
        return found + [axis for value in spec.values() for axis in axes_of(value)]
    if isinstance(spec, list):
        return [axis for value in spec for axis in axes_of(value)]
    return []


def test_numbers_on_axes_read_plain_and_log_axes_only_at_their_decades():
    specs = [*charts_over_batches().values(), charts.loss_spec(False), charts.loss_spec(True, with_test=True),
             trajectory.path_spec((0.9, 0.1), (0, 1000)), trajectory.loss_along_spec(),
             charts.compare_spec("loss", "batch", True, ("a",), ("#000",), ((),)),
             charts.compare_spec("loss", "batch", False, ("a",), ("#000",), ((),))]
    axes = [axis for spec in specs for axis in axes_of(spec)]
    assert not [axis for axis in axes if axis.get("format") == "~g"], "Vega's ~g writes 60 as 6e+1 on a 20-step axis"
    numbers = [axis for axis in axes if axis.get("format") in ("~r", "~e")]
    assert numbers and all(axis["labelExpr"] in (PLAIN_LABELS, LOG_LABELS) for axis in numbers)
    decade, between = LOG_LABELS.split(" : ", 1)
    assert "'.0e'" in decade and "round(" in decade, "a decade written 1e-3"
    assert between.endswith(": ''") and "< 1.5" in between, "between decades nothing, unless the axis spans no decade"


def test_the_rule_of_thumbs_label_is_drawn_once_above_the_loss_legend_markers_and_neuron_labels_clear_of_links():
    update = layer_charts.update_spec(("L1.W",))
    texts = [layer for layer in update["layer"] if layer["mark"]["type"] == "text"]
    assert len(texts) == 2 and all(layer["transform"] == [{"aggregate": [{"op": "count", "as": "rows"}]}]
                                   for layer in texts), "a halo and a label, each over one row, not one per point"
    legends = [layer["encoding"]["color"]["legend"] for layer in charts.loss_spec(True, with_test=True)["layer"]
               if layer.get("encoding", {}).get("color", {}).get("legend")]
    assert [legend["orient"] for legend in legends] == ["top"], "the legend above the plot, not over its labels"
    diagram = neurons.neurons_spec(RunConfig(task="spiral", net="2x8tx8tx1t"))["hconcat"][0]["layer"]
    marks = [(layer["mark"]["type"], layer["mark"].get("stroke")) for layer in diagram]
    assert marks == [("rule", None), ("rect", None), ("text", "white"), ("text", None)], \
        "links under the maps, and each label on a white halo over them"


def test_a_log_scale_loss_chart_says_which_reports_of_zero_it_leaves_out():
    reached_zero = pd.DataFrame({"batch": [0, 10, 20, 30], "loss": [2.3, 1e-7, 0.0, 0.0]})
    said = charts.off_the_log_axis(reached_zero)
    assert said.startswith("2 loss reports of 0 or below, the first at batch 20,")
    assert "Log-scale loss" in said
    assert charts.off_the_log_axis(reached_zero.iloc[:2]) == ""
