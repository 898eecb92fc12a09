"""A numpy net of nnobs.training.builtin.nn fits a sine wave in a loop of your own, watched and steered live by nnobs.

Run it directly (the run lives in ./runs/numpy-sine, or under --runs / $NNOBS_RUNS):

    python examples/numpy_loop.py                # then: nnobs status numpy-sine, nnobs tail, streamlit run app.py
    python examples/numpy_loop.py --eta 0.3      # too large a step: watch the loss diverge, then lower it

or let nnobs start it detached, so that the page's Restart starts it again:

    nnobs run numpy-sine -- python examples/numpy_loop.py

At its target the loop waits, still answering the page and the CLI; `nnobs stop numpy-sine`, Ctrl-C
or SIGTERM end it after a final checkpoint of the net's state vector, from which it resumes when
started again (with the run's learning rate and target then, not those given here).
"""

from __future__ import annotations

import argparse

import numpy as np

import nnobs
from nnobs.training.builtin.nn import AffineLayer, Network, TanhLayer

BATCH_SIZE = 32


def sine_batch(rng: np.random.RandomState, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """rows points of sin(pi x), x drawn from [-1, 1]: x and ideal of shape (rows, 1)."""
    x = rng.uniform(-1.0, 1.0, (rows, 1))
    return x, np.sin(np.pi * x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="numpy-sine", help="the run's name (default: numpy-sine)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--target", type=int, default=100_000, help="batches to train, then wait (default: 100000)")
    parser.add_argument("--eta", type=float, default=0.05, help="the learning rate (default: 0.05)")
    parser.add_argument("--hidden", type=int, default=16, help="tanh units in the hidden layer (default: 16)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N batches a second (default: 0, flat out)")
    parser.add_argument("--seed", type=int, default=0, help="draws the first weights and the batches (default: 0)")
    args = parser.parse_args()

    rng = np.random.RandomState(args.seed)
    net = Network(eta=args.eta).extend(AffineLayer(1, args.hidden, rng)).extend(TanhLayer()).extend(AffineLayer(args.hidden, 1, rng))
    grid = np.linspace(-1.0, 1.0, 201)[:, None]  # (201, 1): the whole interval, for a loss no batch can flatter
    whole = (grid, np.sin(np.pi * grid))

    # nnobs.attach checkpoints the net's state vector and sets net.eta when the page or the CLI changes it.
    with nnobs.Run(args.run, trainer=nnobs.attach(net), target=args.target, pace=args.pace, root=args.runs) as run:
        for batch in run.batches():
            loss = net.learn_one(*sine_batch(rng, BATCH_SIZE))
            metrics = {"lr": net.eta}
            if run.evaluation_due():  # at batches spread evenly in log batches, and at the target
                metrics["interval_loss"] = net.losses([whole])[0]
            run.log(loss, **metrics)

    print(f"{run.run_dir.name}: stopped at batch {run.batch:,}, loss on the whole interval {net.losses([whole])[0]:.3g}; "
          f"the run is in {run.run_dir.path.resolve()}", flush=True)


if __name__ == "__main__":
    main()
