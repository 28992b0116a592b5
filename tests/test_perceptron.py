"""Rosenblatt's perceptron: convergence within the mistake bound, and SGD on the criterion is the rule."""

from __future__ import annotations

import pytest
import torch

from mlp_torch.data import DataOptions, Standardizer, load_data
from mlp_torch.models import BACKENDS, Perceptron


def separable_binary(n: int, dim: int, gamma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points with |u·x| ≥ γ for a unit vector u, labelled 1[u·x > 0]; returns x, y, u."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(dim, generator=g, dtype=torch.float64)
    u /= u.norm()
    x = torch.randn(4 * n, dim, generator=g, dtype=torch.float64)
    margin = x @ u
    keep = margin.abs() >= gamma
    x, margin = x[keep][:n], margin[keep][:n]
    return x, (margin > 0).long(), u


def separable_multiclass(n: int, dim: int, classes: int, gamma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points whose best class under a unit-norm W* (‖W*‖_F = 1) beats every other by ≥ γ."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    w_star /= w_star.norm()
    x = torch.randn(20 * n, dim, generator=g, dtype=torch.float64)
    scores = x @ w_star.T  # N,C
    top2 = scores.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] >= gamma
    return x[keep][:n], scores[keep][:n].argmax(dim=1)


def test_binary_perceptron_converges_within_the_mistake_bound() -> None:
    gamma = 0.5
    x, y, _ = separable_binary(400, 10, gamma, seed=0)
    assert len(x) == 400
    model = Perceptron(10, 2).double()
    mistakes = model.fit(x, y, epochs=1000, lr=1.0)
    # Novikoff (1962): at most (R/γ)² mistakes. The bias is a weight on a constant input 1, so R
    # is the radius of the augmented points (x, 1); the separator (u, 0) keeps margin γ.
    radius = (x.norm(dim=1).max() ** 2 + 1).sqrt().item()
    assert mistakes[-1] == 0
    assert 0 < sum(mistakes) <= (radius / gamma) ** 2
    assert torch.equal(model.predict(x), y)
    assert torch.equal(model(x).argmax(dim=1), y)  # binary logits [0, a] agree with step(a)


def test_multiclass_perceptron_separates_three_classes_within_its_bound() -> None:
    gamma = 0.1
    x, y = separable_multiclass(300, 8, 3, gamma, seed=1)
    assert len(x) == 300 and set(y.tolist()) == {0, 1, 2}
    model = Perceptron(8, 3).double()
    mistakes = model.fit(x, y, epochs=1000)
    # Each mistake raises ⟨W*, W⟩ by ≥ γ and ‖W‖² by ≤ 2R² (W[y] += x, W[ŷ] −= x), so k ≤ 2(R/γ)².
    radius = (x.norm(dim=1).max() ** 2 + 1).sqrt().item()
    assert mistakes[-1] == 0
    assert sum(mistakes) <= 2 * (radius / gamma) ** 2
    assert torch.equal(model.predict(x), y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_sgd_on_the_perceptron_criterion_is_the_perceptron_rule(num_classes: int, backend: str) -> None:
    if num_classes == 2:
        x, y, _ = separable_binary(60, 5, 0.2, seed=2)
    else:
        x, y = separable_multiclass(60, 5, 3, 0.05, seed=3)
    lr = 0.5
    rule = Perceptron(5, num_classes).double()
    rule.fit(x, y, epochs=1, lr=lr)
    sgd = Perceptron(5, num_classes, backend=backend).double()
    optimizer = torch.optim.SGD(sgd.parameters(), lr=lr)
    for n in range(len(x)):  # batches of one sample, in the same order
        optimizer.zero_grad()
        sgd.compute_gradients(x[n : n + 1], y[n : n + 1])
        optimizer.step()
    for p, q in zip(sgd.parameters(), rule.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    assert rule.layers[0].weight.abs().sum() > 0


def test_criterion_is_zero_exactly_when_every_prediction_is_right() -> None:
    x, y, u = separable_binary(50, 4, 0.3, seed=4)
    model = Perceptron(4, 2).double()
    with torch.no_grad():
        model.layers[0].weight.copy_(u[None])
    for backend in BACKENDS:
        model.zero_grad(set_to_none=True)
        loss, _ = model.compute_gradients(x, y, backend=backend)
        assert loss.item() == 0.0
        assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
    with torch.no_grad():
        model.layers[0].weight.neg_()  # now every prediction is wrong
    loss, _ = model.compute_gradients(x, y)
    assert loss.item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_perceptron_trains_on_image_classes(backend: str) -> None:
    bundle = load_data(
        DataOptions(
            dataset="synthetic", image_size=8, synthetic_train_per_class=200, synthetic_test_per_class=100, cache=False
        )
    )
    standardize = Standardizer.fit(bundle.train.x)
    x, y = standardize(bundle.train.x), bundle.train.y
    x_test, y_test = standardize(bundle.test.x), bundle.test.y
    model = Perceptron(bundle.in_features, bundle.num_classes, backend=backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        for batch in torch.randperm(len(y), generator=g).split(16):
            optimizer.zero_grad()
            model.compute_gradients(x[batch], y[batch])
            optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).double().mean().item()
    assert accuracy > 1.5 / bundle.num_classes  # chance is 1/3
