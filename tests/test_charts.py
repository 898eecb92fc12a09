"""Chart data: min/max buckets that keep every extreme, and charts drawn from a real run file."""

from __future__ import annotations

import numpy as np
from conftest import SEED_RUN

from nnobs.protocol.records import RecordReader, RecordWriter, read_all
from nnobs.protocol.schema import loss_report, state_report
from nnobs.reading.history import RunHistory, WindowedSeries
from nnobs.reading.series import MinMaxBuckets
from nnobs.reading.watcher import RunWatcher
from nnobs.training.builtin.tasks import RunConfig, parameter_names
from nnobs.views import charts
from nnobs.views.frames import (
    HEATMAP_COLUMNS,
    loss_chart_frame,
    loss_frame,
    loss_means_frame,
    markers_frame,
    means_frame,
    sv_frames,
)


def fed(values: np.ndarray, max_buckets: int = 1000, chunk: int = 997) -> MinMaxBuckets:
    """Buckets fed values in chunks, as a live run feeds them refresh by refresh."""
    buckets = MinMaxBuckets(1, max_buckets)
    batches = np.arange(len(values))
    for start in range(0, len(values), chunk):
        buckets.extend(batches[start : start + chunk], values[start : start + chunk, None])
    return buckets


def test_below_the_bound_every_point_is_kept():
    values = np.random.default_rng(0).normal(size=500)
    batches, kept = fed(values, chunk=7).points(0)
    assert np.array_equal(batches, np.arange(500)) and np.array_equal(kept, values)


def test_every_bucket_keeps_its_min_and_max_and_the_last_point():
    values = np.random.default_rng(1).normal(size=100_003)
    buckets = fed(values)
    batches, kept = buckets.points(0)
    assert len(batches) <= 2 * buckets.max_buckets + 2 and np.all(np.diff(batches) > 0)
    for b in range(buckets.n_buckets):
        bucket = values[b * buckets.width : (b + 1) * buckets.width]
        assert b * buckets.width + bucket.argmin() in batches and b * buckets.width + bucket.argmax() in batches
    assert batches[0] == 0 and batches[-1] == len(values) - 1 and kept[-1] == values[-1]


def test_a_one_batch_spike_in_a_million_points_survives():
    values = np.random.default_rng(2).normal(size=1_000_000)
    values[654_321] = 40.0
    values[123_456] = -40.0
    batches, kept = fed(values).points(0)
    assert len(batches) <= 2002
    assert kept[batches == 654_321] == [40.0] and kept[batches == 123_456] == [-40.0]


def test_diverged_points_never_hide_a_number():
    values = np.full(10_000, np.nan)
    values[:100] = np.linspace(1, 0, 100)
    batches, kept = fed(values, max_buckets=100).points(0)
    assert batches[0] == 0 and batches[-1] == 9_999 and 99 in batches and kept[batches == 99] == [0.0]


def test_heatmap_means_match_the_raw_values():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(5_000, 3))
    buckets = MinMaxBuckets(3, 100)
    buckets.extend(np.arange(5_000) * 10, values)
    starts, ends, means = buckets.means(25)
    assert len(starts) <= 25 and starts[0] == 0 and ends[-1] == 49_991
    rows = (starts // 10).tolist() + [5_000]
    for i in range(len(starts)):
        np.testing.assert_allclose(means[i], values[rows[i] : rows[i + 1]].mean(axis=0))


def test_seed_notebook_run_file_plots_loss_and_state_vector():
    history = RunHistory()
    history.add(read_all(SEED_RUN))
    names = parameter_names(RunConfig())

    loss = loss_frame(history)
    lines, heat = sv_frames(history, names)

    assert len(loss) == 19 and loss["batch"].iloc[-1] == 20_000
    assert set(lines["parameter"]) == set(names) and lines["batch"].max() == 20_000
    assert len(heat) <= HEATMAP_COLUMNS * len(names) and set(heat["parameter"]) == set(names)
    for spec in (charts.loss_spec(True), charts.sv_lines_spec(tuple(names)), charts.sv_heatmap_spec(tuple(names))):
        assert "data" not in spec and "datasets" not in spec, "data travels beside the spec"


def test_chart_specs_are_identical_between_refreshes():
    assert charts.loss_spec(True) == charts.loss_spec(True)
    spec = charts.sv_lines_spec(("a", "b"))
    spec["title"] = "changed by a caller"
    assert charts.sv_lines_spec(("a", "b"))["title"] != "changed by a caller"


def test_a_refresh_reads_only_the_bytes_appended_since_the_last(tmp_path):
    run_file = tmp_path / "run.jsonl"
    out = RecordWriter(run_file, gen=1)
    for batch in range(1000):
        out.write({"loss": [batch, 1.0 / (batch + 1)]})
    watcher = RunWatcher(run_file)
    watcher.refresh()
    first = run_file.stat().st_size
    assert watcher.reader.bytes_read == first

    for batch in range(1000, 1010):
        out.write({"loss": [batch, 0.5]})
    history = watcher.refresh()

    assert watcher.reader.bytes_read == run_file.stat().st_size, "only the ten new lines were read"
    assert len(history.loss_batches) == 1010 and history.batch == 1009
    assert watcher.refresh().n_records == 1010 and watcher.reader.bytes_read == run_file.stat().st_size


def test_a_replaced_run_file_is_read_again_from_the_start_without_doubling(tmp_path):
    run_file = tmp_path / "run.jsonl"
    out = RecordWriter(run_file, gen=1)
    for batch in range(100):
        out.write({"loss": [batch, 1.0]})
    watcher = RunWatcher(run_file)
    watcher.refresh()

    replacement = tmp_path / "new.jsonl"
    RecordWriter(replacement, gen=2).write({"loss": [7, 0.25]})
    replacement.replace(run_file)
    history = watcher.refresh()

    assert watcher.reader.restarts == 1
    assert history.loss_series()[0].tolist() == [7] and history.loss == 0.25 and history.gen == 2


def test_a_torn_last_line_waits_for_its_end(tmp_path):
    run_file = tmp_path / "run.jsonl"
    RecordWriter(run_file, gen=1).write({"loss": [1, 0.5]})
    with open(run_file, "ab") as f:
        f.write(b'{"loss":[2,0.')
    watcher = RunWatcher(run_file)
    assert watcher.refresh().loss_series()[0].tolist() == [1]
    with open(run_file, "ab") as f:
        f.write(b'25],"t":1.0,"gen":1}\n')
    assert watcher.refresh().loss_series()[0].tolist() == [1, 2] and watcher.history.skipped_lines == 0


def test_bulk_parsing_agrees_with_json_line_by_line(tmp_path):
    """The regex fast path and json.loads must read the same series from any mix of lines."""
    run_file = tmp_path / "run.jsonl"
    out = RecordWriter(run_file, gen=3)
    rng = np.random.default_rng(4)
    for batch in range(3000):  # enough lines for the bulk number parser to take over
        kind = rng.integers(7)
        if kind == 0:
            out.write({"eta": [batch, 0.1], "sv": [batch, rng.normal(size=3)], "target": [batch, 9], "report_every": [batch, 5]})
        elif kind == 6:  # today's shapes: a state report with its pace, a loss report with its window
            out.write(state_report(batch, 0.1, rng.normal(size=3), 9, 5, float(rng.integers(3))))
            lows = sorted(rng.normal(size=2) * 10.0 ** float(rng.integers(-30, 30)))
            out.write(loss_report(batch, float(rng.normal()), (int(rng.integers(2, 99)), lows[0], batch - 1, lows[1], batch, 0.5)))
        elif kind == 1:
            out.write({"loss": [batch, float("nan")]})  # diverged: null plus a flag
        elif kind == 2:
            out.write({"loss": [batch, 0.5], "event": [batch, "started"], "pid": 1, "resumed_from": batch})
        else:
            out.write({"loss": [batch, float(rng.normal()) * 10.0 ** float(rng.integers(-30, 30))]})
    with open(run_file, "ab") as f:
        f.write(b"garbage\n\xff\xfe\n[1,2]\n")
    reader = RecordReader(run_file)
    records = reader.read_new()
    history = RunHistory()
    history.add_lines(run_file.read_bytes())

    expected = [(r["loss"][0], np.nan if r["loss"][1] is None else r["loss"][1]) for r in records if "loss" in r]
    batches, losses = history.loss_series()
    assert batches.tolist() == [b for b, _ in expected]
    np.testing.assert_array_equal(losses, [v for _, v in expected])
    windows = [r["window"][1] if "window" in r else None for r in records if "loss" in r]
    assert sum(w is not None for w in windows) > 100, "enough windows to take the bulk path"
    for window, parsed, value, batch in zip(windows, history.loss_windows.values(), losses, batches):
        np.testing.assert_array_equal(parsed, window or [1, value, batch, value, batch, value])
    assert history.pace == next(r["pace"][1] for r in reversed(records) if "pace" in r)
    sv_rows = [r["sv"] for r in records if "sv" in r]
    assert history.sv_batches.values().tolist() == [b for b, _ in sv_rows]
    assert history.sv_latest.tolist() == sv_rows[-1][1]
    assert history.skipped_lines == reader.skipped_lines == 3
    assert len(history.events) == sum("event" in r for r in records) and history.gen == 3


def test_a_malformed_number_in_a_worker_shaped_line_is_skipped_not_misread():
    good = b'{"eta":[5,0.1],"sv":[5,[1.5,2]],"target":[5,9],"report_every":[5,1],"t":1.0,"gen":1}\n'
    bad_sv = b'{"eta":[6,0.1],"sv":[6,[1.5,,2]],"target":[6,9],"report_every":[6,1],"t":1.0,"gen":1}\n'
    bad_loss = b'{"loss":[7,0.5.5],"t":1.0,"gen":1}\n'
    for many in (3, 5000):  # a refresh's few lines, and a cold load's many
        history = RunHistory()
        history.add_lines(good * many + bad_sv + bad_loss + b'{"loss":[8,0.25],"t":2.0,"gen":1}\n')
        assert history.skipped_lines == 2
        assert history.sv_batches.values().tolist() == [5] * many and history.loss_series()[0].tolist() == [8]


def test_smoothing_follows_the_mean_not_the_spikes_of_a_long_run():
    rng = np.random.default_rng(5)
    losses = np.where(rng.random(200_000) < 0.01, 10.0, 1.0)  # spikes on 1% of batches: mean 1.09
    history = RunHistory()
    history.add_lines(b"".join(b'{"loss":[%d,%r],"t":1.0,"gen":1}\n' % (i, float(v)) for i, v in enumerate(losses)))
    means = loss_means_frame(history)
    frame = loss_chart_frame(loss_frame(history), means, markers_frame(history), 0.9, False)
    smoothed = frame["smoothed"].dropna().to_numpy()
    assert frame["loss"].max() == 10.0, "the raw outline keeps the spikes"
    assert abs(smoothed[-100:].mean() - losses.mean()) < 0.05, "the smoothed line sits at the mean"


def test_a_mean_is_drawn_at_the_batches_it_stands_for_and_a_lone_value_at_its_own():
    def series(batches, windows):
        windows = np.array(windows, dtype=float)
        made = WindowedSeries(1000)
        made.extend(np.array(batches), windows[:, 5], windows)
        return means_frame(made)["batch"].tolist()

    # A test loss, logged alone at batches 1 and 3,000: not halfway to the next one.
    assert series([1, 3000], [[1, 0.65, 1, 0.65, 1, 0.65], [1, 0.1, 3000, 0.1, 3000, 0.1]]) == [1, 3000]
    # Loss reports whose windows cover batches 1-100 and 101-200: at their middles.
    assert series([0, 100, 200], [[1, 1.0, 0, 1.0, 0, 1.0], [100, 0.5, 7, 0.9, 1, 0.7], [100, 0.2, 200, 0.4, 101, 0.3]]) \
        == [0, 51, 151]


def test_odd_but_valid_json_lines_are_skipped_and_the_rest_kept():
    history = RunHistory()
    history.add_lines(
        b'{"loss":[1,0.5],"t":1.0,"gen":1}\n{"sv":[5,["x",1]]}\n{"sv":[6,[[1,2],[3,4]]]}\n'
        b'{"loss":[99999999999999999999,0.5]}\n{"loss":[2,"fast"]}\n{"loss":[3,0.25],"t":2.0,"gen":1}\n'
    )
    assert history.loss_series()[0].tolist() == [1, 3] and history.sv_latest is None and history.loss == 0.375


def test_markers_at_one_batch_share_one_label_so_none_is_written_over():
    history = RunHistory()
    ack = {"id": "a", "seq": 1, "cmd": "target", "value": 0}
    history.add([
        {"ack": [500, ack], "target": [500, 0], "gen": 1},
        {"ack": [500, {**ack, "id": "b", "cmd": "eta", "value": 0.05}], "gen": 1},
        {"event": [500, "started"], "pid": 7, "resumed_from": 500, "gen": 2},
        {"ack": [900, {**ack, "id": "c", "value": 9000}], "gen": 2},
    ])
    frame = markers_frame(history)
    assert frame["batch"].tolist() == [500, 900]
    assert frame["label"].tolist() == ["target 0 · eta 0.05 · gen 2", "target 9,000"]
    assert frame["lane"].nunique() == 2, "neighbouring labels step down"
