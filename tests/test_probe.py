"""A large net's reports measured where its tensors live: the same figures as the whole state vector gives, within
what measuring a large tensor on its marks costs in precision, from a real PyTorch model trained with Adam."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nnobs.torch  # noqa: E402
from nnobs.protocol.schema import MARKS_EACH, MOMENTS, SUMMARY, sample_indices, tensor_summary, update_ratios  # noqa: E402
from nnobs.training.probe import Probe  # noqa: E402


def trained_model(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Tanh(), torch.nn.Linear(200, 3))  # 60,803
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 300), torch.randint(0, 3, (64,))
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer


def test_a_large_tensors_summary_matches_the_whole_vectors_within_the_marks_precision():
    model, optimizer = trained_model()
    trainer = nnobs.torch.attach(model, optimizer)
    assert trainer.tensors[0][1] == (200, 300) and 200 * 300 > MARKS_EACH  # the first tensor is measured on marks
    probe = Probe(trainer)
    before_sv, before_marks = trainer.state_vector(), probe.marks()
    probe.summary()  # the first summary: its change is unknown (null)
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(64, 300)), torch.randint(0, 3, (64,))).backward()
    optimizer.step()

    sv = trainer.state_vector()
    exact = np.array(tensor_summary(sv, trainer.tensors, before_sv), dtype=float)
    measured = np.array(probe.summary(), dtype=float)
    assert measured.shape == exact.shape == (4, len(SUMMARY))
    moments = len(MOMENTS)
    np.testing.assert_allclose(measured[:, :moments], exact[:, :moments], rtol=1e-5, atol=1e-7)
    change = SUMMARY.index("change")
    np.testing.assert_allclose(measured[:, change], exact[:, change], rtol=0.05)  # the weight's on 8,192 marks
    np.testing.assert_allclose(measured[1:, change], exact[1:, change], rtol=1e-6)  # the rest on all of it
    stds = exact[:, SUMMARY.index("std")][:, None]
    bands = slice(change + 1, None)
    assert (np.abs(measured[:, bands] - exact[:, bands]) <= 0.05 * stds).all(), (measured[:, bands], exact[:, bands])

    ratios = probe.update_ratios(before_marks)
    exact_ratios = update_ratios(sv, before_sv, trainer.tensors)
    np.testing.assert_allclose(np.array(ratios, float), np.array(exact_ratios, float), rtol=0.05)
    np.testing.assert_array_equal(probe.sample(), sv[sample_indices(trainer.tensors)])


def test_a_nan_anywhere_is_seen_without_a_copy_of_the_model():
    model, optimizer = trained_model(1)
    trainer = nnobs.torch.attach(model, optimizer)
    assert trainer.all_finite()
    with torch.no_grad():
        model[2].weight[1, 7] = float("nan")
    assert not trainer.all_finite()
    with torch.no_grad():
        model[2].weight[1, 7] = float("inf")
    assert not trainer.all_finite()
