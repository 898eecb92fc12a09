"""The run file: stamped records written whole, read incrementally, torn and foreign lines survived."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import REPO, SEED_RUN
from nnobs.cli.tail import last_records, write_records_from
from nnobs.protocol.records import MAX_LINE_BYTES, RecordReader, RecordWriter, read_all
from nnobs.protocol.rundir import RunDir
from nnobs.protocol.schema import LINE, LOSS, loss_report, metric_entry, params_record, summary_report, tensor_summary
from nnobs.reading import foldcache
from nnobs.reading.arrayfile import ALIGN, MAGIC, ArrayFile
from nnobs.reading.bulk import parse_lines
from nnobs.reading.history import RunHistory
from nnobs.reading.watcher import RunWatcher
from nnobs.views.overview import read_row

MB = 1 << 20


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


# -- bounded for whatever a teammate writes into a shared runs root ------------------------------------------------


def valid_json_line(length: int) -> bytes:
    """A line of valid JSON, length bytes with its newline: only its length can make it no record."""
    return b'{"x":"' + b"a" * (length - 9) + b'"}\n'


def peak_memory(read: Callable[[], Any]) -> tuple[Any, int]:
    """What read returns, and the most memory Python held at once while it ran."""
    tracemalloc.start()
    try:
        return read(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def losses(records: list[dict]) -> list[Any]:
    return [r.get("loss") for r in records]


@pytest.mark.parametrize("length, is_record", [(MAX_LINE_BYTES, True), (MAX_LINE_BYTES + 1, False)], ids=["at", "past"])
def test_a_line_up_to_the_bound_is_read_and_one_past_it_is_skipped_and_counted(run_file, length, is_record):
    write_records(run_file, {"loss": [1, 0.5]})
    append_raw(run_file, valid_json_line(length))
    write_records(run_file, {"loss": [2, 0.4]})

    reader = RecordReader(run_file)

    assert losses(reader.read_new()) == [[1, 0.5], *([None] if is_record else []), [2, 0.4]]
    assert reader.skipped_lines == (0 if is_record else 1)


def test_a_100_mb_line_is_skipped_and_counted_without_ever_being_held_whole(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    append_raw(run_file, valid_json_line(100 * MB))
    write_records(run_file, {"loss": [2, 0.4]})
    reader = RecordReader(run_file)

    records, peak = peak_memory(reader.read_new)

    assert losses(records) == [[1, 0.5], [2, 0.4]]
    assert reader.skipped_lines == 1
    assert peak < MAX_LINE_BYTES + 4 * MB, f"{peak:,} bytes held at once to read past a 100 MB line"


def test_a_long_line_arriving_in_pieces_is_stepped_over_across_reads_each_byte_read_about_once(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    reader = RecordReader(run_file)
    assert losses(reader.read_new()) == [[1, 0.5]]
    line, piece = valid_json_line(3 * MAX_LINE_BYTES), MAX_LINE_BYTES // 2

    for start in range(0, len(line) - 1, piece):  # all of it but its newline: the writer is not done
        append_raw(run_file, line[start : min(start + piece, len(line) - 1)])
        before = reader.bytes_read
        records, peak = peak_memory(reader.read_new)
        assert records == []
        assert reader.bytes_read - before <= MAX_LINE_BYTES + piece, "each read goes on from where the last stopped"
        assert peak < MAX_LINE_BYTES + 4 * MB
    append_raw(run_file, b"\n")
    write_records(run_file, {"loss": [2, 0.4]})

    assert losses(reader.read_new()) == [[2, 0.4]]
    assert reader.skipped_lines == 1


def test_the_page_counts_a_long_line_arriving_across_refreshes_as_one_skipped_line(run_file):
    write_records(run_file, {"loss": [1, 0.5]})
    watcher = RunWatcher(run_file, use_cache=False)
    line, piece = valid_json_line(3 * MAX_LINE_BYTES), MAX_LINE_BYTES // 2
    for start in range(0, len(line), piece):
        append_raw(run_file, line[start : start + piece])
        assert watcher.refresh().loss_series()[0].tolist() == [1]
    write_records(run_file, {"loss": [2, 0.4]})

    history = watcher.refresh()

    assert history.loss_series()[0].tolist() == [1, 2]
    assert history.skipped_lines == 1
    assert history.n_records == 2


@pytest.fixture(scope="module")
def run_with_huge_lines(tmp_path_factory) -> RunDir:
    """Records 1 to 5, a complete line of 100 MB, records 6 to 8, and 50 MB of a line still being written."""
    run = RunDir(tmp_path_factory.mktemp("runs") / "huge")
    run.path.mkdir()
    write_records(run.run_file, *({"loss": [batch, 1 / batch]} for batch in range(1, 6)))
    append_raw(run.run_file, valid_json_line(100 * MB))
    write_records(run.run_file, *({"loss": [batch, 1 / batch]} for batch in range(6, 9)))
    append_raw(run.run_file, b'{"x":"' + b"a" * (50 * MB))
    return run


def batches_of(lines: list[bytes]) -> list[int]:
    return [json.loads(line)["loss"][0] for line in lines]


def test_tail_reads_past_huge_lines_in_bounded_memory_keeping_the_records_around_them(run_with_huge_lines):
    run_file = run_with_huge_lines.run_file

    (found, offset), peak = peak_memory(lambda: last_records(run_file, 5))

    assert batches_of(found) == [4, 5, 6, 7, 8]
    assert offset == run_file.read_bytes().rfind(b"\n") + 1
    assert peak < MAX_LINE_BYTES + 4 * MB, f"{peak:,} bytes held at once"
    out = io.BytesIO()
    assert write_records_from(run_file, 1, out) == offset
    assert batches_of(out.getvalue().splitlines()) == list(range(1, 9))


def test_nnobs_tail_of_a_file_with_a_huge_last_line_finishes_promptly(run_with_huge_lines):
    root = run_with_huge_lines.path.parent
    for lines, shown in (("5", [4, 5, 6, 7, 8]), ("+4", [4, 5, 6, 7, 8])):
        done = subprocess.run([sys.executable, "-m", "nnobs.cli", "--runs", str(root), "tail", "huge", "-n", lines],
                              capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
        assert batches_of(done.stdout.splitlines()) == shown


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def deeply_nested_run(tmp_path: Path) -> RunDir:
    """Two records around lines nested 100,000 deep, each shaped to reach a reader's own parser: a plain one, a
    loss report (the overview's search for the last loss), a start (the history's search for new lines of
    training) and a state report in the worker's shape but for its vector (bulk parsing's regex)."""
    run = RunDir(tmp_path / "runs" / "deep")
    run.path.mkdir(parents=True)
    write_records(run.run_file, {"loss": [1, 0.5]})
    append_raw(run.run_file, b"\n".join([
        b'{"x":' + DEEP + b"}",
        b'{"loss":[1,' + DEEP + b'],"t":1.0,"gen":1}',
        b'{"event":[0,"started"],"resumed_from":' + DEEP + b"}",
        b'{"eta":[1,0.1],"sv":[1,' + DEEP + b'],"target":[1,5],"report_every":[1,5],"t":1.0,"gen":1}',
    ]) + b"\n")
    write_records(run.run_file, {"loss": [2, 0.25]})
    return run


READERS_OF_RECORDS = {
    "read_new": lambda run: [r["loss"][0] for r in RecordReader(run.run_file).read_new()],
    "bulk": lambda run: parse_lines(RecordReader(run.run_file).read_new_lines()).loss_batch.tolist(),
    "the page": lambda run: RunWatcher(run.run_file, use_cache=False).refresh().loss_series()[0].tolist(),
    "tail": lambda run: batches_of(last_records(run.run_file, 10)[0]),
    "tail +1": lambda run: batches_of(_written_from(run.run_file).splitlines()),
}


def _written_from(run_file: Path) -> bytes:
    out = io.BytesIO()
    write_records_from(run_file, 1, out)
    return out.getvalue()


@pytest.mark.parametrize("reader", list(READERS_OF_RECORDS))
def test_json_nested_past_the_stack_is_a_skipped_line_for_every_reader(deeply_nested_run, reader):
    assert READERS_OF_RECORDS[reader](deeply_nested_run) == [1, 2]


def test_json_nested_past_the_stack_is_a_skipped_line_for_the_overview_and_the_history(deeply_nested_run):
    row = read_row(deeply_nested_run)
    assert (row.batch, row.loss, row.error) == (2, 0.25, ""), "the loss is the latest record's"
    history = RunHistory()
    history.add_lines(deeply_nested_run.run_file.read_bytes())
    assert history.skipped_lines == 4 and history.loss_series()[0].tolist() == [1, 2]


def test_a_planted_fold_cache_nested_past_the_stack_is_ignored(deeply_nested_run):
    header = b'{"meta":' + DEEP + b',"arrays":{}}'
    foldcache.cache_path(deeply_nested_run.run_file).write_bytes(MAGIC + struct.pack("<Q", len(header)) + header)
    assert foldcache.load(deeply_nested_run.run_file) is None
    assert READERS_OF_RECORDS["the page"](deeply_nested_run) == [1, 2]


def test_a_planted_array_file_whose_arrays_add_up_to_more_than_it_holds_is_refused_before_any_is_read(tmp_path):
    # A megabyte of bytes, named by a thousand arrays of a megabyte each: reading them all would take a gigabyte.
    header = json.dumps({"meta": {}, "arrays": {f"a{i}": ["<f8", [MB // 8], 0] for i in range(1000)}}).encode()
    start = len(MAGIC) + 8 + len(header)
    path = tmp_path / "run.fold"
    path.write_bytes(MAGIC + struct.pack("<Q", len(header)) + header + bytes(-start % ALIGN) + bytes(MB))

    with open(path, "rb") as f, pytest.raises(ValueError, match="malformed arrays"):
        ArrayFile(f)
