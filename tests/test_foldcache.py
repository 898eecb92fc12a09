"""The fold cache: a reopened run parses only what came since, and comes back exactly as a whole fold makes it."""

from __future__ import annotations

import os
import pickle
import random
from collections import deque
from dataclasses import is_dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import FOREVER, answered, batch_passes, kill_worker, wait_for, wait_started
from nnobs.reading import foldcache
from nnobs.reading import history as history_module
from nnobs.reading import watcher as watcher_module
from nnobs.protocol.checkpoint import kept_batches
from nnobs.protocol.control import send_command
from nnobs.reading.history import RunHistory, WindowedSeries
from nnobs.reading.watcher import RunWatcher
from nnobs.protocol.records import RecordWriter
from nnobs.protocol.rundir import RunDir
from nnobs.launching.lifecycle import start_worker, stop_worker
from nnobs.protocol.schema import loss_report, metric_entry, params_record, summary_report, tensor_summary
from nnobs.reading.series import Column, MinMaxBuckets, StateArchive


def assert_same(a, b, where: str = "history") -> None:
    """Every field of a and b equal, arrays bit for bit (NaN where NaN), types alike, recursively."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, Column):
        assert_same(a.values(), b.values(), where)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), f"{where}: arrays differ"
    elif isinstance(a, StateArchive):  # its arrays past the states kept hold nothing
        assert_same([a.width, a.capacity, a.stride, a.seen, *a.kept()], [b.width, b.capacity, b.stride, b.seen, *b.kept()], where)
    elif isinstance(a, (RunHistory, WindowedSeries, MinMaxBuckets)) or is_dataclass(a):
        assert vars(a).keys() == vars(b).keys(), where
        for name in vars(a):
            assert_same(vars(a)[name], vars(b)[name], f"{where}.{name}")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple, deque)):
        assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def whole_fold(content: bytes, outline_only: bool = False) -> RunHistory:
    history = RunHistory(outline_only=outline_only)
    history.add_lines(content[: content.rfind(b"\n") + 1])
    return history


@pytest.fixture(scope="module")
def long_run_file(tmp_path_factory) -> bytes:
    """A real worker's run file with restarts, a kill -9, a rewind, a reinit and commands, then a large net's
    summaries, a script's metrics and a torn line, written by the real record builders."""
    root = tmp_path_factory.mktemp("runs")
    run = RunDir.named("long", root)
    from nnobs.launching.lifecycle import create_run
    from nnobs.training.builtin.tasks import RunConfig

    create_run(run, RunConfig(target=FOREVER, report_every=100))
    try:
        start_worker(run)
        batch_passes(run, 30_000)
        assert answered(run, send_command(run.control_file, "eta", 0.05, by="test")).ok
        assert answered(run, send_command(run.control_file, "tell_state", by="test")).ok
        wait_for(lambda: len(kept_batches(run.checkpoint)) >= 1, what="a kept checkpoint")
        batch_passes(run, 60_000)
        kill_worker(run)  # may leave a torn line, ended by the next worker
        start_worker(run)
        wait_started(run, 2)
        batch_passes(run, 90_000)
        kept = kept_batches(run.checkpoint)
        assert answered(run, send_command(run.control_file, "rewind", kept[len(kept) // 2], by="test")).ok
        assert answered(run, send_command(run.control_file, "reinit", 7, by="test")).ok
        assert answered(run, send_command(run.control_file, "pace", 0, by="test")).ok
        batch_passes(run, 120_000)
    finally:
        stop_worker(run)
    batch = 200_000
    tensors = [("fc1.weight", (120, 100)), ("fc1.bias", (120,))]
    with open(run.run_file, "ab") as f:
        f.write(b'{"loss":[200000,0.1],"t":17')  # a writer killed mid-line; the next one ends the line
    out = RecordWriter(run.run_file, gen=9)
    out.write({"event": [batch, "started"], "resumed_from": None, **params_record(batch, tensors, 12_120)})
    rng = np.random.default_rng(3)
    sv = rng.normal(size=12_120)
    for i in range(1500):
        batch += 10
        low = 1 / (1 + i)
        window = (10, low, batch - 5, 2 * low, batch - 2, 1.5 * low)
        metrics = {"test_loss": metric_entry(1.1 * low, window if i % 2 else None), "acc": metric_entry(i / 1500, None)}
        out.write({**loss_report(batch, low, window), "metrics": [batch, metrics]})
        if i % 10 == 0:
            previous, sv = sv, sv + rng.normal(scale=0.01, size=len(sv))
            out.write(summary_report(batch, 0.1, tensor_summary(sv, tensors, previous), sv[:256], FOREVER, 100, 0.0))
    out.close()
    return run.run_file.read_bytes()


def cuts_of(content: bytes, count: int, seed: int) -> list[int]:
    """Where the cached fold stops: random places (mid-line ones leave a torn tail), and just after each new line
    of training begins."""
    rng = random.Random(seed)
    cuts = [rng.randrange(1, len(content)) for _ in range(count)]
    for needle in history_module.NEW_LINE_EVENTS:
        at = content.find(needle)
        while at != -1:
            cuts.append(content.find(b"\n", at) + 1)
            at = content.find(needle, at + 1)
    return sorted(set(cuts))


@pytest.mark.parametrize("outline_only", [False, True], ids=["full", "outline"])
def test_a_run_reopened_from_its_cache_is_exactly_the_whole_fold(long_run_file, tmp_path, monkeypatch, outline_only):
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    content = long_run_file
    whole = whole_fold(content, outline_only)
    assert whole.events and whole.markers and whole.answers and whole.metrics and whole.best_loss is not None
    if not outline_only:
        assert whole.layers is not None and whole.sv_latest is not None and whole.skipped_lines >= 1
    assert {e.kind for e in whole.events} >= {"started", "rewound", "reinit"}
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 1)  # a cache at every refresh
    for cut in cuts_of(content, 8, seed):
        monkeypatch.setattr(watcher_module, "READ_BYTES", 50_000)  # chunks cut inside buckets, over and over
        run_file = tmp_path / f"cut{cut}" / "run.jsonl"
        run_file.parent.mkdir()
        run_file.write_bytes(content[:cut])
        first = RunWatcher(run_file, outline_only=outline_only)
        first.refresh()
        covered = content.rfind(b"\n", 0, cut) + 1
        assert foldcache.cache_path(run_file, outline_only).exists() == (covered > 0)
        with open(run_file, "ab") as f:
            f.write(content[cut:])
        monkeypatch.setattr(watcher_module, "READ_BYTES", cut % 2 and 50_000 or 10**9)  # cut in chunks, or read whole
        reopened = RunWatcher(run_file, outline_only=outline_only)
        assert_same(reopened.refresh(), whole, f"history reopened at {cut} of {len(content)} bytes")
        assert reopened.resumed_at == covered
        if watcher_module.READ_BYTES > len(content):
            assert reopened.reader.bytes_read == len(content) - covered  # only what came since was read


def test_a_full_cache_gives_an_outline_reader_its_curves(long_run_file, tmp_path, monkeypatch):
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 1)
    run_file = tmp_path / "run.jsonl"
    run_file.write_bytes(long_run_file)
    full = RunWatcher(run_file).refresh()
    assert not foldcache.cache_path(run_file, True).exists()
    curves = RunWatcher(run_file, outline_only=True)
    history = curves.refresh()
    assert curves.resumed_at == len(long_run_file)
    for name in ("loss_outline", "loss_times", "metrics", "markers", "events", "answers", "batch", "loss", "best_loss"):
        assert_same(getattr(history, name), getattr(full, name), name)
    assert history.sv_latest is None and len(history.loss_batches) <= history_module.NOT_LEARNING_REPORTS


def folded_after(run_file: Path) -> RunWatcher:
    watcher = RunWatcher(run_file)
    watcher.refresh()
    return watcher


@pytest.fixture
def cached_run(long_run_file, tmp_path, monkeypatch) -> Path:
    """A run file with a fold cache that covers all of it."""
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 1)
    run_file = tmp_path / "run.jsonl"
    run_file.write_bytes(long_run_file)
    folded_after(run_file)
    assert folded_after(run_file).resumed_at == len(long_run_file)
    return run_file


def test_a_replaced_run_file_is_folded_from_the_start(cached_run, long_run_file):
    replacement = cached_run.with_name("new.jsonl")
    replacement.write_bytes(long_run_file)  # the same bytes, but another file
    os.replace(replacement, cached_run)
    watcher = folded_after(cached_run)
    assert watcher.resumed_at == 0
    assert_same(watcher.history, whole_fold(long_run_file))


@pytest.mark.parametrize("change", ["truncated", "rewritten", "shorter"])
def test_a_run_file_changed_in_place_is_folded_from_the_start(cached_run, long_run_file, change):
    content = {"truncated": b"", "shorter": long_run_file[: long_run_file.rfind(b"\n", 0, -1) + 1],
               "rewritten": long_run_file.replace(b'"gen":1}', b'"gen":2}', 1)}[change]
    with open(cached_run, "r+b") as f:  # same inode
        f.truncate(0)
        f.write(content)
    watcher = folded_after(cached_run)
    assert watcher.resumed_at == 0
    assert_same(watcher.history, whole_fold(content))


def test_a_cache_of_another_format_is_ignored(cached_run, long_run_file, monkeypatch):
    monkeypatch.setattr(foldcache, "FORMAT", foldcache.FORMAT + 1)
    watcher = folded_after(cached_run)
    assert watcher.resumed_at == 0
    assert_same(watcher.history, whole_fold(long_run_file))
    monkeypatch.undo()
    assert folded_after(cached_run).resumed_at == 0  # the file now holds the newer format, which this one ignores


def read_cache(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with open(path, "rb") as f:
        archive = foldcache.ArrayFile(f)
        return archive.meta, {name: archive[name] for name in archive.files}


def write_cache(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        foldcache.write_arrays(f, meta, arrays)


@pytest.mark.parametrize("damage", ["garbage", "cut short", "empty", "wrong dtype", "wrong shape", "bad meta",
                                    "huge shape"])
def test_a_damaged_cache_is_ignored(cached_run, long_run_file, damage):
    path = foldcache.cache_path(cached_run)
    if damage in ("garbage", "cut short", "empty"):
        data = path.read_bytes()
        path.write_bytes({"garbage": os.urandom(4096), "cut short": data[: len(data) // 2], "empty": b""}[damage])
    elif damage == "huge shape":
        data = path.read_bytes()
        path.write_bytes(data.replace(b'"loss_values": ["<f8", [', b'"loss_values": ["<f8", [999999999999', 1))
    else:
        meta, arrays = read_cache(path)
        if damage == "wrong dtype":
            arrays["loss_batches"] = arrays["loss_batches"].astype(float)
        elif damage == "wrong shape":
            arrays["loss_windows"] = arrays["loss_windows"][:, :5]
        else:
            meta["history"]["scalars"]["batch"] = "x"
        write_cache(path, meta, arrays)
    watcher = folded_after(cached_run)
    assert watcher.resumed_at == 0
    assert_same(watcher.history, whole_fold(long_run_file))


class Planted:
    """Unpickling this would leave a file behind: a cache must never be unpickled."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (Path.touch, (self.mark,))


def test_a_cache_holding_a_pickle_is_never_unpickled(cached_run, long_run_file, tmp_path):
    mark = tmp_path / "unpickled"
    path = foldcache.cache_path(cached_run)
    meta, arrays = read_cache(path)
    write_cache(path, meta, arrays)
    data = path.read_bytes()
    payload = pickle.dumps(np.array([Planted(mark)], dtype=object))
    data = data.replace(b'"loss_batches": ["<i8"', b'"loss_batches": ["|O8"', 1) + payload
    path.write_bytes(data)
    watcher = folded_after(cached_run)
    assert watcher.resumed_at == 0 and not mark.exists()
    assert_same(watcher.history, whole_fold(long_run_file))


def test_a_cache_that_cannot_be_written_leaves_reading_as_it_was(long_run_file, tmp_path, monkeypatch):
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 1)
    run_file = tmp_path / "run.jsonl"
    run_file.write_bytes(long_run_file)
    foldcache.cache_path(run_file).mkdir()  # where the cache would go, something no file can replace
    watcher = folded_after(run_file)
    assert_same(watcher.history, whole_fold(long_run_file))
    assert foldcache.cache_path(run_file).is_dir() and not list(tmp_path.glob(".run.fold.*"))


def test_a_small_run_writes_no_cache(tmp_path):
    run_file = tmp_path / "run.jsonl"
    out = RecordWriter(run_file, gen=1)
    for batch in range(100):
        out.write(loss_report(batch, 1.0 / (1 + batch)))
    out.close()
    folded_after(run_file)
    assert not foldcache.cache_path(run_file).exists()


def test_buckets_folded_point_by_point_hold_the_bits_of_buckets_folded_at_once():
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    batches = np.cumsum(rng.integers(1, 5, size=5000))
    values = rng.normal(size=(5000, 3)) * 10.0 ** rng.integers(-8, 8, size=(5000, 1))
    values[rng.random(values.shape) < 0.01] = np.nan
    weights = rng.integers(1, 100, size=5000).astype(float)
    at_once, in_pieces = MinMaxBuckets(3, 64), MinMaxBuckets(3, 64)
    at_once.extend(batches, values, weights)
    cuts = [0, *sorted(rng.choice(np.arange(1, 5000), size=300, replace=False)), 5000]
    for start, end in zip(cuts, cuts[1:]):
        in_pieces.extend(batches[start:end], values[start:end], weights[start:end])
    assert_same(in_pieces, at_once, "buckets")


def test_a_watched_run_saves_its_cache_again_each_time_enough_was_folded(monkeypatch, new_run):
    monkeypatch.setattr(watcher_module, "SAVE_AFTER_BYTES", 20_000)
    run = new_run("live", target=FOREVER)
    cache = foldcache.cache_path(run.run_file)
    watcher = RunWatcher(run.run_file)
    saved: list[bytes] = []

    def saved_three_times() -> bool:
        watcher.refresh()
        if cache.exists() and (data := cache.read_bytes()) not in saved:
            saved.append(data)
        return len(saved) >= 3

    start_worker(run)
    try:
        wait_for(saved_three_times, what="the live run's fold cache to be saved three times")
    finally:
        stop_worker(run)
    watcher.refresh()
    reopened = RunWatcher(run.run_file)
    reopened.refresh()
    assert 0 < reopened.resumed_at and run.run_file.stat().st_size - reopened.resumed_at < 20_000
    assert_same(reopened.history, whole_fold(run.run_file.read_bytes()))


def test_a_worker_keeps_its_runs_fold_cache_so_that_a_first_open_parses_only_the_tail(new_run):
    run = new_run(target=FOREVER)
    out = RecordWriter(run.run_file, gen=1)  # a long run's records before this start: 17 MB, more than one fold
    batch = 0
    while os.path.getsize(run.run_file) < watcher_module.SAVE_AFTER_BYTES + (1 << 20):
        for _ in range(1000):
            batch += 50
            out.write(loss_report(batch, 1.0 / batch, (50, 0.5 / batch, batch - 7, 2.0 / batch, batch - 3, 1.0 / batch)))
        out.flush()
    out.close()
    before = os.path.getsize(run.run_file)
    assert not foldcache.cache_path(run.run_file).exists()

    start_worker(run)
    try:
        wait_for(lambda: foldcache.cache_path(run.run_file).exists(), timeout=60, what="the worker's fold cache")
        watcher = RunWatcher(run.run_file)
        history = watcher.refresh()
        assert watcher.resumed_at >= before, "a first open resumes past every record written before the worker started"
        assert history.batch > 0 and history.n_records > before // 200
    finally:
        stop_worker(run)
