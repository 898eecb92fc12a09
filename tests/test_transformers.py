"""A real Transformers Trainer (warmup, then linear decay) in a real process under `nnobs run`, watched and steered
through nnobs.transformers.Callback: a tiny GPT-2 built from a config, learning synthetic token sequences."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers", reason="the Transformers tests need the test extra's Transformers")

from conftest import batch_passes
from framework_support import (
    killed_or_failing_reads_crashed,
    resumes_with_the_losses_of_one_never_stopped,
    scripts_fixture,
    shows_its_loss_and_metrics,
    stops_with_exit_0,
    takes_eta_through_its_schedule,
    warmup_then_linear,
)

WARMUP, STEPS = 100, 10_000

# As a Transformers user writes it: the callback in the Trainer's place, its checkpoint given to train(). The test's
# own callback and hook write each step's learning rate in use and loss to a trace file.
SCRIPT = f"""
import sys
import torch
import transformers
import nnobs.transformers

trace_path, target, pace, fail_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
transformers.set_seed(0)
config = transformers.GPT2Config(vocab_size=32, n_positions=16, n_embd=32, n_layer=2, n_head=2)
model = transformers.GPT2LMHeadModel(config)
data = torch.Generator().manual_seed(0)
starts = torch.randint(0, 32, (512, 1), generator=data)
tokens = (starts + torch.arange(16)) % 32  # counting sequences: each token the one before plus one
examples = [{{"input_ids": row, "labels": row}} for row in tokens]


class Trace(transformers.TrainerCallback):
    def __init__(self):
        self.file, self.step = open(trace_path, "a"), 0

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.step, self.optimizer = state.global_step, optimizer
        if fail_at and state.global_step >= fail_at:
            raise RuntimeError(f"the tokenizer failed at step {{state.global_step}}")

    def forward_done(self, module, inputs, outputs):
        if module.training:
            lr = self.optimizer.param_groups[0]["lr"]
            self.file.write(f"{{self.step}} {{lr!r}} {{outputs.loss.item()!r}}\\n")
            self.file.flush()


trace = Trace()
model.register_forward_hook(trace.forward_done)
args = transformers.TrainingArguments(
    output_dir="out", max_steps=target if target < {STEPS} else {STEPS}, per_device_train_batch_size=16,
    learning_rate=0.01, lr_scheduler_type="linear", warmup_steps={WARMUP}, logging_steps=50, eval_strategy="steps",
    eval_steps=50, save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True,
)
watch = nnobs.transformers.Callback(pace=pace)
trainer = transformers.Trainer(model=model, args=args, train_dataset=examples, eval_dataset=examples[:64],
                               callbacks=[watch, trace])
trainer.train(resume_from_checkpoint=watch.resume_from_checkpoint)
print("train returned; exit 0", flush=True)
"""


factor = warmup_then_linear(WARMUP, STEPS)


scripts = scripts_fixture(SCRIPT)


def test_a_trainer_shows_its_loss_and_metrics_takes_eta_through_warmup_and_decay_and_stops(scripts, runs_root, monkeypatch):
    run, trace = scripts.start("transformers", STEPS, pace=40)
    batch_passes(run, 160, what="160 steps", timeout=180)
    shows_its_loss_and_metrics(run, runs_root, {"eval_loss", "grad_norm"}, eta=0.01, target=STEPS, monkeypatch=monkeypatch)
    takes_eta_through_its_schedule(run, trace, runs_root, factor, new=0.002, rel=1e-9)
    stops_with_exit_0(run, runs_root)


def test_a_restarted_trainer_resumes_at_its_step_with_the_losses_of_one_never_stopped(scripts):
    resumes_with_the_losses_of_one_never_stopped(scripts, length=300, target=300, pace=30, stop_after=90)


def test_a_trainer_killed_or_failing_reads_crashed(scripts):
    killed_or_failing_reads_crashed(scripts, STEPS, "the tokenizer failed at step 30")


def test_a_trainer_ended_at_an_evaluation_step_resumes_with_the_losses_of_one_never_stopped(scripts):
    # The evaluation after that step (eval_steps=50) draws its loader's seed from PyTorch's random state before the
    # next step, stopped there or not: the run's last checkpoint is taken after it.
    resumes_with_the_losses_of_one_never_stopped(scripts, length=300, target=300, pace=30, stop_after=0, ends_at=100)
