"""The lab pages' plain logic: run colours, the settings that differ, compared curves, the new-run and fork forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nnobs.views.compare import Curves, curve_frame, differing_settings, settings_of
from nnobs.protocol.errors import NnobsError
from nnobs.app.new_run_form import read_form
from nnobs.views.overview import RunRow
from nnobs.app.overview_page import overview_frame
from nnobs.app.run_fork import read_fork
from nnobs.views.palette import OKABE_ITO, assign
from nnobs.protocol.rundir import list_runs
from nnobs.views.wording import fork_origin


def test_runs_created_one_after_another_get_neighbouring_and_different_colours():
    created = {"sweep-a": 100.0, "sweep-b": 100.1, "sweep-c": 100.2, "old": 5.0}
    colours = assign(["sweep-c", "old", "sweep-a", "sweep-b"], created.get)
    assert list(colours) == ["old", "sweep-a", "sweep-b", "sweep-c"], "in the order the runs were made"
    assert [colour for colour, _ in colours.values()] == list(OKABE_ITO[:4])
    assert len({colour for colour, _ in colours.values()}) == 4


def test_the_same_runs_get_the_same_colours_whatever_order_they_were_picked_in():
    created = {name: float(i) for i, name in enumerate("abcdef")}
    assert assign(list("fedcba"), created.get) == assign(list("abcdef"), created.get)
    assert assign(["a", "a", "b"], created.get) == assign(["a", "b"], created.get)


def test_past_the_palette_colours_come_round_with_a_dash():
    created = {f"r{i}": float(i) for i in range(9)}
    colours = assign(list(created), created.get)
    assert colours["r7"] == (OKABE_ITO[0], (6, 3)) and colours["r0"] == (OKABE_ITO[0], ())
    assert len(set(colours.values())) == 9, "no two runs look alike"


def test_only_the_settings_that_differ_are_listed_with_the_fork_origin():
    base = '{"task": "spiral", "net": "2x8tx8tx1t", "eta": 0.03, "seed": 3, "target": 1000}'
    settings = {
        "parent": settings_of(base, None, None),
        "fork": settings_of(base.replace("0.03", "0.3"), {"run": "parent", "batch": 12000}, None),
        "script": settings_of(None, None, "script `python train.py`"),
    }
    table = differing_settings(settings)
    assert list(table.index) == ["parent", "fork", "script"]
    assert table.loc["fork", "eta"] == "0.3" and table.loc["parent", "eta"] == "0.03"
    assert table.loc["fork", "forked from"] == "parent at batch 12,000"
    assert table.loc["script", "task"] == "-" and table.loc["script", "script"] == "script `python train.py`"
    same = differing_settings({"a": settings_of(base, None, None), "b": settings_of(base, None, None)})
    assert list(same.columns) == [], "two runs of one config differ in nothing"


def curves(batches, losses, test=None) -> Curves:
    loss = pd.DataFrame({"batch": batches, "mean": losses})
    tests = pd.DataFrame({"batch": [], "mean": []}) if test is None else pd.DataFrame({"batch": batches, "mean": test})
    return Curves(loss=loss, test=tests, times=None, batch=int(batches[-1]))


def test_compared_curves_are_smoothed_over_the_same_batches_and_leave_out_what_a_log_axis_cannot_draw():
    flat = curves(np.arange(0, 1000, 10), np.full(100, 0.25))
    broken = curves(np.arange(0, 5000, 50), np.r_[np.full(50, 0.5), np.zeros(50)], test=np.full(100, 0.4))
    frame = curve_frame({"flat": flat, "broken": broken}, "loss", 0.9, log_scale=True)
    assert list(frame["run"].cat.categories) == ["flat", "broken"]
    assert np.allclose(frame.loc[frame["run"] == "flat", "value"], 0.25), "a flat line stays flat"
    assert (frame["value"] > 0).all() and len(frame[frame["run"] == "broken"]) == 50
    assert frame["t"].isna().all(), "no clock: no wall time"
    tests = curve_frame({"flat": flat, "broken": broken}, "test", 0.0, log_scale=False)
    assert set(tests["run"]) == {"broken"} and np.allclose(tests["value"], 0.4)


def test_wall_time_comes_from_the_runs_clock():
    run = curves(np.array([0, 100, 200]), np.array([1.0, 0.5, 0.25]))
    run.times = (np.array([0, 200]), np.array([1000.0, 1002.0]))
    frame = curve_frame({"r": run}, "loss", 0.0, log_scale=False)
    assert frame["t"].tolist() == [1_000_000.0, 1_001_000.0, 1_002_000.0]


@pytest.mark.parametrize("numbers, says", [
    ({"eta": "-1"}, "Eta must be a number above 0"),
    ({"batch_size": "ten"}, "Batch size must be a whole number"),
    ({"noise": "0.9"}, "noise"),
    ({"target": "1.5"}, "The target must be a whole number"),
])
def test_the_new_run_form_refuses_bad_input_and_creates_nothing(runs_root, numbers, says):
    with pytest.raises(NnobsError, match=says):
        read_form("fresh", "spiral", "", numbers, root=runs_root)
    assert list_runs(runs_root) == []


def test_the_new_run_form_refuses_a_malformed_net_a_bad_name_and_a_taken_one(runs_root, new_run):
    with pytest.raises(NnobsError, match="2x8tx8tx1t|net"):
        read_form("fresh", "spiral", "2x8qx1", {}, root=runs_root)
    with pytest.raises(NnobsError, match="run name"):
        read_form("no spaces", "spiral", "", {}, root=runs_root)
    new_run("taken")
    with pytest.raises(NnobsError, match="exists already"):
        read_form("taken", "spiral", "", {}, root=runs_root)


def test_the_new_run_form_reads_what_was_typed_and_keeps_the_defaults_of_blanks(runs_root):
    run, config = read_form(" spiral-9 ", "spiral", "2x8tx8tx1t", {"eta": "0.03", "batch_size": "16", "noise": "0.1",
                                                                  "seed": "3", "target": "5,000", "pace": ""},
                            root=runs_root)
    assert run.name == "spiral-9" and not run.exists()
    assert (config.task, config.net, config.eta, config.batch_size, config.noise, config.seed, config.target) == (
        "spiral", "2x8tx8tx1t", 0.03, 16, 0.1, 3, 5000)


def test_the_fork_form_reads_its_fields_strictly():
    assert read_fork("b", "0.3", "", "") == ("b", 0.3, None, None)
    assert read_fork("b", "", "20,000", "1e4") == ("b", None, 20000, 10000)
    with pytest.raises(NnobsError, match="Eta must be"):
        read_fork("b", "fast", "", "")
    with pytest.raises(NnobsError, match="run name"):
        read_fork("../b", "", "", "")


def test_a_fork_says_where_it_came_from_and_what_changed():
    origin = {"run": "base", "batch": 12000, "changed": {"eta": 0.3}, "parent": {"eta": 0.1, "target": 10**6}}
    assert fork_origin(origin) == "Forked from `base` at batch 12,000, with eta 0.3 (it had 0.1)"
    assert fork_origin({"run": "base", "batch": 5}) == "Forked from `base` at batch 5"


def test_the_overview_table_has_a_row_per_run_with_a_log_sparkline():
    row = RunRow(name="a", label="training", task="spiral", net="2x8tx1t", batch=10, loss=0.1, test_loss=None,
                 rate=5.0, heartbeat_age_s=2.0, created=1.0, sparkline=[(0, 1.0), (5, 0.01), (9, 0.0)])
    frame = overview_frame([row], now=100.0)
    assert frame["loss curve"][0] == [0.0, -2.0], "decades, and a zero loss has no place on a log line"
    assert frame["last record"][0] == pd.Timestamp(98.0, unit="s")
    assert np.isnan(frame["test loss"][0]) and frame["state"][0] == "training"
