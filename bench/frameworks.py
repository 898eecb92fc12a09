"""Lightning and Transformers training, bare and observed by nnobs's callback: what watching a framework costs it.

Lightning: a 784-128-10 MLP (ReLU), batches of 64, SGD, one thread, data made once in memory; the bare fit has no
callback, the observed one nnobs.lightning.Callback. Transformers: a GPT-2 of two layers (64 wide) built from a
config, sequences of 32 tokens, batches of 16, AdamW with a linear schedule, one thread; the observed one has
nnobs.transformers.Callback. Each fit runs a fixed number of steps; the clock runs from the end of the warm-up steps
to the last step's end (a timing callback in both, called before nnobs's), so the run's start and what it does at its
target (a final checkpoint) are not timed; its reports, checkpoints and answers to the control file are.

This machine's speed moves by 10 % and more between fits a few seconds apart (a shared 2-core VM), more than the
callback costs. So fits alternate, bare then observed, in many short pairs, and the ratio is the median of the pairs'
ratios (a pair's two fits share the machine's mood); the best of each is said beside it. Inside each observed fit
the callback's own time per step is also measured (its hooks timed with perf_counter): its share of the fit's time
is what watching costs, whatever the machine does around it.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings

WARM_UP = 30  # steps before the clock starts


class Clock:
    """Seconds from the end of step WARM_UP to the end of the last step."""

    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def step_ended(self) -> None:
        self.steps += 1
        now = time.perf_counter()
        if self.steps == WARM_UP:
            self.start = now
        self.end = now

    def rate(self) -> float:
        return (self.steps - WARM_UP) / (self.end - self.start)


def lightning_rate(steps: int, observed: bool) -> tuple[float, float]:
    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    clock = Clock()

    class Timed(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.step_ended()

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(2048, 784, generator=generator),
                                          torch.randint(0, 10, (2048,), generator=generator))
    with tempfile.TemporaryDirectory() as root:
        callbacks: list = [Timed()]
        hook = None
        if observed:
            import nnobs.lightning

            callbacks.append(nnobs.lightning.Callback("lightning", root=root))
            hook = HookClock(callbacks[-1], "on_train_batch_end")
        trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", callbacks=callbacks)
        trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=64, shuffle=True))
    return clock.rate(), (hook.seconds / hook.calls * clock.rate() if hook else 0.0)


def transformers_rate(steps: int, observed: bool) -> tuple[float, float]:
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.set_seed(0)
    clock = Clock()

    class Timed(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_ended()

    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    starts = torch.randint(0, 64, (1024, 1), generator=torch.Generator().manual_seed(0))
    rows = (starts + torch.arange(32)) % 64
    examples = [{"input_ids": row, "labels": row} for row in rows]
    with tempfile.TemporaryDirectory() as root:
        callbacks: list = [Timed()]
        hook = None
        if observed:
            import nnobs.transformers

            callbacks.append(nnobs.transformers.Callback("transformers", root=root))
            hook = HookClock(callbacks[-1], "on_step_end")
        args = transformers.TrainingArguments(
            output_dir=os.path.join(root, "out"), max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
            lr_scheduler_type="linear", warmup_steps=10, logging_steps=500, save_strategy="no", report_to=[],
            use_cpu=True, disable_tqdm=True,
        )
        transformers.Trainer(model=model, args=args, train_dataset=examples, callbacks=callbacks).train()
    return clock.rate(), (hook.seconds / hook.calls * clock.rate() if hook else 0.0)


class HookClock:
    """Seconds spent inside a callback's per-step hook, wrapped on the instance (frameworks look hooks up there)."""

    def __init__(self, callback, hook: str):
        self.seconds, self.calls = 0.0, 0
        inner = getattr(callback, hook)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1

        setattr(callback, hook, timed)


def side_by_side(rate, steps: int, pairs: int) -> tuple[float, float, float, float]:
    """(median of the pairs' observed/bare ratios, best bare, best observed, the callback's median share of a fit)."""
    ratios, shares, bare, watched = [], [], 0.0, 0.0
    for _ in range(pairs):
        plain, (observed, share) = rate(steps, observed=False)[0], rate(steps, observed=True)
        ratios.append(observed / plain)
        shares.append(share)
        bare, watched = max(bare, plain), max(watched, observed)
    return statistics.median(ratios), bare, watched, statistics.median(shares)


def figures(say) -> None:
    warnings.filterwarnings("ignore")
    for name, module, rate, steps, pairs, what in (
        ("Lightning", "lightning", lightning_rate, 6000, 8, "784-128-10 MLP, batch 64, SGD"),
        ("Transformers", "transformers", transformers_rate, 1000, 5, "GPT-2 2x64 from a config, batch 16x32, AdamW"),
    ):
        try:
            __import__(module)
        except ImportError:
            say(f"{name} observed / bare", None, ">= 0.98", None, f"{name} not installed: pip install -e '.[test]'")
            continue
        ratio, bare, watched, share = side_by_side(rate, steps, pairs)
        say(f"{name} training observed / bare", ratio, ">= 0.98", ratio >= 0.98,
            f"median of {pairs} alternating pairs of {steps:,}-step fits, {what}, 1 thread, the framework's own loop "
            f"with and without nnobs's callback; best {watched:,.1f} vs {bare:,.1f} steps/s")
        say(f"{name} callback's own time, % of the fit", 100 * share, "<= 2", share <= 0.02,
            f"its per-step hook timed inside the observed fits (median of {pairs}): what watching costs the step")
