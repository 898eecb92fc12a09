"""Many run-file lines parsed at once: the worker's two common shapes by regex into numpy, the rest as JSON.

A long run is a million lines, almost all of them loss reports and state reports in exactly the
form the worker writes. Parsing those one `json.loads` at a time costs seconds; matching them in
one regex pass and converting their numbers in one call costs a fraction of that. Any other line
(an event, an answer, a diverged value, a file from the notebook) goes through `json.loads`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_NUM = rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"  # a JSON number
# A line is either the worker's loss report (group 1: "batch,loss") or anything else (group 2).
_LINE = re.compile(
    rb'^(?:\{"loss":\[([0-9]+,' + _NUM + rb')\],"t":' + _NUM + rb',"gen":[0-9]+\}|(.+))$', re.MULTILINE
)
# The worker's state report: eta, the state vector, target and report interval at one batch.
_STATE = re.compile(
    rb'\{"eta":\[([0-9]+),(' + _NUM + rb')\],"sv":\[[0-9]+,\[(' + _NUM + rb"(?:," + _NUM + rb')*)\]\],'
    rb'"target":\[[0-9]+,([0-9]+)\],"report_every":\[[0-9]+,([0-9]+)\],"t":' + _NUM + rb',"gen":[0-9]+\}'
)
SETTINGS = ("eta", "target", "report_every")


@dataclass
class ParsedLines:
    """What a chunk of complete lines holds, each value with `at`, the index of its line in the chunk."""

    loss_at: np.ndarray  # (n,) line index of each loss report, ascending
    loss_batch: np.ndarray  # (n,) int64
    loss_value: np.ndarray  # (n,) float64, NaN where diverged
    sv_at: list[int] = field(default_factory=list)
    sv_batch: list[int] = field(default_factory=list)
    sv_rows: list[np.ndarray] = field(default_factory=list)  # one state vector per report
    settings: dict[str, tuple[int, Any]] = field(default_factory=dict)  # topic -> (at, value) of its last report
    records: list[tuple[int, dict]] = field(default_factory=list)  # lines of other shapes, parsed as JSON
    skipped: int = 0  # lines that were not a JSON object
    last_line: bytes = b""  # the newest line: it carries the latest time and generation


def parse_lines(chunk: bytes) -> ParsedLines:
    """Parse complete lines (chunk ends with a newline, or is empty)."""
    rows = _LINE.findall(chunk)  # one (loss, other) pair per non-empty line, in order
    fast_at = [i for i, (loss, _) in enumerate(rows) if loss]
    pairs = _numbers([rows[i][0] for i in fast_at], 2)  # (n_fast, 2): batch, loss
    slow_at, slow_batch, slow_value = [], [], []
    parsed = ParsedLines(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
    for at, (loss, line) in enumerate(rows):
        if loss:
            continue
        state = _STATE.fullmatch(line)
        if state:
            batch = int(state[1])
            parsed.sv_at.append(at)
            parsed.sv_batch.append(batch)
            parsed.sv_rows.append(state[3])
            parsed.settings.update(
                eta=(at, float(state[2])), target=(at, int(state[4])), report_every=(at, int(state[5]))
            )
            continue
        try:
            record = json.loads(line)
        except ValueError:  # garbage, a line torn by a crash, or not UTF-8
            parsed.skipped += 1
            continue
        if not isinstance(record, dict):
            parsed.skipped += 1
            continue
        _take_series(record, at, parsed, slow_at, slow_batch, slow_value)
        parsed.records.append((at, record))
    parsed.last_line = chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    parsed.sv_rows = _state_vectors(parsed.sv_rows)
    at = np.concatenate((np.asarray(fast_at, np.int64), np.asarray(slow_at, np.int64)))
    order = np.argsort(at, kind="stable")
    parsed.loss_at = at[order]
    parsed.loss_batch = np.concatenate((pairs[:, 0].astype(np.int64), np.asarray(slow_batch, np.int64)))[order]
    parsed.loss_value = np.concatenate((pairs[:, 1], np.asarray(slow_value, float)))[order]
    return parsed


def _take_series(record: dict, at: int, parsed: ParsedLines, slow_at: list, slow_batch: list, slow_value: list):
    """Collect the loss, state vector and settings a JSON-parsed record carries."""
    loss = pair(record.get("loss"))
    if loss:
        value = number(loss[1])
        slow_at.append(at)
        slow_batch.append(loss[0])
        slow_value.append(np.nan if value is None or record.get("diverged") is True else value)
    sv = pair(record.get("sv"))
    if sv and isinstance(sv[1], list):
        parsed.sv_at.append(at)
        parsed.sv_batch.append(sv[0])
        parsed.sv_rows.append(sv[1])
    for topic in SETTINGS:
        setting = pair(record.get(topic))
        if setting and number(setting[1]) is not None:
            parsed.settings[topic] = (at, setting[1])


def _state_vectors(rows: list) -> list[np.ndarray]:
    """Each report's state vector as floats (NaN for null); regex matches come as comma-separated bytes."""
    texts = [row for row in rows if isinstance(row, bytes)]
    widths = [text.count(b",") + 1 for text in texts]
    flat = _numbers(texts, 1)[:, 0] if texts else np.empty(0)
    split = iter(np.split(flat, np.cumsum(widths)[:-1])) if texts else iter(())
    return [
        next(split) if isinstance(row, bytes) else np.array([np.nan if v is None else v for v in row], dtype=float)
        for row in rows
    ]


def _numbers(texts: list[bytes], n_columns: int) -> np.ndarray:
    """Comma-separated numbers, n_columns to a text, as a (rows, n_columns) float array; one call for them all."""
    if not texts:
        return np.empty((0, n_columns))
    text = b",".join(texts)
    if len(texts) < 2000:  # a refresh's handful: not worth importing pandas for
        return np.array(text.split(b",")).astype(float).reshape(-1, n_columns)
    import pandas as pd  # its C CSV reader turns text into floats several times faster than numpy

    one_per_line = io.BytesIO(text.replace(b",", b"\n"))
    return pd.read_csv(one_per_line, header=None, dtype=float, engine="c").to_numpy().reshape(-1, n_columns)


def number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pair(value: Any) -> tuple[int, Any] | None:
    """A topic's [batch, value], or None when the value does not have that shape."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], int) and not isinstance(value[0], bool):
        return value[0], value[1]
    return None
