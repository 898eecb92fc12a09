"""Schedules obey eta: with a PyTorch scheduler attached, eta is the base it scales, and a new eta moves the base with
the schedule going on from where it is; the scheduler's state is in every checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler

from nnobs.training.integrations.torch import attach

BASE, NEW = 0.1, 0.03
STEPS_BEFORE, STEPS_AFTER = 20, 50
KINDS = ["warmup-then-linear", "step", "cosine", "one-cycle", "plateau"]


def made(kind: str, base: float):
    """A model, its SGD and a scheduler of kind whose base learning rate is base."""
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=base)
    if kind == "warmup-then-linear":  # the Transformers shape: LambdaLR, warmup 10 steps, then down to 0 at 200
        scheduler = lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10) * max(0.0, 1 - s / 200))
    elif kind == "step":
        scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    elif kind == "cosine":
        scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=60)
    elif kind == "one-cycle":  # its base is max_lr / div_factor (25)
        scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=base * 25, total_steps=200)
    else:
        scheduler = lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    return model, optimizer, scheduler


def step(optimizer, scheduler) -> float:
    optimizer.step()  # no gradients: nothing moves, but the order PyTorch wants is kept
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(1.0)  # a loss that never improves: the rate halves every four steps
    else:
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def stepped(kind: str, base: float):
    """made(kind, base) attached, after STEPS_BEFORE steps: the trainer, its optimizer and its scheduler."""
    model, optimizer, scheduler = made(kind, base)
    for _ in range(STEPS_BEFORE):
        step(optimizer, scheduler)
    return attach(model, optimizer, scheduler), optimizer, scheduler


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_eta_moves_the_schedules_base_and_the_schedule_goes_on(kind):
    trainer, optimizer, scheduler = stepped(kind, BASE)
    trainer.eta = NEW
    assert math.isclose(trainer.eta, NEW) or kind == "plateau", "eta reads back as the base"
    _, same_optimizer, same_schedule = stepped(kind, NEW)  # the same schedule, started with the new base
    if kind == "plateau":  # its base is the rate in use: the new eta is the rate from here
        assert math.isclose(optimizer.param_groups[0]["lr"], NEW)
        return
    assert math.isclose(trainer.lr_in_use, same_optimizer.param_groups[0]["lr"], rel_tol=1e-9)
    for at in range(STEPS_AFTER):
        ours, theirs = step(optimizer, scheduler), step(same_optimizer, same_schedule)
        assert math.isclose(ours, theirs, rel_tol=1e-9, abs_tol=1e-15), f"{kind}, step {at} after the new eta"


@pytest.mark.parametrize("kind", KINDS)
def test_the_schedule_comes_back_from_a_checkpoint_where_it_was(kind):
    trainer, optimizer, scheduler = stepped(kind, BASE)
    saved = trainer.save()
    fresh_model, fresh_optimizer, fresh_schedule = made(kind, BASE)
    attach(fresh_model, fresh_optimizer, fresh_schedule).load(saved)
    for at in range(10):
        assert math.isclose(step(optimizer, scheduler), step(fresh_optimizer, fresh_schedule), rel_tol=1e-12), at
