"""A PyTorch MLP learns two interleaved spirals, watched and steered live by nnobs.

Run it directly (the run lives in ./runs/torch-mlp, or under --runs / $NNOBS_RUNS):

    python examples/torch_mlp.py                 # then: nnobs status torch-mlp, nnobs tail, streamlit run app.py
    python examples/torch_mlp.py --target 20000 --lr 0.003 --hidden 64

or let nnobs start it detached, so that the page's Restart starts it again:

    nnobs run torch-mlp -- python examples/torch_mlp.py

At its target the script ends, as a framework's max_steps ends training (with --wait it waits there
instead, still answering the page and the CLI, until `nnobs set --target N` makes it go on);
`nnobs stop torch-mlp`, Ctrl-C or SIGTERM end it after a final checkpoint. Started again, it
resumes from that checkpoint, with the settings the run had then (its target and learning rate,
not those given here).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

import nnobs
import nnobs.torch

BATCH_SIZE = 64
TURNS = 1.75  # of each spiral arm: enough that the net sits on a plateau for a while before it finds them


def spirals(n_per_arm: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two spirals wound into each other, n_per_arm points each: x of shape (2 * n_per_arm, 2), y of 0s and 1s."""
    t = torch.rand(n_per_arm, generator=generator) * TURNS * 2 * math.pi + 0.5  # angle along the arm
    arm = torch.stack((t * torch.cos(t), t * torch.sin(t)), dim=1) / (TURNS * 2 * math.pi)  # (n_per_arm, 2), radius ~1
    x = torch.cat((arm, -arm))  # the second arm is the first turned by half a turn
    x += noise * torch.randn(x.shape, generator=generator)
    y = torch.cat((torch.zeros(n_per_arm, dtype=torch.long), torch.ones(n_per_arm, dtype=torch.long)))
    return x, y


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="torch-mlp", help="the run's name (default: torch-mlp)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--target", type=int, default=5000, help="batches to train, then end (default: 5000)")
    parser.add_argument("--wait", action="store_true", help="at the target, wait for a higher one instead of ending")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default: 0.01)")
    parser.add_argument("--hidden", type=int, default=32, help="units in each of the two hidden layers (default: 32)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N batches a second (default: 0, flat out)")
    parser.add_argument("--seed", type=int, default=0, help="draws the data and the first weights (default: 0)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # a net this small trains faster on one thread than on many
    data = torch.Generator().manual_seed(args.seed)
    x, y = spirals(1000, noise=0.04, generator=data)
    order = torch.randperm(len(x), generator=data)
    train, test = order[:1600], order[1600:]  # 80 % to learn from, 20 % held out

    model = nn.Sequential(
        nn.Linear(2, args.hidden), nn.Tanh(),
        nn.Linear(args.hidden, args.hidden), nn.Tanh(),
        nn.Linear(args.hidden, 2),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    # The learning rate lives in the optimizer: the page's and the CLI's eta set it there.
    with nnobs.Run(args.run, trainer=nnobs.torch.attach(model, optimizer), target=args.target, pace=args.pace,
                   wait_at_target=args.wait, root=args.runs) as run:
        for batch in run.batches():
            rows = train[torch.randint(len(train), (BATCH_SIZE,), generator=data)]
            logits = model(x[rows])
            loss = loss_fn(logits, y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            metrics = {"accuracy": accuracy(logits, y[rows])}  # the learning rate in use is charted as "lr" by itself
            if run.evaluation_due():  # held-out metrics at batches spread evenly in log batches, and at the target
                with torch.no_grad():
                    logits_test = model(x[test])
                    metrics["test_loss"] = loss_fn(logits_test, y[test]).item()
                    metrics["test_accuracy"] = accuracy(logits_test, y[test])
            run.log(loss.item(), **metrics)

    with torch.no_grad():
        held_out = accuracy(model(x[test]), y[test])
    print(f"{run.run_dir.name}: stopped at batch {run.batch:,}, test accuracy {held_out:.1%}; "
          f"the run is in {run.run_dir.path.resolve()}", flush=True)


if __name__ == "__main__":
    main()
