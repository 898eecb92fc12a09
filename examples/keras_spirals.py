"""A Keras 3 model (on PyTorch) learns two interleaved spirals, watched and steered live by nnobs.

    nnobs run keras-spirals -- python examples/keras_spirals.py

fit's own loop, with one callback in its place: the page shows every step's loss, what fit reports (accuracy,
val_loss, val_accuracy) and the learning rate in use under a warmup then cosine decay; Eta moves the schedule's
base, Stop ends fit at the next step, and Restart resumes from Keras's own weights file at the epoch and the place
in the data it stopped at. Needs: pip install 'nnobs[keras]'.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before Keras is imported

import keras  # noqa: E402
import torch  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402  (DataLoader, resumable mid-epoch)

import nnobs.keras  # noqa: E402

TURNS, PER_ARM, BATCH = 1.75, 800, 32


def spirals(n_per_arm: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two spirals wound into each other: points (2 * n_per_arm, 2) and their arm, 0 or 1."""
    t = torch.rand(n_per_arm, generator=generator) * TURNS * 2 * math.pi + 0.5
    arm = torch.stack((t * torch.cos(t), t * torch.sin(t)), dim=1) / (TURNS * 2 * math.pi)
    x = torch.cat((arm, -arm)) + 0.04 * torch.randn(2 * n_per_arm, 2, generator=generator)
    return x, torch.cat((torch.zeros(n_per_arm, dtype=torch.long), torch.ones(n_per_arm, dtype=torch.long)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="keras-spirals", help="the run's name (default: keras-spirals)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--epochs", type=int, default=80, help="epochs of 50 steps (default: 80)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's peak learning rate (default: 0.01)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N steps a second (default: 0, flat out)")
    parser.add_argument("--seed", type=int, default=0, help="draws the data and the first weights (default: 0)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    keras.utils.set_random_seed(args.seed)
    data = torch.Generator().manual_seed(args.seed)
    x, y = spirals(PER_ARM, data)
    x_test, y_test = spirals(200, data)
    loader = StatefulDataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    steps = args.epochs * len(loader)
    model = keras.Sequential([
        keras.Input((2,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dropout(0.05),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(2),
    ])
    schedule = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=steps, warmup_target=args.lr, warmup_steps=200)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(loader, epochs=args.epochs, validation_data=(x_test.numpy(), y_test.numpy()), verbose=0,
              callbacks=[nnobs.keras.Callback(args.run, data=loader, pace=args.pace, root=args.runs)])


if __name__ == "__main__":
    main()
