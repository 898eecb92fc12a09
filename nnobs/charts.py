"""Series to chart data: downsampled so spikes survive, then drawn as Altair charts."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

MAX_POINTS = 2000  # per series sent to the browser
MAX_SV_LINES = 64  # parameters drawn as lines; the heatmap shows them all
HEATMAP_COLUMNS = 120  # batch bins across the heatmap


def minmax_indices(values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most max_points values: the first, the last, and each bucket's min and max, in order.

    Unlike random or strided sampling, this never drops a spike. NaNs (diverged points) are kept
    out of the min/max choice but a bucket of only NaNs still contributes a point.
    """
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    n_buckets = max(1, (max_points - 2) // 2)
    inner = values[1:-1]
    size = -(-len(inner) // n_buckets)  # ceil: every value falls in some bucket
    padded = np.full(size * n_buckets, np.nan)
    padded[: len(inner)] = inner
    rows = padded.reshape(n_buckets, size)  # (n_buckets, size)
    lows = np.argmin(np.where(np.isnan(rows), np.inf, rows), axis=1)
    highs = np.argmax(np.where(np.isnan(rows), -np.inf, rows), axis=1)
    starts = np.arange(n_buckets) * size + 1
    picked = np.concatenate(([0], starts + lows, starts + highs, [n - 1]))
    return np.unique(picked[picked < n])


def loss_frame(batches: np.ndarray, losses: np.ndarray, max_points: int = MAX_POINTS) -> pd.DataFrame:
    keep = minmax_indices(losses, max_points)
    return pd.DataFrame({"batch": batches[keep], "loss": losses[keep]})


def loss_chart(frame: pd.DataFrame, log_scale: bool) -> alt.Chart:
    if log_scale:
        frame = frame[frame["loss"] > 0]  # a log axis has no place for zero
    scale = alt.Scale(type="log") if log_scale else alt.Scale(zero=False)
    return (
        alt.Chart(frame, title="Loss")
        .mark_line(point=len(frame) < 60, interpolate="linear")
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("loss:Q", title="loss" + (" (log)" if log_scale else ""), scale=scale),
            tooltip=[alt.Tooltip("batch:Q", format=","), alt.Tooltip("loss:Q", format=".4g")],
        )
        .properties(height=300)
        .interactive(bind_y=False)
    )


def sv_frames(batches: np.ndarray, svs: np.ndarray, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long-form frames for the parameter lines and the heatmap, both bounded in size.

    svs is (n_reports, n_params). Lines: each of the first MAX_SV_LINES parameters, downsampled
    so every bucket keeps its min and max. Heatmap: each parameter's mean over batch bins.
    """
    n_reports, n_params = svs.shape
    shown = min(n_params, MAX_SV_LINES)
    per_line = max(4, MAX_POINTS // max(shown, 1) * 4)
    lines = []
    for j in range(shown):
        keep = minmax_indices(svs[:, j], per_line)
        lines.append(pd.DataFrame({"batch": batches[keep], "parameter": names[j], "value": svs[keep, j]}))
    line_frame = pd.concat(lines, ignore_index=True) if lines else pd.DataFrame(columns=["batch", "parameter", "value"])

    n_bins = min(HEATMAP_COLUMNS, n_reports)
    bin_of = (np.arange(n_reports) * n_bins) // max(n_reports, 1)  # (n_reports,) bin index of each report
    counts = np.bincount(bin_of, minlength=n_bins)  # (n_bins,)
    sums = np.zeros((n_bins, n_params))
    np.add.at(sums, bin_of, svs)
    means = sums / counts[:, None]  # (n_bins, n_params)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # (n_bins,) first report of each bin
    starts = batches[first] if n_reports else np.empty(0)
    step = batches[-1] - batches[-2] if n_reports > 1 else 1
    ends = np.append(starts[1:], batches[-1] + step) if n_reports else np.empty(0)
    heat_frame = pd.DataFrame(
        {
            "batch": np.repeat(starts, n_params),
            "batch_end": np.repeat(ends, n_params),
            "parameter": np.tile(np.array(names[:n_params], dtype=object), n_bins),
            "value": means.ravel(),
        }
    )
    return line_frame, heat_frame


def sv_lines_chart(frame: pd.DataFrame, names: list[str]) -> alt.Chart:
    return (
        alt.Chart(frame, title="State vector: each parameter")
        .mark_line()
        .encode(
            x=alt.X("batch:Q", title="batch"),
            y=alt.Y("value:Q", title="value"),
            color=alt.Color("parameter:N", sort=names, legend=alt.Legend(columns=1 if len(names) <= 16 else 2, symbolLimit=32)),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=max(240, 14 * min(len(names), 80)))
        .interactive(bind_y=False)
    )


def sv_heatmap(frame: pd.DataFrame, names: list[str]) -> alt.Chart:
    limit = float(np.nanmax(np.abs(frame["value"]))) if len(frame) and np.isfinite(frame["value"]).any() else 1.0
    return (
        alt.Chart(frame, title="State vector over batches")
        .mark_rect()
        .encode(
            x=alt.X("batch:Q", title="batch"),
            x2="batch_end:Q",
            y=alt.Y("parameter:N", sort=None, title=None),  # data order is state-vector order
            color=alt.Color(
                "value:Q", scale=alt.Scale(scheme="redblue", domain=[-limit, limit], reverse=True), title="value"
            ),
            tooltip=["parameter:N", alt.Tooltip("batch:Q", format=","), alt.Tooltip("value:Q", format=".4g")],
        )
        .properties(height=max(240, 14 * min(len(names), 80)))
    )
