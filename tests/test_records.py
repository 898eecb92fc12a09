"""The run file: stamped records written whole, read incrementally, torn and foreign lines survived."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SEED_RUN
from nnobs.reading.history import RunHistory
from nnobs.protocol.records import RecordReader, RecordWriter, read_all
from nnobs.protocol.schema import LINE, LOSS, loss_report, metric_entry, params_record, summary_report, tensor_summary


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    return tmp_path / "run.jsonl"


def write_records(path: Path, *records: dict, gen: int | None = 1) -> None:
    writer = RecordWriter(path, gen=gen)
    for record in records:
        assert writer.write(record)
    writer.close()


def append_raw(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN, Infinity and -Infinity, as every other JSON reader does."""

    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_records_read_back_stamped_with_time_and_generation(run_file):
    before = time.time()
    write_records(run_file, {"loss": [1, 0.5]}, {"eta": [1, 0.1]}, gen=3)

    records = RecordReader(run_file).read_new()

    assert [{k: r[k] for k in r if k not in ("t", "gen")} for r in records] == [{"loss": [1, 0.5]}, {"eta": [1, 0.1]}]
    assert all(r["gen"] == 3 for r in records)
    assert all(before - 1 <= r["t"] <= time.time() + 1 for r in records)


def test_each_record_is_one_complete_line(run_file):
    write_records(run_file, {"loss": [1, 0.5]}, {"sv": [1, [1.0, 2.0]]})
    lines = run_file.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert all(isinstance(strict_json(line), dict) for line in lines[:-1])


def test_incremental_read_returns_only_new_records_and_advances_the_offset(run_file):
    reader = RecordReader(run_file)
    assert reader.read_new() == []  # no file yet
    write_records(run_file, {"loss": [1, 0.5]})
    assert [r["loss"] for r in reader.read_new()] == [[1, 0.5]]
    offset = reader.offset
    assert offset == run_file.stat().st_size

    assert reader.read_new() == []
    write_records(run_file, {"loss": [2, 0.4]}, {"loss": [3, 0.3]})

    assert [r["loss"] for r in reader.read_new()] == [[2, 0.4], [3, 0.3]]
    assert reader.offset == run_file.stat().st_size > offset
    assert reader.restarts == 0


def test_torn_last_line_waits_until_completed_then_is_returned_once(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    reader = RecordReader(run_file)
    reader.read_new()
    line = json.dumps({"loss": [2, 0.25]}).encode()

    append_raw(run_file, line[:7])
    assert reader.read_new() == []
    append_raw(run_file, line[7:])
    assert reader.read_new() == []  # complete JSON, but no newline yet: the writer may not be done
    append_raw(run_file, b"\n")

    assert reader.read_new() == [{"loss": [2, 0.25]}]
    assert reader.read_new() == []
    assert reader.skipped_lines == 0


def test_new_writer_ends_a_torn_line_so_only_that_line_is_lost(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    append_raw(run_file, b'{"loss": [2, 0.2')  # a writer killed mid-line

    write_records(run_file, {"event": [2, "started"]}, gen=2)

    reader = RecordReader(run_file)
    assert [(r["gen"], [k for k in r if k not in ("t", "gen")]) for r in reader.read_new()] == [
        (1, ["loss"]),
        (2, ["event"]),
    ]
    assert reader.skipped_lines == 1


def test_new_writer_on_a_file_ending_in_a_newline_adds_no_blank_line(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    write_records(run_file, {"loss": [2, 0.4]})
    assert b"\n\n" not in run_file.read_bytes()


def test_garbage_and_non_utf8_lines_are_skipped_and_counted(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    append_raw(run_file, b"not json at all\n\xff\xfe{\"loss\": [9, 1]}\n[1, 2]\n\n")
    write_records(run_file, {"loss": [2, 0.4]})

    reader = RecordReader(run_file)
    assert [r["loss"] for r in reader.read_new()] == [[1, 0.5], [2, 0.4]]
    assert reader.skipped_lines == 3  # the blank line is not counted


def test_truncated_file_is_read_again_from_the_start(run_file):
    write_records(run_file, {"loss": [1, 0.5]}, {"loss": [2, 0.4]}, {"loss": [3, 0.3]})
    reader = RecordReader(run_file)
    assert len(reader.read_new()) == 3

    os.truncate(run_file, 0)
    write_records(run_file, {"loss": [1, 0.9]})

    assert [r["loss"] for r in reader.read_new()] == [[1, 0.9]]
    assert reader.restarts == 1


def test_replaced_file_is_read_again_from_the_start(run_file, tmp_path):
    write_records(run_file, {"loss": [1, 0.5]})
    reader = RecordReader(run_file)
    assert len(reader.read_new()) == 1

    replacement = tmp_path / "new.jsonl"
    write_records(replacement, *({"loss": [b, 1.0 / b]} for b in range(1, 6)), gen=7)
    os.replace(replacement, run_file)  # a new inode, larger than what was read

    records = reader.read_new()
    assert [r["loss"][0] for r in records] == [1, 2, 3, 4, 5]
    assert {r["gen"] for r in records} == {7}
    assert reader.restarts == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_written_as_strict_json_null_and_flagged_diverged(run_file, bad):
    write_records(run_file, {"loss": [5, bad]}, {"sv": [5, [1.0, bad, 2.0]]})

    text = run_file.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loss_record, sv_record = (strict_json(line) for line in text.splitlines())
    assert loss_record["loss"] == [5, None] and loss_record["diverged"] is True
    assert sv_record["sv"] == [5, [1.0, None, 2.0]] and sv_record["diverged"] is True


def test_diverged_loss_shows_as_diverged_in_the_history(run_file):
    write_records(run_file, {"loss": [1, 0.5]}, {"loss": [2, float("nan")]})
    history = RunHistory()
    history.add(read_all(run_file))
    assert history.diverged and history.loss is None and history.batch == 2
    assert np.isnan(history.loss_series()[1][-1])


def test_finite_records_carry_no_diverged_flag(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    assert "diverged" not in read_all(run_file)[0]


def test_seed_notebook_run_file_loads_into_a_history(seed_records):
    history = RunHistory()
    history.add(read_all(SEED_RUN))

    batches, losses = history.loss_series()
    assert len(batches) == 19 and batches[0] == 1 and batches[-1] == 20000
    assert losses[0] == seed_records[0]["loss"][1]
    assert list(history.sv_batches.values()) == list(range(0, 20001, 100))
    assert history.sv_latest.tolist() == seed_records[-1]["sv"][1]
    assert history.sv_buckets.n == 201 and history.sv_buckets.n_columns == 9
    assert history.batch == 20000 and history.eta == 0.1
    assert history.last_t is None and history.gen is None  # the notebook stamped neither
    assert history.events == [] and not history.diverged


def test_the_sessions_new_lines_take_the_json_path_and_fold_as_they_do_one_at_a_time(run_file):
    """A large net's run file as the session writes it (params, heartbeat, metrics, summaries, samples) beside
    plain loss reports: folded in one chunk, as a cold load does, or a line at a time, as a live page does."""
    seed = 6
    print("seed", seed)
    rng = np.random.default_rng(seed)
    tensors = [("fc1.weight", (4, 3)), ("fc1.bias", (4,))]
    params = params_record(0, tensors, 16)
    params["params"][1]["sample"] = [0, 5, 15]  # as a net of more than FULL_STATE_MAX_PARAMS has one
    records = [{"heartbeat": [0, None], "event": [0, "started"], "pid": 1, "resumed_from": None, **params}]
    sv, previous = rng.normal(size=16), None
    for batch in range(1, 3000):
        kind = rng.integers(4)
        window = (5, float(rng.random()), batch - 2, 1.5, batch - 1, 0.75)
        if kind == 0:
            records.append(loss_report(batch, float(rng.random()), window))  # plain: the fast path
        elif kind == 1:
            records.append({**loss_report(batch, float(rng.random()), window),
                            "metrics": [batch, {"accuracy": metric_entry(float(rng.random()), window),
                                                "lr": metric_entry(0.1, None)}]})
        elif kind == 2:
            records.append(loss_report(batch, float(rng.random())))  # plain, without a window: the fast path
        else:
            sv = sv + rng.normal(size=16) * 0.01
            records.append(summary_report(batch, 0.1, tensor_summary(sv, tensors, previous), sv[[0, 5, 15]], 9, 5, 0.0))
            previous = sv
    write_records(run_file, *records)
    text = run_file.read_bytes()
    plain = [line for line in text.splitlines(keepends=True) if b'"metrics"' not in line and b'"summary"' not in line
             and b'"params"' not in line]
    assert all(row[LOSS] for row in LINE.findall(b"".join(plain))), "plain reports match the regex"

    at_once, one_by_one = RunHistory(), RunHistory()
    at_once.add_lines(text)
    for line in text.splitlines(keepends=True):
        one_by_one.add_lines(line)
    for history in (at_once, one_by_one):
        assert history.tensors == tensors and history.sample == [0, 5, 15] and history.skipped_lines == 0
    assert set(at_once.metrics) == {"accuracy", "lr"} and at_once.metrics["lr"].latest[1] == 0.1
    for name in at_once.metrics:
        for part in ("outline", "means"):
            ours, theirs = getattr(at_once.metrics[name], part), getattr(one_by_one.metrics[name], part)
            np.testing.assert_array_equal(ours.points(0), theirs.points(0))
    np.testing.assert_array_equal(at_once.layers.points(5), one_by_one.layers.points(5))  # fc1.weight's change
    assert at_once.layers.n == sum("summary" in r for r in records)
    np.testing.assert_array_equal(at_once.sv_batches.values(), one_by_one.sv_batches.values())
    np.testing.assert_array_equal(at_once.loss_series()[1], one_by_one.loss_series()[1])
