"""A PyTorch MLP trained by several processes at once (DistributedDataParallel), watched and steered as one run.

Every rank runs this same script and opens the same run; nothing in it asks which rank it is. Rank 0 writes the run
and reads its commands, and every command takes effect on every rank at the same batch (nnobs.training.ranks).
On CPU, with two processes:

    nnobs run torch-ddp -- torchrun --nproc_per_node=2 examples/torch_ddp.py

The loss shown is the mean over ranks; stop ends every rank, and a restart resumes every rank from the same
checkpoint. --trace PATH writes each rank's batch, learning rate in use, parameter checksum and loss to PATH.rankN.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import nnobs
import nnobs.torch

BATCH_SIZE = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="torch-ddp", help="the run's name (default: torch-ddp)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--target", type=int, default=20000, help="batches to train, then end (default: 20000)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default: 0.01)")
    parser.add_argument("--hidden", type=int, default=64, help="units in each hidden layer (default: 64)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N batches a second (default: 0)")
    parser.add_argument("--trace", metavar="PATH", help="write each rank's batch, lr, checksum and loss to PATH.rankN")
    args = parser.parse_args()

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    train(args)
    # The DDP module holds the process group: freed first, the group's threads end now, while the interpreter is whole,
    # and not at its exit, where a gloo thread still alive can abort the process after a clean stop.
    gc.collect()
    dist.destroy_process_group()


def train(args: argparse.Namespace) -> None:
    """Every rank's loop, its model and optimizer local to it, so that they are gone once it returns."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same first weights on every rank (DDP also sends rank 0's)
    # Each rank learns from its own draws of the same task: a point's class is the sign of x0 * x1.
    data = torch.Generator().manual_seed(1000 + dist.get_rank())
    model = nn.Sequential(nn.Linear(2, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 2)).to(device)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    trace = open(f"{args.trace}.rank{dist.get_rank()}", "a") if args.trace else None

    with nnobs.Run(args.run, trainer=nnobs.torch.attach(model, optimizer), target=args.target, pace=args.pace,
                   root=args.runs) as run:
        for batch in run.batches():
            x = torch.randn(BATCH_SIZE, 2, generator=data).to(device)
            y = (x[:, 0] * x[:, 1] > 0).long()
            loss = nn.functional.cross_entropy(ddp(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(loss.item())
            if trace is not None:
                checksum = sum(p.detach().double().sum().item() for p in model.parameters())
                trace.write(f"{batch} {optimizer.param_groups[0]['lr']!r} {checksum!r} {loss.item()!r}\n")
                trace.flush()


if __name__ == "__main__":
    main()
