"""``StepStats``: what a step measured, its gradient norms fast in float32 yet never overflowing."""

from __future__ import annotations

import math

import pytest
import torch

from mlp_torch.models import build_model
from mlp_torch.training.state import StepStats


def measured(device: str, scale: float) -> tuple[StepStats, list[float]]:
    model = build_model("mlp", in_features=12, num_classes=3, hidden=[5], backend="builtin", seed=0).to(device)
    x, y = torch.randn(8, 12, device=device), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1], device=device)
    loss, logits = model.compute_gradients(x, y)
    for p in model.parameters():
        p.grad.mul_(scale)
    exact = [sum(p.grad.double().square().sum().item() for p in layer.parameters()) for layer in model.layers]
    return StepStats.measure(model, loss, logits, y), exact


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e25])
def test_grad_sq_is_the_float64_sum_of_squares(device, scale):
    """1e25: every g² overflows float32, yet the gradient is finite and must not read as diverged."""
    stats, exact = measured(device, scale)
    assert stats.samples == 8 and 0 <= stats.correct <= 8 and math.isfinite(stats.loss)
    assert all(math.isfinite(sq) for sq in stats.grad_sq)
    assert stats.grad_sq == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_non_finite_gradient_reads_as_one(device, bad):
    model = build_model("mlp", in_features=4, num_classes=2, hidden=[3], backend="builtin", seed=0).to(device)
    x, y = torch.randn(4, 4, device=device), torch.tensor([0, 1, 0, 1], device=device)
    loss, logits = model.compute_gradients(x, y)
    model.layers[1].weight.grad[0, 0] = bad
    stats = StepStats.measure(model, loss, logits, y)
    assert math.isfinite(stats.grad_sq[0]) and not math.isfinite(stats.grad_sq[1])
