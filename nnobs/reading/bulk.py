"""Many run-file lines parsed at once: the worker's two common shapes by regex into numpy, the rest as JSON.

A long run is a million lines, almost all of them loss reports and state reports in exactly the
form the worker writes. Parsing those one `json.loads` at a time costs seconds; matching them in
one regex pass and converting their numbers in one call costs a fraction of that. Any other line
(an event, an answer, a diverged value, a file from the notebook, a script's metrics, a large
net's summary and sample) goes through `json.loads`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from itertools import compress, repeat
from operator import itemgetter
from typing import Any

import numpy as np

from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int, number
from nnobs.protocol.records import pair
from nnobs.protocol.schema import (
    ANY_LINE,
    LINE,
    LOSS,
    LOSS_T,
    OTHER,
    PACE,
    REPORT_EVERY,
    SETTINGS,
    STATE,
    SUMMARY,
    SUMMARY_BEFORE_BANDS,
    SV,
    TARGET,
    WINDOW,
)


@dataclass
class ParsedLines:
    """What a chunk of complete lines holds, in file order."""

    loss_batch: np.ndarray  # (n,) int64
    loss_value: np.ndarray  # (n,) float64, NaN where diverged
    loss_window: np.ndarray  # (n, 6): batches, min, batch of min, max, batch of max, mean since the report before
    loss_t: np.ndarray  # (n,) float64: the wall time of each loss report, NaN where the line has none
    sv_batch: np.ndarray  # (k,) int64
    sv_rows: np.ndarray  # (k, width): the state vectors as wide as the newest one (others are dropped)
    settings: dict[str, Any]  # eta, target, report_every: the newest value of each reported
    records: list[dict]  # lines of other shapes, parsed as JSON: events, answers, the notebook's lines
    skipped: int  # lines that were not a JSON object
    last_line: bytes  # the newest line: it carries the latest time and generation
    # What only JSON-parsed lines carry (schema.py describes them):
    metrics: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # name -> batches (m,), latest (m,), windows (m, 6)
    summary_batch: np.ndarray  # (j,) int64
    summary_rows: np.ndarray  # (j, tensors, len(SUMMARY)): per tensor its SUMMARY, NaN where null (or not written)
    updates: tuple[np.ndarray, np.ndarray]  # batches (u,), per tensor the update-to-weight ratio (u, tensors)
    dead: tuple[np.ndarray, np.ndarray]  # batches (d,), per relu layer its dead units (d, layers)
    params: tuple[list[tuple[str, tuple[int, ...]]], list[int] | None] | None  # the newest (tensors, sample)


def parse_lines(chunk: bytes, state_vectors: bool = True) -> ParsedLines:
    """Parse complete lines (chunk ends with a newline, or is empty); state_vectors=False leaves them out (empty)."""
    try:
        return _parse(chunk, LINE, state_vectors)
    except ValueError:  # a number the regex let through did not convert: trust nothing but JSON
        return _parse(chunk, ANY_LINE, state_vectors)


def _parse(chunk: bytes, line_shapes: re.Pattern, state_vectors: bool) -> ParsedLines:
    rows = line_shapes.findall(chunk)  # one tuple of schema.GROUPS texts per non-empty line, in order
    # Column by column (a text per line, empty where the line has no such group): loops in C, not per line here.
    columns = {group: list(map(itemgetter(group), rows)) for group in (LOSS, WINDOW, LOSS_T, STATE, OTHER)}
    present = {
        group: np.fromiter(map(bool, columns[group]), dtype=bool, count=len(rows)) for group in (LOSS, STATE, OTHER)
    }
    loss_at, state_at = np.flatnonzero(present[LOSS]), np.flatnonzero(present[STATE]).tolist()
    records, skipped = [], 0
    json_loss: list[tuple[int, int, float, list | None, float]] = []  # (line, batch, value, window, time)
    json_sv: list[tuple[int, int, list]] = []  # (line, batch, values)
    settings: dict[str, tuple[int, Any]] = {}  # topic -> (line, value)
    json_only = _Found()  # what only JSON lines carry, in line order
    for at in np.flatnonzero(present[OTHER]).tolist():
        try:
            record = parse_json(rows[at][OTHER])
        except ValueError:  # garbage, a line torn by a crash, or not UTF-8
            record = None
        if not isinstance(record, dict):
            skipped += 1
            continue
        records.append(record)
        _take_series(record, at, json_loss, json_sv, settings)
        json_only.take(record)
    if state_at:  # only the newest state report's settings can matter
        newest = rows[state_at[-1]]
        values = (
            float(newest[STATE].split(b",")[1]),
            int(newest[TARGET]),
            int(newest[REPORT_EVERY]),
            float(newest[PACE]) if newest[PACE] else None,
        )
        for topic, value in zip(SETTINGS, values):
            if value is not None and settings.get(topic, (-1,))[0] < state_at[-1]:
                settings[topic] = (state_at[-1], value)
    is_loss = present[LOSS].tolist()
    loss = _numbers(list(compress(columns[LOSS], is_loss)), 2)  # (n, 2): batch, loss
    loss_batch, loss_value = _batches(loss[:, 0]), loss[:, 1]
    window_texts = list(compress(columns[WINDOW], is_loss))  # one per loss report, empty without a window
    windowed = np.fromiter(map(bool, window_texts), dtype=bool, count=len(window_texts))
    window = _single_batch_windows(loss_batch, loss_value)
    window_texts = list(filter(None, window_texts))
    if set(map(bytes.count, window_texts, repeat(b","))) - {5}:
        raise ValueError("a window that is not six numbers")
    window[windowed] = _numbers(window_texts, 6)
    loss_t = _numbers(list(compress(columns[LOSS_T], is_loss)), 1)[:, 0]
    slow_batch = np.array([b for _, b, _, _, _ in json_loss], np.int64)
    slow_value = np.array([v for _, _, v, _, _ in json_loss], float)
    slow_t = np.array([t for _, _, _, _, t in json_loss], float)
    slow_window = _single_batch_windows(slow_batch, slow_value)
    for k, (_, _, _, found, _) in enumerate(json_loss):
        if found is not None:
            slow_window[k] = found
    loss_batch, loss_value, loss_window, loss_t = _in_line_order(
        loss_at,
        (loss_batch, loss_value, window, loss_t),
        [at for at, _, _, _, _ in json_loss],
        (slow_batch, slow_value, slow_window, slow_t),
    )
    sv_batch, sv_rows = (
        _state_vectors(rows, state_at, json_sv) if state_vectors else (np.empty(0, np.int64), np.empty((0, 0)))
    )
    summary_batch, summary_rows = json_only.summary_arrays()
    return ParsedLines(
        loss_batch=loss_batch,
        loss_value=loss_value,
        loss_window=loss_window,
        loss_t=loss_t,
        sv_batch=sv_batch,
        sv_rows=sv_rows,
        settings={topic: value for topic, (_, value) in settings.items()},
        records=records,
        skipped=skipped,
        last_line=_last_line(chunk),
        metrics=json_only.metric_arrays(),
        summary_batch=summary_batch,
        summary_rows=summary_rows,
        updates=json_only.updates.arrays(),
        dead=json_only.dead.arrays(),
        params=json_only.params,
    )


def _last_line(chunk: bytes) -> bytes:
    """The chunk's last non-empty line, found from the end: no copy of the rest."""
    end = len(chunk.rstrip(b"\n")) if chunk[-2:] == b"\n\n" else len(chunk) - chunk.endswith(b"\n")
    return chunk[chunk.rfind(b"\n", 0, end) + 1 : end]


def _single_batch_windows(batches: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n, 6) windows of reports that cover their own batch only: one batch, its loss as min, max and mean."""
    b = batches.astype(float)
    return np.column_stack((np.ones(len(b)), values, b, values, b, values))


def _window(value: Any) -> list[float] | None:
    """A JSON-parsed window [n, min, min_at, max, max_at, mean], or None when it is not one."""
    if not isinstance(value, list) or len(value) != 6:
        return None
    if not all(v is None or number(v) is not None for v in value):
        return None
    if any(number(value[i]) is None for i in (0, 2, 4)) or value[0] < 1:  # counts and batches are never null
        return None
    return [np.nan if v is None else float(v) for v in value]  # null: a diverged extreme or mean


def _take_series(record: dict, at: int, json_loss: list, json_sv: list, settings: dict) -> None:
    """Collect the loss (and its window), state vector and settings a JSON-parsed record carries."""
    loss = pair(record.get("loss"))
    if loss and (loss[1] is None or number(loss[1]) is not None):  # a number, or null where it diverged
        value = np.nan if loss[1] is None or record.get("diverged") is True else float(loss[1])
        window = pair(record.get("window"))
        t = number(record.get("t"))
        json_loss.append(
            (
                at,
                loss[0],
                value,
                _window(window[1]) if window and window[0] == loss[0] else None,
                np.nan if t is None else float(t),
            )
        )
    for topic in ("sv", "sample"):  # a large net's sample stands for its state vector
        sv = pair(record.get(topic))
        if sv and _numbers_or_nulls(sv[1]):
            json_sv.append((at, sv[0], sv[1]))
    for topic in SETTINGS:
        setting = pair(record.get(topic))
        if setting and number(setting[1]) is not None:
            settings[topic] = (at, setting[1])


def _numbers_or_nulls(values: Any) -> bool:
    return isinstance(values, list) and all(v is None or number(v) is not None for v in values)


class _Found:
    """Metrics, tensor summaries and the params record, gathered from JSON-parsed records in line order."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float, list[float] | None]]] = {}  # name -> (batch, latest, window)
        self.summaries: list[tuple[int, list]] = []  # (batch, rows)
        self.params: tuple[list[tuple[str, tuple[int, ...]]], list[int] | None] | None = None
        self.updates, self.dead = _Rows(), _Rows()

    def take(self, record: dict) -> None:
        metrics = pair(record.get("metrics"))
        if metrics and isinstance(metrics[1], dict):
            for name, entry in metrics[1].items():
                if (taken := _metric_entry(entry)) is not None:
                    self.metrics.setdefault(str(name), []).append((metrics[0], *taken))
        summary = pair(record.get("summary"))
        if (
            summary
            and isinstance(summary[1], list)
            and summary[1]
            and all(
                isinstance(row, list) and len(row) in (SUMMARY_BEFORE_BANDS, len(SUMMARY)) and _numbers_or_nulls(row)
                for row in summary[1]
            )
        ):
            self.summaries.append(summary)
        for topic, rows in (("update", self.updates), ("dead", self.dead)):
            found = pair(record.get(topic))
            if found and found[1] and _numbers_or_nulls(found[1]):
                rows.add(found[0], found[1])
        params = pair(record.get("params"))
        if params and (described := _params(params[1])) is not None:
            self.params = described

    def metric_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        arrays = {}
        for name, reports in self.metrics.items():
            batches = np.array([batch for batch, _, _ in reports], np.int64)
            latest = np.array([value for _, value, _ in reports], float)
            windows = _single_batch_windows(batches, latest)
            for k, (_, _, window) in enumerate(reports):
                if window is not None:
                    windows[k] = window
            arrays[name] = (batches, latest, windows)
        return arrays

    def summary_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Batches (j,) and rows (j, tensors, 6) of the summaries with as many tensors as the newest."""
        if not self.summaries:
            return np.empty(0, np.int64), np.empty((0, 0, len(SUMMARY)))
        width = len(self.summaries[-1][1])
        kept = [(batch, rows) for batch, rows in self.summaries if len(rows) == width]
        rows = np.full((len(kept), width, len(SUMMARY)), np.nan)  # older summaries, without the bands, leave them NaN
        for k, (_, tensors) in enumerate(kept):
            for t, row in enumerate(tensors):
                rows[k, t, : len(row)] = [np.nan if v is None else v for v in row]
        return np.array([batch for batch, _ in kept], np.int64), rows


class _Rows:
    """Reports of one list of numbers per batch, gathered in line order; arrays of those as wide as the newest."""

    def __init__(self) -> None:
        self.found: list[tuple[int, list]] = []

    def add(self, batch: int, values: list) -> None:
        self.found.append((batch, values))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.found:
            return np.empty(0, np.int64), np.empty((0, 0))
        width = len(self.found[-1][1])
        kept = [(batch, values) for batch, values in self.found if len(values) == width]
        rows = np.array([[np.nan if v is None else v for v in values] for _, values in kept], float)
        return np.array([batch for batch, _ in kept], np.int64), rows


def _metric_entry(entry: Any) -> tuple[float, list[float] | None] | None:
    """A metric's [latest] or [latest, n, min, min_at, max, max_at, mean] as (latest, window), NaN for null."""
    if (
        not isinstance(entry, list)
        or len(entry) not in (1, 7)
        or not (entry[0] is None or number(entry[0]) is not None)
    ):
        return None
    latest = np.nan if entry[0] is None else float(entry[0])
    return latest, _window(entry[1:]) if len(entry) == 7 else None


def _params(value: Any) -> tuple[list[tuple[str, tuple[int, ...]]], list[int] | None] | None:
    """The params record's (tensors, sample), or None when it is not of that shape."""
    if not isinstance(value, dict) or not isinstance(value.get("tensors"), list):
        return None
    tensors = []
    for tensor in value["tensors"]:
        if not (
            isinstance(tensor, list)
            and len(tensor) == 2
            and isinstance(tensor[0], str)
            and isinstance(tensor[1], list)
            and all(is_int(n) and 0 <= n < 2**40 for n in tensor[1])
        ):
            return None
        tensors.append((tensor[0], tuple(tensor[1])))
    sample = value.get("sample")
    if sample is not None and not (isinstance(sample, list) and all(is_int(i) and 0 <= i < 2**62 for i in sample)):
        return None
    return tensors, sample


def _in_line_order(fast_at: list[int] | np.ndarray, fast: tuple, slow_at: list[int], slow: tuple) -> tuple:
    """Merge parallel arrays found by regex with the few found by JSON, each with its lines, into line order."""
    if not slow_at:
        return fast
    order = np.argsort(np.concatenate((fast_at, slow_at)), kind="stable")
    return tuple(np.concatenate((f, s))[order] for f, s in zip(fast, slow))


def _state_vectors(rows: list[tuple], state_at: list[int], json_sv: list) -> tuple[np.ndarray, np.ndarray]:
    """Batches (k,) and state vectors (k, width) of the reports as wide as the newest, in line order."""
    if not state_at and not json_sv:
        return np.empty(0, np.int64), np.empty((0, 0))
    newest_is_json = json_sv and (not state_at or json_sv[-1][0] > state_at[-1])
    sv_texts = list(map(itemgetter(SV), map(rows.__getitem__, state_at)))
    commas = np.fromiter(map(bytes.count, sv_texts, repeat(b",")), dtype=np.int64, count=len(sv_texts))
    width = len(json_sv[-1][2]) if newest_is_json else int(commas[-1]) + 1
    as_wide = (commas == width - 1).tolist()
    fast_at = list(compress(state_at, as_wide))
    state_texts = list(map(itemgetter(STATE), map(rows.__getitem__, fast_at)))
    fast_batch = _batches(_numbers(state_texts, 2)[:, 0])
    fast_rows = _numbers(list(compress(sv_texts, as_wide)), width)  # (len(fast_at), width)
    slow = [(at, batch, values) for at, batch, values in json_sv if len(values) == width]
    slow_rows = np.array([[np.nan if v is None else v for v in values] for _, _, values in slow], dtype=float)
    slow_batch = np.array([batch for _, batch, _ in slow], np.int64)
    return _in_line_order(fast_at, (fast_batch, fast_rows), [at for at, _, _ in slow], (slow_batch, slow_rows))


def _batches(parsed: np.ndarray) -> np.ndarray:
    """Batches the regex found, parsed as floats, as int64; ValueError for one a float does not hold exactly.

    No run gets near 2**53 batches: such a number was planted, and JSON, which reads it whole, says what it is.
    """
    if not (parsed < 2**53).all():
        raise ValueError("a batch past 2**53")
    return parsed.astype(np.int64)


def _numbers(texts: list[bytes], n_columns: int) -> np.ndarray:
    """Comma-separated numbers, n_columns to a text, as a (rows, n_columns) float array; one call for them all."""
    if not texts:
        return np.empty((0, n_columns))
    text = b"\n".join(texts)
    if len(text) < 100_000:  # a refresh's handful: not worth importing pandas for
        values = np.array(text.replace(b"\n", b",").split(b",")).astype(float)
        if len(values) != len(texts) * n_columns:
            raise ValueError(f"a row that is not {n_columns} numbers")
        return values.reshape(-1, n_columns)
    import pandas as pd  # its C CSV reader turns text into floats several times faster than numpy

    # A row per text, as a table of n_columns (2.5 times faster than one number per line): a text with more
    # fields is refused by the reader, one with fewer or with an empty field shows as NaN.
    table = io.BytesIO(text)
    values = pd.read_csv(
        table, header=None, names=range(n_columns), dtype=float, engine="c", skip_blank_lines=False
    ).to_numpy()
    if len(values) != len(texts) or np.isnan(values).any():
        raise ValueError("a field that is not a number")
    return values
