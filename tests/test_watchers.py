"""The server's shared readers: one per run file, released when idle, and comparison curves of bounded size."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from conftest import FOREVER, batch_passes, wait_for
from nnobs.reading import foldcache
from nnobs.reading import history as history_module
from nnobs.reading import watcher as watcher_module
from nnobs.reading import shared_readers as watchers
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.records import RecordWriter
from nnobs.reading.watcher import read_history
from nnobs.launching.lifecycle import start_worker, stop_worker
from nnobs.protocol.schema import loss_report, metric_entry, state_report
from nnobs.reading.shared_readers import Readers, curves_for, watcher_for


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_run(path: Path, n_reports: int, state_every: int = 3) -> None:
    """A run file of loss reports with windows and a test loss, and state reports, by the worker's own builders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = RecordWriter(path, gen=1)
    rng = np.random.default_rng(0)
    sv = rng.normal(size=9)
    for i in range(n_reports):
        batch = 50 * (i + 1)
        if i % state_every == 0:
            sv = sv + rng.normal(scale=0.01, size=9)
            out.write(state_report(batch, 0.1, sv, FOREVER, 2000, 0.0))
        low = 1.0 / (1 + i)
        window = (50, low, batch - 10, 2 * low, batch - 30, 1.5 * low)
        out.write({**loss_report(batch, low, window), "metrics": [batch, {"test_loss": metric_entry(1.2 * low, None)}]})
    out.close()


def test_one_reader_per_run_file_however_its_path_is_spelt(tmp_path, monkeypatch):
    run_file = tmp_path / "a" / "run.jsonl"
    write_run(run_file, 10)
    monkeypatch.chdir(tmp_path)
    readers = Readers()
    first = readers.get(run_file)
    assert readers.get(str(run_file)) is first
    assert readers.get(Path("a/run.jsonl")) is first
    assert readers.get(tmp_path / "a" / ".." / "a" / "run.jsonl") is first
    assert readers.get(tmp_path / "b" / "run.jsonl") is not first


def test_sessions_asking_at_once_share_one_reader(tmp_path):
    run_file = tmp_path / "run.jsonl"
    write_run(run_file, 10)
    readers = Readers()
    start = threading.Barrier(16)
    got = []

    def ask():
        start.wait()
        got.append(readers.get(run_file))

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 16 and all(watcher is got[0] for watcher in got)


def test_a_reader_nobody_asked_for_is_released_with_its_memory(tmp_path):
    clock = Clock()
    readers = Readers(clock=clock, release_after_s=120)
    run_file, other = tmp_path / "a" / "run.jsonl", tmp_path / "b" / "run.jsonl"
    write_run(run_file, 200)
    write_run(other, 10)
    watcher = readers.get(run_file)
    with watcher.lock:
        history = weakref.ref(watcher.refresh())
    del watcher
    clock.now += 119
    assert readers.release_idle() == 0
    kept = readers.get(run_file)  # asked again: its time starts over
    clock.now += 100
    readers.get(other)
    assert readers.release_idle() == 0 and readers.get(run_file) is kept
    clock.now += 120
    readers.get(other)  # asking for another releases the idle one too
    assert readers.kept() == [os.path.realpath(other)]
    del kept
    gc.collect()
    assert history() is None, "the released reader's history is still alive"
    assert readers.get(run_file) is not None and len(readers.kept()) == 2


def test_at_most_max_kept_readers_the_least_recently_asked_go_first(tmp_path):
    clock = Clock()
    readers = Readers(clock=clock, max_kept=3)
    files = [tmp_path / f"r{i}" / "run.jsonl" for i in range(5)]
    for i, run_file in enumerate(files[:4]):
        clock.now += 1
        readers.get(run_file)
    assert readers.kept() == [os.path.realpath(f) for f in files[1:4]]
    clock.now += 1
    readers.get(files[1])
    readers.get(files[4])
    assert readers.kept() == [os.path.realpath(f) for f in (files[3], files[1], files[4])]


def test_watcher_for_is_the_process_wide_reader_the_run_page_refreshes(new_run):
    run = new_run("live", target=FOREVER)
    watcher = watcher_for(run.run_file)
    assert watcher_for(str(run.run_file)) is watcher and isinstance(watcher, RunWatcher)
    start_worker(run)
    try:
        batch = batch_passes(run, 5000)

        def refreshed_past() -> bool:
            with watcher.lock:
                return watcher.refresh().batch > batch

        wait_for(refreshed_past, what="the shared watcher to follow the live run")
    finally:
        stop_worker(run)
    with watcher.lock:
        history = watcher.refresh()
    assert history.batch == read_history(run).batch and history.last_lifecycle.kind == "shutdown"


def test_curves_follow_a_live_run_and_are_the_callers_own(new_run):
    run = new_run("curves", target=FOREVER)
    start_worker(run)
    try:
        batch_passes(run, 5000)
        first = curves_for(run.run_file)
        # Loss points, not the batch: a state report alone moves the batch on.
        wait_for(lambda: curves_for(run.run_file).loss_outline.outline.n > first.loss_outline.outline.n,
                 what="the curves to follow the live run")
        later = curves_for(run.run_file)
    finally:
        stop_worker(run)
    assert later is not first and later.outline_only and later.sv_latest is None
    batches, losses = later.loss_outline.outline.points(0)
    assert len(batches) >= 2 and batches[-1] <= later.batch and np.isfinite(losses).all()
    assert later.loss_times.n > 0 and later.last_t is not None
    times = later.loss_times.max_value[: later.loss_times.n_buckets, 0]
    assert (np.diff(times) >= 0).all() and times[-1] <= later.last_t  # wall time rises with the batch
    at = later.wall_time_at(batches)
    assert (np.diff(at) >= 0).all() and at[0] >= later.events[0].t - 1 and at[-1] <= later.last_t
    assert first.loss_outline.outline.n < later.loss_outline.outline.n  # the copy handed out did not move


def bytes_held(history) -> int:
    """Bytes of every numpy array a history holds, however deep."""
    seen, total, todo = set(), 0, [history]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, dict):
            todo += list(item.values())
        elif isinstance(item, (list, tuple)):
            todo += list(item)
        elif hasattr(item, "__dict__"):
            todo += list(vars(item).values())
    return total


def test_curves_cost_the_same_memory_whatever_the_length_of_the_run(tmp_path):
    short, long = tmp_path / "short" / "run.jsonl", tmp_path / "long" / "run.jsonl"
    write_run(short, 3_000)
    write_run(long, 60_000)
    held = {name: bytes_held(RunWatcher(path, outline_only=True).refresh()) for name, path in
            (("short", short), ("long", long))}
    full = bytes_held(RunWatcher(long).refresh())
    assert held["long"] == held["short"], held
    assert held["long"] * 5 < full, (held, full)


def test_curves_start_from_the_run_pages_fold_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 1)
    run_file = tmp_path / "run.jsonl"
    write_run(run_file, 5_000)
    RunWatcher(run_file).refresh()  # the run page's reader, which saves run.fold.npz
    reader = RunWatcher(run_file, outline_only=True)
    reader.refresh()
    assert reader.resumed_at == run_file.stat().st_size
    out = RecordWriter(run_file, gen=1)
    out.write(loss_report(10**6, 0.5))
    out.close()
    assert reader.refresh().batch == 10**6
    assert foldcache.cache_path(run_file, outline_only=True).exists()  # its own, small cache, now the newer
    again = RunWatcher(run_file, outline_only=True)
    assert again.refresh().batch == 10**6 and again.resumed_at == run_file.stat().st_size


@pytest.mark.parametrize("kind", ["watcher", "curves"])
def test_the_process_wide_readers_release_with_the_sweeper(tmp_path, monkeypatch, kind):
    clock = Clock()
    readers = Readers(outline_only=kind == "curves", clock=clock)
    monkeypatch.setattr(watchers, "_CURVES" if kind == "curves" else "_WATCHERS", readers)
    run_file = tmp_path / "run.jsonl"
    write_run(run_file, 10)
    (curves_for if kind == "curves" else watcher_for)(run_file)
    assert readers.kept() == [os.path.realpath(run_file)]
    clock.now += watchers.RELEASE_AFTER_S
    watchers._WATCHERS.release_idle(), watchers._CURVES.release_idle()  # what the sweeper thread does
    assert readers.kept() == []
