"""The run page's live part, redrawn on the timer: the run's status on top, then its charts and views."""

from __future__ import annotations

import time

import streamlit as st

from nnobs.app import run_status, run_views
from nnobs.protocol.rundir import RunDir
from nnobs.reading.history import MAX_METRICS
from nnobs.reading.shared_readers import watcher_for
from nnobs.training.builtin.tasks import RunConfig
from nnobs.views import charts
from nnobs.views.vegalite import with_batch_scale
from nnobs.views.view import RunView, SharedViews


@st.cache_resource(show_spinner=False)
def _shared_views() -> SharedViews:
    """One view of each run per refresh for the whole server, handed to every session watching it."""
    return SharedViews()


def _view(run: RunDir, config: RunConfig | None) -> RunView:
    """The run's view as every session shares it: at most half a refresh old."""
    max_age = min(float(st.session_state.get("refresh_s", 1.0)), 1.0) / 2
    return _shared_views().view(run, watcher_for(str(run.run_file)), config, max_age)


def live(run: RunDir, config: RunConfig | None) -> None:
    """Status, command outcomes and charts, re-read from the run file on every tick."""
    started = time.perf_counter()
    view = _view(run, config)
    run_status.header(run, view)
    run_status.metrics(view)
    run_status.problems(run, view)
    run_status.commands(view)
    _charts(run, view)
    took = 1000 * (time.perf_counter() - started)
    n = view.status.skipped_lines
    skipped = f" · {n:,} unreadable line{'' if n == 1 else 's'} skipped" if n else ""
    st.caption(f"Updated {time.strftime('%H:%M:%S')} in {took:.0f} ms · {view.n_records:,} records{skipped}")


def _charts(run: RunDir, view: RunView) -> None:
    """The charts: their specs never change during a run, so the browser only swaps in the new data. Their data
    is the shared view's, as Arrow tables made once for every session with the same settings."""
    log_loss = st.session_state.get("log_loss", True)
    frames = _shared_views().tables(run, view, st.session_state.get("smoothing", 0.6), log_loss)
    log_batches = run_views.batch_axis_control(view)
    if len(frames["loss"]):
        spec = with_batch_scale(charts.loss_spec(log_loss, view.test is not None), log_batches)
        st.vega_lite_chart(frames["loss"], spec, width="stretch", height=420)
        if log_loss and (hidden := charts.off_the_log_axis(view.loss)):
            st.caption(hidden)
    elif len(view.loss):
        st.caption(charts.LOSS_PENDING)
    run_views.metric_charts(view.metrics, frames, log_batches)
    if view.metrics_dropped:
        st.caption(f"More metrics are logged than the first {MAX_METRICS} shown here; the run file holds them all.")
    run_views.draw(view, frames)
