"""A 37.8M-parameter MLP with Adam, watched and steered live by nnobs as any small one is.

    nnobs run large -- python examples/torch_large.py            # then open the page, or: nnobs status large

The data is made in memory: 10 classes of 4,096-dimensional points around random centres, new points every batch.
Its state reports are per-tensor summaries and a sample of 256 named parameters, measured where the tensors live;
its checkpoints (the model and Adam's two moments, 450 MB) are written straight from the tensors, and the kept ones
stay within --kept-mb. On a GPU it trains there (--device cuda), and the page's System view shows the GPU.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import nnobs
import nnobs.torch

WIDTHS = (4096, 4096, 4096, 1024, 10)  # 37,768,202 parameters
CLASSES = WIDTHS[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="large", help="the run's name (default: large)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--target", type=int, default=20_000, help="batches to train, then end (default: 20000)")
    parser.add_argument("--batch-size", type=int, default=8, help="points a batch (default: 8)")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate (default: 0.0001)")
    parser.add_argument("--report-every", type=int, default=2_000, help="batches between state reports")
    parser.add_argument("--kept-mb", type=float, default=256, help="disk for the kept checkpoints, MiB (default: 256)")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch's threads on a CPU (default: 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(WIDTHS, WIDTHS[1:], strict=False):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # Centres close enough, for noise this large, that telling the classes apart takes thousands of batches
    centres = 0.05 * torch.randn(CLASSES, WIDTHS[0], device=device)

    with nnobs.Run(args.run, trainer=nnobs.torch.attach(model, optimizer), target=args.target,
                   report_every=args.report_every, kept_mb=args.kept_mb, root=args.runs) as run:
        for _ in run.batches():
            y = torch.randint(CLASSES, (args.batch_size,), device=device)
            x = centres[y] + torch.randn(args.batch_size, WIDTHS[0], device=device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.log(loss.item())


if __name__ == "__main__":
    main()
