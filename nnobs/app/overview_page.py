"""The overview page: every run in the runs root, one sortable row each, live; a row opens its run."""

from __future__ import annotations

import logging
import math
import threading
import time

import pandas as pd
import streamlit as st

from nnobs.app import widgets
from nnobs.protocol.rundir import runs_root
from nnobs.protocol.states import State, state_of
from nnobs.reading.series import RECENT_BATCHES
from nnobs.views.overview import RunRow, run_rows

ROWS_MAX_AGE_S = 1.0  # the overview reads the runs root at most this often, for every session at once


def overview_frame(rows: list[RunRow], now: float) -> pd.DataFrame:
    """The table, one row per run in the order given: what the page's dataframe shows, in plain columns."""

    def when(age: float | None) -> pd.Timestamp:
        return pd.NaT if age is None else pd.Timestamp(now - age, unit="s")

    frame = pd.DataFrame(
        {
            "run": [row.name for row in rows],
            "state": [row.label for row in rows],
            "task": [row.task for row in rows],
            "net": [row.net for row in rows],
            "batch": [row.batch for row in rows],
            "loss": [_number(row.loss) for row in rows],
            "best loss": [_number(row.best_loss) for row in rows],
            "test loss": [_number(row.test_loss) for row in rows],
            "tested at": [_number(row.test_batch) for row in rows],
            "batches/s": [_number(row.rate) for row in rows],
            "last record": [when(row.heartbeat_age_s) for row in rows],
            # log10: a loss falls by decades, and a linear sparkline would show a corner and a flat line
            "loss curve": [[math.log10(loss) for _, loss in row.sparkline if loss > 0] for row in rows],
            "forked from": [row.forked_from or "" for row in rows],
        }
    )
    if any(row.gpu_mem_mb is not None for row in rows):  # a lab on GPUs: their memory, beside the speed
        frame.insert(frame.columns.get_loc("batches/s") + 1, "GPU MB", [_number(row.gpu_mem_mb) for row in rows])
    return frame


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


COLUMNS = {
    "run": st.column_config.TextColumn("run", help="Click a row to open its run page.", pinned=True),
    "state": st.column_config.TextColumn("state", help="The run page's state badge."),
    "net": st.column_config.TextColumn(
        "net or script", help="The net spec, or the command of a script's run.", width=150
    ),
    "batch": st.column_config.NumberColumn("batch", format="localized", width=90),
    "loss": st.column_config.NumberColumn(
        "loss",
        format="%.3g",
        help=f"The training loss's mean over the newest {RECENT_BATCHES} batches or more (whole report windows): "
        "one minibatch's loss is noise, this one sorts runs.",
    ),
    "best loss": st.column_config.NumberColumn(
        "best loss", format="%.3g", help="The lowest that mean has been since the run's net was made."
    ),
    "test loss": st.column_config.NumberColumn(
        "test loss", format="%.3g", help="The newest test-set loss reported; *tested at* says at which batch."
    ),
    "tested at": st.column_config.NumberColumn(
        "tested at",
        format="localized",
        width=90,
        help="The batch the test loss was measured at: far below the run's batch, it is an old one.",
    ),
    "batches/s": st.column_config.NumberColumn(
        "batches/s", format="%.0f", help="While training, over its newest records."
    ),
    "GPU MB": st.column_config.NumberColumn(
        "GPU MB", format="localized", help="GPU memory the run's worker uses (all its GPUs), at its newest sample."
    ),
    "last record": st.column_config.DatetimeColumn(
        "last record", format="distance", help="When the worker last wrote to the run file."
    ),
    "loss curve": st.column_config.LineChartColumn(
        "loss (log) over the run", width=170, help="The loss across the whole run, on a log scale, each row to its own."
    ),
}


class RowsFeed:
    """The latest rows of a runs root, read again in a thread of its own every ROWS_MAX_AGE_S while sessions ask.

    Reading a dozen live runs' tails takes a noticeable part of a second: a session's refresh takes
    the rows read last instead of waiting, and every session shares the one reading.
    """

    def __init__(self, root: str):
        self.root = root
        self._rows: list[RunRow] | None = None
        self._asked = time.monotonic()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def rows(self) -> list[RunRow]:
        with self._lock:
            self._asked = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._read, name=f"overview {self.root}", daemon=True)
                self._thread.start()
            rows = self._rows
        return rows if rows is not None else self._first()

    def _first(self) -> list[RunRow]:
        """The very first rows: the session that asked waits for them."""
        while self._rows is None and self._thread is not None and self._thread.is_alive():
            time.sleep(0.02)
        return self._rows or []

    def _read(self) -> None:
        """Read the rows until no session asked for FEED_IDLE_S."""
        while time.monotonic() - self._asked < FEED_IDLE_S:
            started = time.monotonic()
            try:
                self._rows = run_rows(self.root)
            except Exception as err:  # noqa: BLE001 - a thread that died would leave every viewer an empty table
                logging.getLogger(__name__).warning("overview of %s: %s; the rows read last stand", self.root, err)
            took = time.monotonic() - started
            time.sleep(max(ROWS_MAX_AGE_S - took, took))  # reading at most half the time, however slow it is


FEED_IDLE_S = 10.0  # a feed nobody looked at for this long stops reading


@st.cache_resource(show_spinner=False)
def _feed(root: str) -> RowsFeed:
    return RowsFeed(root)


def _styled(frame: pd.DataFrame, labels: list[str]):
    """The frame with each state in its badge's colour."""
    colours = [state.colour if (state := state_of(label)) else State.STOPPED.colour for label in labels]
    return frame.style.apply(lambda _: [f"color: {c}; font-weight: 600" for c in colours], subset=["state"])


def _table() -> None:
    root = str(runs_root())
    rows = _feed(root).rows()
    if not rows:
        st.info(f"There are no runs in `{root}` yet.")
        st.page_link(widgets.page_named("new"), label="Start a new run", icon=":material/add_circle:")
        return
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    st.caption(
        f"{len(rows)} run{'s' if len(rows) != 1 else ''} in `{root}`: "
        + ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda c: -c[1]))
        + ". Click a row to open its run; click a column's name to sort by it."
    )
    frame = overview_frame(rows, time.time())
    event = st.dataframe(
        _styled(frame, [row.label for row in rows]),
        key="overview_table",
        on_select="rerun",
        selection_mode=["single-row", "single-cell"],  # a click anywhere in a row picks it, not only its box
        hide_index=True,
        column_config=columns_for(rows),
        width="stretch",
        height=min(38 + 35 * len(frame), 800),
        row_height=35,
        placeholder="–",
    )
    picked = event.selection.rows or [row for row, _ in event.selection.cells]
    if picked:
        name = frame["run"].iloc[picked[0]]
        st.switch_page(widgets.page_named("run"), query_params={"run": name})


def columns_for(rows: list[RunRow]) -> dict:
    """COLUMNS, the run column as wide as the longest name: sweeps' names differ at their ends (-seed1, -seed2)."""
    longest = max((len(row.name) for row in rows), default=0)
    width = min(max(NAME_PX_MIN, NAME_PX_PER_CHAR * longest + NAME_PX_PADDING), NAME_PX_MAX)
    run = st.column_config.TextColumn("run", help="Click a row to open its run page.", pinned=True, width=width)
    return COLUMNS | {"run": run}


NAME_PX_PER_CHAR = 8  # the grid's font is about 7 px a character: a little more, never a cut name
NAME_PX_PADDING = 24
NAME_PX_MIN, NAME_PX_MAX = 90, 520  # a run name is at most 64 characters


def overview_page() -> None:
    """Every run, live on the run page's timer."""
    st.markdown("## nnobs · every run")
    st.fragment(run_every=st.session_state.get("refresh_s", 1.0))(_table)()
