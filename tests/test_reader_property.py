"""Whatever bytes a run file holds, however they arrive, its readers never raise and read back every record.

Hypothesis writes arbitrary bytes, torn lines, lines past the readers' bound and JSON nested past Python's stack
among valid records (any JSON object, and the worker's own loss and state reports), appends them to a real file
in arbitrary pieces and reads between the appends: the way RecordReader.read_new reads, and the way the page
does (read_new_lines, then bulk.parse_lines). On a failure, Hypothesis prints the falsifying example and a
`@reproduce_failure` line that replays it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnobs.protocol.numbers import number
from nnobs.protocol.records import RecordReader, encode_record, pair
from nnobs.protocol.schema import LINE, LOSS, STATE, loss_report, state_report
from nnobs.reading.bulk import parse_lines

# The readers' bound on a line, newline included, for this test: small enough to write lines past it hundreds
# of times a run, large enough for JSON nested deeper than Python's stack (1,000 frames) to fit within it.
LINE_BOUND = 4096

TOPICS = ["loss", "window", "sv", "sample", "eta", "target", "report_every", "pace", "metrics", "summary", "update",
          "dead", "params", "event", "heartbeat", "ack", "reject", "t", "gen", "diverged", "resumed_from"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=16,
)
any_object = st.dictionaries(st.sampled_from(TOPICS) | st.text(max_size=6), json_values, max_size=5)
batches = st.integers(0, 10**6) | st.integers(2**53 - 2, 2**64)  # past what a float, then an int64, holds
finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
stamp = st.fixed_dictionaries({"t": st.floats(0, 1e10).map(lambda t: round(t, 3)), "gen": st.integers(0, 99)})
worker_loss = st.builds(
    lambda batch, loss, window, stamped: {**loss_report(batch, loss, window), **stamped},
    batches, finite, st.none() | st.tuples(st.integers(2, 9), finite, batches, finite, batches, finite), stamp,
)
worker_state = st.builds(
    lambda batch, eta, sv, settings_, stamped: {**state_report(batch, eta, sv, *settings_), **stamped},
    batches, finite, st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=6),
    st.tuples(st.integers(0, 10**12), st.integers(0, 10**6), st.floats(0, 100)), stamp,
)


@st.composite
def object_line(draw: st.DrawFn) -> bytes:
    """A JSON object on a line of its own, as the worker writes one or as anyone might."""
    kind = draw(st.sampled_from(["worker's loss", "worker's state", "any"]))
    if kind != "any":
        return encode_record(draw(worker_loss if kind == "worker's loss" else worker_state))
    compact = draw(st.booleans())
    text = json.dumps(draw(any_object), ensure_ascii=draw(st.booleans()), separators=(",", ":") if compact else None)
    return text.encode() + b"\n"


@st.composite
def torn_line(draw: st.DrawFn) -> bytes:
    """The start of a record, as a writer killed mid-line leaves it: the next piece goes on from there."""
    line = draw(object_line())
    return line[: draw(st.integers(0, len(line) - 1))]


@st.composite
def long_line(draw: st.DrawFn) -> bytes:
    """A valid JSON line about as long as the bound, or far longer: only its length decides."""
    length = draw(st.integers(LINE_BOUND - 4, LINE_BOUND + 4) | st.integers(LINE_BOUND, 20 * LINE_BOUND))
    return b'{"x":"' + b"a" * (length - 9) + b'"}\n'


@st.composite
def nested_line(draw: st.DrawFn) -> bytes:
    """A JSON object nested a little (a record), or deeper than Python's stack (no record), within the bound."""
    depth = draw(st.integers(1, 40) | st.integers(1200, (LINE_BOUND - 8) // 2))
    return b'{"x":' + b"[" * depth + b"]" * depth + b"}\n"


pieces = st.lists(
    st.one_of(
        object_line(),
        object_line(),
        torn_line(),
        long_line(),
        nested_line(),
        st.binary(max_size=40),
        st.sampled_from([b"\r", b" ", b"\x00", b"\xff", b"\n"]),  # what may run into the next line, or end one
    ),
    max_size=30,
)


def as_record(line: bytes) -> dict | None:
    """What a complete line holds for every reader: a JSON object within the bound, else nothing."""
    if len(line) + 1 > LINE_BOUND:
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def expected_of(stream: bytes) -> list[tuple[bytes, dict]]:
    """Each complete line of the stream that holds a record, with that record, in order."""
    found = []
    for line in stream.split(b"\n")[:-1]:  # after the last newline: a line still being written
        if (record := as_record(line)) is not None:
            found.append((line, record))
    return found


def same(records: list[Any], others: list[Any]) -> bool:
    """Equal as JSON values, NaN included (json.loads reads NaN, which equals nothing)."""
    return repr(records) == repr(others)


def is_subsequence(part: list[dict], whole: list[dict]) -> bool:
    rest = iter(map(repr, whole))
    return all(any(r == w for w in rest) for r in map(repr, part))


def losses_of(records: list[dict]) -> list[tuple[int, float]]:
    """(batch, loss) of each record holding a loss report: a batch and a number, or null where it diverged."""
    found = []
    for record in records:
        loss = pair(record.get("loss"))
        if loss and (loss[1] is None or number(loss[1]) is not None):
            diverged = loss[1] is None or record.get("diverged") is True
            found.append((loss[0], np.nan if diverged else float(loss[1])))
    return found


class PageReading:
    """What the page gathers from a run file: complete lines read in pieces of max_bytes, parsed in bulk."""

    def __init__(self, path: Path, max_bytes: int | None):
        self.reader = RecordReader(path, max_line_bytes=LINE_BOUND)
        self.max_bytes = max_bytes
        self.records: list[dict] = []
        self.loss_batch: list[np.ndarray] = []
        self.loss_value: list[np.ndarray] = []
        self.skipped = 0

    def read(self) -> None:
        while chunk := self.reader.read_new_lines(self.max_bytes):
            parsed = parse_lines(chunk)
            self.records += parsed.records
            self.loss_batch.append(parsed.loss_batch)
            self.loss_value.append(parsed.loss_value)
            self.skipped += parsed.skipped

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([np.empty(0, np.int64), *self.loss_batch]), np.concatenate([[], *self.loss_value])


def in_bulk_form(line: bytes) -> bool:
    """A line of the worker's two common shapes, which bulk parsing reads by regex into arrays, not records."""
    found = LINE.match(line)
    return found is not None and bool(found[LOSS + 1] or found[STATE + 1])


@settings(max_examples=200, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(pieces=pieces, data=st.data())
def test_any_bytes_appended_in_any_pieces_read_back_every_record_and_never_raise(pieces, data):
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    max_bytes = data.draw(st.sampled_from([None, 1, 64, LINE_BOUND, 3 * LINE_BOUND]), label="max_bytes")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        path.touch()
        reader, page = RecordReader(path, max_line_bytes=LINE_BOUND), PageReading(path, max_bytes)
        records: list[dict] = []
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            with open(path, "ab") as f:
                f.write(stream[start:end])
            records += reader.read_new()
            page.read()

    expected = expected_of(stream)
    complete = stream.split(b"\n")[:-1]
    assert same(records, [record for _, record in expected]), "read_new: every record, in order"
    assert reader.skipped_lines == sum(1 for line in complete if line.strip() and as_record(line) is None)
    assert reader.offset == stream.rfind(b"\n") + 1

    not_in_bulk_form = [record for line, record in expected if not in_bulk_form(line)]
    assert is_subsequence(page.records, [record for _, record in expected]), "the page: records, in order"
    assert is_subsequence(not_in_bulk_form, page.records), "the page: every record bulk parsing does not take"
    want = losses_of([record for _, record in expected])
    got_batch, got_value = page.losses()
    assert got_batch.tolist() == [batch for batch, _ in want], "the page: every loss report's batch, in order"
    np.testing.assert_array_equal(got_value, np.array([value for _, value in want], dtype=float))
    assert page.skipped == sum(1 for line in complete if line and as_record(line) is None)
