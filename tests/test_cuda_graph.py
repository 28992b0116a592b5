"""A captured training step replays the eager one. The CUDA tests skip without a GPU (none has run them yet)."""

from __future__ import annotations

import pytest
import torch

from mlp_torch.cuda_graph import GraphedStep, training_step
from mlp_torch.models import BACKENDS, build_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def model_and_optimizer(backend: str, device: str, momentum: float = 0.9):
    model = build_model("mlp", 20, 3, [16, 8], "sigmoid", backend, seed=0).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, foreach=True)


def batches(device: str, count: int, n: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(n, 20, generator=g).to(device), torch.randint(0, 3, (n,), generator=g).to(device))
        for _ in range(count)
    ]


def test_training_step_is_zero_grad_gradients_and_an_optimizer_step() -> None:
    model, optimizer = model_and_optimizer("custom", "cpu")
    reference, reference_optimizer = model_and_optimizer("custom", "cpu")
    step = training_step(model, optimizer)
    for x, y in batches("cpu", 3):
        loss, logits = step(x, y)
        reference_optimizer.zero_grad()
        ref_loss = torch.nn.functional.cross_entropy(reference(x), y)
        ref_loss.backward()
        reference_optimizer.step()
        torch.testing.assert_close(loss, ref_loss.detach())
        assert logits.shape == (12, 3) and not logits.requires_grad
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)


def test_capture_refuses_cpu_tensors_and_no_warmup() -> None:
    model, optimizer = model_and_optimizer("builtin", "cpu")
    ((x, y),) = batches("cpu", 1)
    with pytest.raises(ValueError, match="must be on a CUDA device"):
        GraphedStep(training_step(model, optimizer), x, y)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="warmup must be at least 1"):
            GraphedStep(training_step(model, optimizer), x.cuda(), y.cuda(), warmup=0)


@needs_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_replays_train_exactly_like_eager_steps(backend: str) -> None:
    """Warm-up on the first batch, then replays on the others: the same parameters as eager steps."""
    first, *rest = batches("cuda", 5)
    eager, eager_optimizer = model_and_optimizer(backend, "cuda")
    graphed, graphed_optimizer = model_and_optimizer(backend, "cuda")
    eager_step = training_step(eager, eager_optimizer)
    for _ in range(2):
        eager_step(*first)
    replay = GraphedStep(training_step(graphed, graphed_optimizer), *first, warmup=2)
    for x, y in rest:
        eager_loss, eager_logits = eager_step(x, y)
        loss, logits = replay(x, y)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(logits, eager_logits, rtol=1e-6, atol=1e-6)
    for p, q in zip(graphed.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


@needs_cuda
def test_a_batch_of_another_shape_is_refused() -> None:
    model, optimizer = model_and_optimizer("custom", "cuda")
    ((x, y),) = batches("cuda", 1)
    replay = GraphedStep(training_step(model, optimizer), x, y, warmup=1)
    with pytest.raises(ValueError, match="captured for x"):
        replay(x[:5], y[:5])
