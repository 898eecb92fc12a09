"""A tiny GPT-2, built from a config (no download), learns to count, watched and steered live by nnobs.

    nnobs run gpt2-counting -- python examples/transformers_counting.py

The Trainer's own loop, with one callback in its place: the page shows every step's loss, what the Trainer logs
(eval_loss, grad_norm) and the learning rate in use under its warmup then linear decay; Eta moves the schedule's
base, Stop ends training at the next step with the Trainer's own end, and Restart resumes through the Trainer's own
resume_from_checkpoint at the step it stopped at. Needs: pip install 'nnobs[transformers]'.
"""

from __future__ import annotations

import argparse

import torch
import transformers

import nnobs.transformers

VOCAB, LENGTH = 64, 32


def counting(n: int, generator: torch.Generator) -> list[dict]:
    """Sequences that count up from a random start (mod VOCAB): the next token is always the last plus one."""
    starts = torch.randint(0, VOCAB, (n, 1), generator=generator)
    tokens = (starts + torch.arange(LENGTH)) % VOCAB
    return [{"input_ids": row, "labels": row} for row in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="gpt2-counting", help="the run's name (default: gpt2-counting)")
    parser.add_argument("--runs", metavar="DIR", help="the runs root (default: $NNOBS_RUNS, else ./runs)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps: the run's target (default: 3000)")
    parser.add_argument("--lr", type=float, default=0.003, help="the peak learning rate (default: 0.003)")
    parser.add_argument("--pace", type=float, default=0.0, help="train at most N steps a second (default: 0, flat out)")
    parser.add_argument("--seed", type=int, default=0, help="draws the data and the first weights (default: 0)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    transformers.set_seed(args.seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=LENGTH, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    data = torch.Generator().manual_seed(args.seed)
    training = transformers.TrainingArguments(
        output_dir="gpt2-counting-out", max_steps=args.steps, per_device_train_batch_size=16, learning_rate=args.lr,
        lr_scheduler_type="linear", warmup_steps=200, logging_steps=50, eval_strategy="steps", eval_steps=100,
        save_strategy="no", report_to=[], seed=args.seed, use_cpu=True, disable_tqdm=True,
    )
    # A model over 10,000 parameters reports its state every report_every steps: every 100 shows its layers move
    # within the first minute at a watchable pace (the default, 2,000, suits a model trained flat out).
    watch = nnobs.transformers.Callback(args.run, pace=args.pace, report_every=100, root=args.runs)
    trainer = transformers.Trainer(model=model, args=training, train_dataset=counting(4096, data),
                                   eval_dataset=counting(128, data), callbacks=[watch])
    trainer.train(resume_from_checkpoint=watch.resume_from_checkpoint)


if __name__ == "__main__":
    main()
