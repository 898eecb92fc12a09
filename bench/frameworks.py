"""Lightning and Transformers training, bare and observed by nnobs's callback: what watching a framework costs it.

Lightning: a 784-128-10 MLP (ReLU), batches of 64, SGD, one thread, data made once in memory; the bare fit has no
callback, the observed one nnobs.lightning.Callback. Transformers: a GPT-2 of two layers (64 wide) built from a
config, sequences of 32 tokens, batches of 16, AdamW with a linear schedule, one thread; the observed one has
nnobs.transformers.Callback. Each fit runs a fixed number of steps; the clock runs from the end of the warm-up steps
to the last step's end (a timing callback in both, called before nnobs's), so the run's start and what it does at its
target (a final checkpoint) are not timed; its reports, checkpoints and answers to the control file are.

This machine's speed moves by 10 % and more between fits a few seconds apart (a shared 2-core VM), more than the
callback costs: two bare Lightning fits of 2,000 steps, one after the other, read 0.70 to 1.27 of each other
(median 0.96 over 6 pairs). So the goal's figure comes from fits in which nnobs's callback works in every other
block of 50 steps and idles in the rest (lightning_alternating): both sides see the same moments of the machine.
Whole fits in turn, bare then observed, are still measured and said beside it, as is the callback's own time per
step inside each observed fit (its hook timed with perf_counter): its share of the fit's time is what watching
costs, whatever the machine does around it.
"""

from __future__ import annotations

import importlib
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

    with tempfile.TemporaryDirectory() as root:
        callbacks, hook = fit_callbacks(Timed(), observed, "nnobs.lightning", "lightning", root, "on_train_batch_end")
        _lightning_trainer(steps, callbacks).fit(_LightningNet(), _lightning_data())
    return rate_and_share(clock, hook)


def _lightning_trainer(steps: int, callbacks: list):
    import lightning.pytorch as pl

    return pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, accelerator="cpu", callbacks=callbacks)


def _LightningNet():  # noqa: N802  (a class made where Lightning is imported)
    import lightning.pytorch as pl
    import torch

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Net()


def _lightning_data():
    import torch

    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(2048, 784, generator=generator),
                                          torch.randint(0, 10, (2048,), generator=generator))
    return torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)


class Alternation:
    """Steps in blocks of block steps, nnobs's callback working in every other block and idle in the rest, each step's
    time (from the end of the one before, its callbacks included) counted to its block's side."""

    def __init__(self, steps: int, block: int) -> None:
        self.block = block
        self.counted = range(WARM_UP, steps - 1)  # the last step's hook ends the run (a final checkpoint): not timed
        self.seconds = [0.0, 0.0]  # idle blocks, working blocks
        self.steps = [0, 0]
        self.step = 0
        self.last = 0.0

    @property
    def working(self) -> bool:
        """Whether nnobs's callback works at the step now being trained."""
        return (self.step // self.block) % 2 == 1

    def step_ended(self) -> None:
        now = time.perf_counter()
        if self.step in self.counted:
            self.seconds[self.working] += now - self.last
            self.steps[self.working] += 1
        self.last = now
        self.step += 1

    def gate(self, callback, hook: str, idle=None) -> None:
        """Call callback's hook only at working steps (on the instance, where the frameworks look it up); idle(), when
        given, at the others."""
        inner = getattr(callback, hook)

        def gated(*args, **kwargs):
            if self.working:
                return inner(*args, **kwargs)
            if idle is not None:
                idle()
            return None

        setattr(callback, hook, gated)

    def ratio(self) -> float:
        """Steps a second in working blocks / in idle ones."""
        return (self.steps[1] / self.seconds[1]) / (self.steps[0] / self.seconds[0])


# Steps of each side in turn, when a fit alternates nnobs's callback working and idle: about a tenth of a second
# each, short beside the machine's moods (a Lightning step of the MLP takes about 1.5 ms, a Transformers one 18 ms).
LIGHTNING_BLOCK = 50
TRANSFORMERS_BLOCK = 5


def lightning_alternating(steps: int) -> float:
    """One Lightning fit whose nnobs callback works in every other block of LIGHTNING_BLOCK steps: steps a second while it
    works / while it idles. Both sides see the same moments of the machine (a fit's speed moves by 10 % and more
    from one fit to the next here, as two bare fits show). An idle block's steps pay Lightning's call of a hook that
    returns at once (a microsecond); the run's clock runs on through idle blocks, so its looks at the control file
    and its clock checkpoints fall in working blocks twice as densely as in a fit observed throughout: both err
    against nnobs."""
    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    alternation = Alternation(steps, LIGHTNING_BLOCK)

    class Timed(pl.Callback):  # after nnobs's: a step's time includes its hook
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            alternation.step_ended()

    import nnobs.lightning

    with tempfile.TemporaryDirectory() as root:
        watching = nnobs.lightning.Callback("lightning", root=root)
        alternation.gate(watching, "on_train_batch_end")
        _lightning_trainer(steps, [watching, Timed()]).fit(_LightningNet(), _lightning_data())
    return alternation.ratio()


def transformers_rate(steps: int, observed: bool) -> tuple[float, float]:
    import torch
    import transformers

    torch.set_num_threads(1)
    transformers.set_seed(0)
    clock = Clock()

    class Timed(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_ended()

    model, examples = _gpt2(), _token_rows()
    with tempfile.TemporaryDirectory() as root:
        callbacks, hook = fit_callbacks(Timed(), observed, "nnobs.transformers", "transformers", root, "on_step_end")
        transformers.Trainer(model=model, args=_transformers_args(root, steps), train_dataset=examples,
                             callbacks=callbacks).train()
    return rate_and_share(clock, hook)


def transformers_alternating(steps: int) -> float:
    """lightning_alternating() for a Transformers Trainer: nnobs's on_step_end works in every other block of
    TRANSFORMERS_BLOCK steps. Its forward hook keeping each step's loss runs in both sides (a microsecond of a step of tens of ms);
    an idle step's loss is dropped."""
    import torch
    import transformers

    import nnobs.transformers

    torch.set_num_threads(1)
    transformers.set_seed(0)
    alternation = Alternation(steps, TRANSFORMERS_BLOCK)

    class Timed(transformers.TrainerCallback):  # after nnobs's: a step's time includes its hook
        def on_step_end(self, args, state, control, **kwargs):
            alternation.step_ended()

    with tempfile.TemporaryDirectory() as root:
        watching = nnobs.transformers.Callback("transformers", root=root)
        alternation.gate(watching, "on_step_end", idle=lambda: watching._losses.clear())
        transformers.Trainer(model=_gpt2(), args=_transformers_args(root, steps), train_dataset=_token_rows(),
                             callbacks=[watching, Timed()]).train()
    return alternation.ratio()


def _gpt2():
    import transformers

    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    return transformers.GPT2LMHeadModel(config)


def _token_rows() -> list:
    import torch

    starts = torch.randint(0, 64, (1024, 1), generator=torch.Generator().manual_seed(0))
    rows = (starts + torch.arange(32)) % 64
    return [{"input_ids": row, "labels": row} for row in rows]


def _transformers_args(root: str, steps: int):
    import transformers

    return transformers.TrainingArguments(
        output_dir=os.path.join(root, "out"), max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
        lr_scheduler_type="linear", warmup_steps=10, logging_steps=500, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True,
    )


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


def fit_callbacks(timed, observed: bool, module: str, name: str, root: str, hook: str) -> tuple[list, HookClock | None]:
    """A whole fit's callbacks: the step clock's, then, observed, nnobs's (module's Callback for run name), its
    per-step hook timed."""
    if not observed:
        return [timed], None
    watching = importlib.import_module(module).Callback(name, root=root)
    return [timed, watching], HookClock(watching, hook)


def rate_and_share(clock: Clock, hook: HookClock | None) -> tuple[float, float]:
    """A whole fit's steps a second, and the share of a step nnobs's hook took (0 unobserved)."""
    return clock.rate(), (hook.seconds / hook.calls * clock.rate() if hook else 0.0)


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
    for name, module, rate, alternating, block, steps, fits, pairs, what in (
        ("Lightning", "lightning", lightning_rate, lightning_alternating, LIGHTNING_BLOCK, 4000, 9, 4,
         "784-128-10 MLP, batch 64, SGD"),
        ("Transformers", "transformers", transformers_rate, transformers_alternating, TRANSFORMERS_BLOCK, 1000, 5, 3,
         "GPT-2 2x64 from a config, batch 16x32, AdamW"),
    ):
        try:
            __import__(module)
        except ImportError:
            say(f"{name} observed / bare", None, ">= 0.98", None, f"{name} not installed: pip install -e '.[test]'")
            continue
        alternating(150)  # untimed: first imports and allocations
        ratios = [alternating(steps) for _ in range(fits)]
        ratio = statistics.median(ratios)
        say(f"{name} training observed / bare", ratio, ">= 0.98", ratio >= 0.98,
            f"{what}, 1 thread, the framework's own loop; in each of {fits} {steps:,}-step fits nnobs's callback works "
            f"in every other block of {block} steps and idles in the rest; median of the fits' working/idle "
            f"steps a second ({', '.join(f'{r:.3f}' for r in sorted(ratios))})")
        whole, bare, watched, share = side_by_side(rate, steps, pairs)
        say(f"{name} whole fits in turn, observed / bare", whole, "(noise)", None,
            f"median of {pairs} pairs of {steps:,}-step fits, one after the other, best {watched:,.1f} vs "
            f"{bare:,.1f} steps/s: the machine's speed moves more from fit to fit than watching costs")
        say(f"{name} callback's own time, % of the fit", 100 * share, "<= 2", share <= 0.02,
            f"its per-step hook timed inside the observed fits (median of {pairs}): what watching costs the step")
