"""What the compare page shows of several runs: their curves in one frame, and the settings that tell them apart."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from nnobs.protocol.jsontext import parse_json
from nnobs.protocol.numbers import is_int
from nnobs.protocol.schema import TEST_LOSS
from nnobs.reading.history import RunHistory
from nnobs.views.frames import SMOOTHING_SPANS, means_frame, smooth

# The x axis choices and the labels the page shows: batches on a log axis once the runs span decades (auto), always,
# never, or the clock.
AXES = {"auto": "Batch (auto)", "log": "Batch, log", "linear": "Batch, linear", "time": "Wall time"}


@dataclass
class Curves:
    """One run's curves, bounded however long the run: each bucket's mean loss and test loss at its middle batch."""

    loss: pd.DataFrame  # batch, mean
    test: pd.DataFrame  # batch, mean; empty when the run reports no test loss
    times: tuple[np.ndarray, np.ndarray] | None  # (batches, unix times), increasing: to put a batch on the clock
    batch: int  # the latest batch
    loss_now: float | None = None  # RunHistory.loss: the mean of the newest batches, what runs are compared by
    best_loss: float | None = None  # the lowest that mean has been
    tested: tuple[int, float] | None = None  # (batch, value) of the newest test loss: maybe long before `batch`


def curves_of_history(history: RunHistory) -> Curves:
    """A run's curves from its folded history (curves_for's): the loss, the test loss, and the clock by batch."""
    test = history.metrics.get(TEST_LOSS)
    batches, times = history.loss_times.points(0)
    order = np.argsort(batches, kind="stable")
    return Curves(
        loss=means_frame(history.loss_outline),
        test=means_frame(test) if test is not None else pd.DataFrame({"batch": [], "mean": []}),
        times=(batches[order], times[order]) if len(batches) else None,
        batch=history.batch,
        loss_now=history.loss,
        best_loss=history.best_loss,
        tested=test.latest if test is not None else None,
    )


def figures_frame(curves: dict[str, Curves]) -> pd.DataFrame:
    """One row per run (its name the index): batch, loss, best loss, test loss and the batch it was measured at."""

    def number(value: float | None) -> float:
        return np.nan if value is None else float(value)

    return pd.DataFrame(
        {
            "batch": [c.batch for c in curves.values()],
            "loss": [number(c.loss_now) for c in curves.values()],
            "best loss": [number(c.best_loss) for c in curves.values()],
            "test loss": [number(c.tested[1] if c.tested else None) for c in curves.values()],
            "tested at": [number(c.tested[0] if c.tested else None) for c in curves.values()],
        },
        index=pd.Index(list(curves), name="run"),
    )


def curve_frame(curves: dict[str, Curves], series: str, smoothing: float, log_scale: bool) -> pd.DataFrame:
    """Long form (run, batch, t, value) of one series ("loss" or "test") of every run, smoothed as the run page does.

    The smoothing decays by the same number of batches for every run (a 1/1000 of the batches all of them
    span together), so two runs' lines are smoothed alike and can be read against each other. `t` is the wall
    time in milliseconds (NaN where a run has no clock); rows a log axis cannot draw are left out.
    """
    frames = {name: getattr(c, series) for name, c in curves.items()}
    shown = [f["batch"] for f in frames.values() if len(f)]
    first = min(float(b.min()) for b in shown) if shown else 0.0
    latest = max([float(b.max()) for b in shown] + [float(c.batch) for c in curves.values()]) if shown else 1.0
    span = (latest - first) / SMOOTHING_SPANS
    parts = []
    for name, frame in frames.items():
        at = frame["batch"].to_numpy(dtype=float)
        values = frame["mean"].to_numpy(dtype=float)
        if log_scale:
            with np.errstate(divide="ignore", invalid="ignore"):
                smoothed = np.exp(smooth(at, np.where(values > 0, np.log(values), np.nan), smoothing, span))
        else:
            smoothed = smooth(at, values, smoothing, span)
        drawn = np.isfinite(smoothed) & (smoothed > 0 if log_scale else True)
        times = curves[name].times
        t = np.interp(at, *times) * 1000 if times is not None and len(times[0]) else np.full(len(at), np.nan)
        parts.append(
            pd.DataFrame({"run": name, "batch": at[drawn].astype(np.int64), "t": t[drawn], "value": smoothed[drawn]})
        )
    frame = (
        pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"run": [], "batch": [], "t": [], "value": []})
    )
    return frame.astype({"run": pd.CategoricalDtype(list(curves))})  # each name sent once, not once a point


def settings_of(config_text: str | None, origin: dict[str, Any] | None, script: str | None) -> dict[str, str]:
    """A run's settings as the table shows them: config.json's fields, where it was forked from, or its script."""
    settings: dict[str, str] = {}
    if config_text is not None:
        try:
            raw = parse_json(config_text)
        except ValueError:
            raw = {"config.json": "unreadable"}
        if isinstance(raw, dict):
            settings |= {str(key): _shown(value) for key, value in raw.items()}
    elif script is not None:
        settings["script"] = script
    settings["forked from"] = f"{origin.get('run')} at batch {origin.get('batch', 0):,}" if origin else "-"
    return settings


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if is_int(value):
        return f"{value:,}"
    return value if isinstance(value, str) else json.dumps(value)


def differing_settings(settings: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per run, one column per setting whose value is not the same for all of them ("-" where a run has
    none); an empty frame (no columns) when nothing differs."""
    keys = list(dict.fromkeys(key for one in settings.values() for key in one))
    differ = [key for key in keys if len({one.get(key, "-") for one in settings.values()}) > 1]
    return pd.DataFrame(
        {key: [one.get(key, "-") for one in settings.values()] for key in differ},
        index=pd.Index(list(settings), name="run"),
    )
