"""`python -m bench`: train the XOR net bare, with the seed's np.vectorize layers, and in a watched worker."""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np

from nnobs.control import send_command
from nnobs.history import RunWatcher
from nnobs.nn import AffineLayer, MapLayer, Network
from nnobs.runs import RunDir, create_run, start_worker, stop_worker
from nnobs.tasks import RunConfig, build

BATCHES = 300_000


def bare_rate(net: Network, next_batch, batches: int) -> float:
    """Batches/s of a plain learn loop: no I/O at all."""
    x, ideal = next_batch()
    start = time.perf_counter()
    for _ in range(batches):
        net.learn_one(x, ideal)
    return batches / (time.perf_counter() - start)


def vectorize_net() -> Network:
    """The seed library's XOR net: MapLayers wrapping tanh in np.vectorize, as the original did."""
    rng = np.random.RandomState(1)
    tanh = np.vectorize(np.tanh)
    dtanh = np.vectorize(lambda d: 1.0 - np.tanh(d) ** 2)
    return Network().extend(AffineLayer(2, 2, rng)).extend(MapLayer(tanh, dtanh)).extend(
        AffineLayer(2, 1, rng)).extend(MapLayer(tanh, dtanh))


def watched_worker_rate(batches: int) -> float:
    """Batches/s of a real detached worker, at default reporting, while a page-like reader refreshes every 0.5 s."""
    with tempfile.TemporaryDirectory() as root:
        run = RunDir.named("bench", root)
        create_run(run, RunConfig(target=0))
        start_worker(run)
        watcher, watching = RunWatcher(run.run_file), threading.Event()

        def watch():
            while not watching.wait(0.5):
                watcher.refresh()

        threading.Thread(target=watch, daemon=True).start()
        command = send_command(run.control_file, "target", batches, by="bench")
        while (history := watcher.refresh()).batch < batches:
            time.sleep(0.05)
        watching.set()
        stop_worker(run)
        ack_t = history.answers[command["id"]].t  # training starts as the target is acknowledged
        done_t = next(e.t for e in history.events if e.kind == "target_reached")
        return batches / (done_t - ack_t)


def main() -> None:
    net, next_batch = build(RunConfig())
    bare = bare_rate(net, next_batch, BATCHES)
    seed_style = bare_rate(vectorize_net(), next_batch, BATCHES // 10)
    watched = watched_worker_rate(BATCHES)
    rows = [
        ("XOR bare learn loop, batches/s", f"{bare:,.0f}", "1.00"),
        ("XOR watched worker, batches/s", f"{watched:,.0f}", f"{watched / bare:.2f} of bare"),
        ("XOR with np.vectorize layers (seed), batches/s", f"{seed_style:,.0f}", f"bare is {bare / seed_style:.1f}x faster"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'absolute':>10}  ratio")
    for name, absolute, ratio in rows:
        print(f"{name:<{width}}  {absolute:>10}  {ratio}")


if __name__ == "__main__":
    main()
