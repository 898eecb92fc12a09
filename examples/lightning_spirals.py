"""A Lightning model learns two interleaved spirals, watched and steered live by nnobs through one callback.

    nnobs run lightning-spirals -- python examples/lightning_spirals.py

The run's page shows every step's loss, what the model logs (train_acc, val_loss, val_acc) and the learning rate
in use under its warmup-then-decay schedule; Eta moves the schedule's base, Stop ends the fit at the next step with
Lightning's own teardown, and Restart resumes from Lightning's own checkpoint at the step it stopped at, with the
schedule, the random state and the place in the data as they were. Needs: pip install 'nnobs[lightning]'.
"""

from __future__ import annotations

import argparse
import math

import lightning.pytorch as pl
import torch
from torch import nn
from torchdata.stateful_dataloader import StatefulDataLoader  # DataLoader, resumable mid-epoch

import nnobs.lightning

TURNS = 1.75  # of each spiral arm


def spirals(n_per_arm: int, noise: float, generator: torch.Generator) -> torch.utils.data.TensorDataset:
    """Two spirals wound into each other: points (2 * n_per_arm, 2) and their arm, 0 or 1."""
    t = torch.rand(n_per_arm, generator=generator) * TURNS * 2 * math.pi + 0.5
    arm = torch.stack((t * torch.cos(t), t * torch.sin(t)), dim=1) / (TURNS * 2 * math.pi)
    x = torch.cat((arm, -arm)) + noise * torch.randn(2 * n_per_arm, 2, generator=generator)
    y = torch.cat((torch.zeros(n_per_arm, dtype=torch.long), torch.ones(n_per_arm, dtype=torch.long)))
    return torch.utils.data.TensorDataset(x, y)


class SpiralNet(pl.LightningModule):
    def __init__(self, hidden: int, lr: float, warmup: int, steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Dropout(0.05),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 2),
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        warmup, steps = self.hparams.warmup, self.hparams.steps

        def factor(step: int) -> float:  # linear warmup, then linear decay to a tenth
            return (step + 1) / warmup if step < warmup else max(0.1, 1 - 0.9 * (step - warmup) / max(1, steps - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="lightning-spirals", help="the run's name (default: lightning-spirals)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--steps", type=int, default=6000, help="training steps: the run's target (default: 6000)")
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW's peak learning rate (default: 0.01)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N steps a second (default: 0, flat out)")
    parser.add_argument("--fail-at", type=int, default=0, help="raise an error in the training step at this step")
    parser.add_argument("--seed", type=int, default=0, help="draws the data and the first weights (default: 0)")
    args = parser.parse_args()

    pl.seed_everything(args.seed, verbose=False)
    torch.set_num_threads(1)  # a net this small trains faster on one thread
    data = torch.Generator().manual_seed(args.seed)
    train, test = spirals(800, 0.04, data), spirals(200, 0.04, data)
    model = SpiralNet(hidden=32, lr=args.lr, warmup=200, steps=args.steps)
    if args.fail_at:
        step = model.training_step

        def failing_step(batch, batch_idx):
            if model.global_step >= args.fail_at:
                raise RuntimeError(f"the training step failed at step {model.global_step}")
            return step(batch, batch_idx)

        model.training_step = failing_step  # type: ignore[method-assign]

    trainer = pl.Trainer(
        max_steps=args.steps,
        val_check_interval=100,
        check_val_every_n_epoch=None,
        callbacks=[nnobs.lightning.Callback(args.run, pace=args.pace, root=args.runs)],
        logger=False,
        enable_checkpointing=False,  # the run keeps Lightning's checkpoints
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(
        model,
        StatefulDataLoader(train, batch_size=32, shuffle=True),
        StatefulDataLoader(test, batch_size=400),
    )


if __name__ == "__main__":
    main()
