"""The one finite-difference implementation behind ``gradcheck`` and ``compare``."""

from __future__ import annotations

import pytest
import torch

from mlp_torch.finite_difference import FOUR_POINT, TWO_POINT, derivative, values_along


def test_each_stencil_has_the_truncation_error_of_its_order() -> None:
    """Truncation errors as the orders predict: two-point h² f'''/6, four-point −h⁴ f⁽⁵⁾/30 (0 for a cubic)."""
    theta = torch.tensor([0.3, -1.2], dtype=torch.float64)
    h = 1e-2

    def cubic() -> torch.Tensor:
        return theta[1] ** 3

    def quintic() -> torch.Tensor:
        return theta[1] ** 5

    exact3, exact5 = 3 * 1.2**2, 5 * 1.2**4
    two, four = derivative(cubic, theta, 1, h, TWO_POINT), derivative(cubic, theta, 1, h, FOUR_POINT)
    assert two.item() == pytest.approx(exact3 + h**2, abs=1e-12)  # truncation error h² f'''/6 = h²
    assert four.item() == pytest.approx(exact3, abs=1e-12)
    # quintic: the four-point error is −h⁴ f⁽⁵⁾/30 = −4 h⁴
    assert derivative(quintic, theta, 1, h, FOUR_POINT).item() == pytest.approx(exact5 - 4 * h**4, abs=1e-11)
    assert torch.equal(theta, torch.tensor([0.3, -1.2], dtype=torch.float64))


def test_a_vector_valued_function_gives_a_jacobian_column() -> None:
    theta = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)

    def f() -> torch.Tensor:
        return torch.stack([theta.sum(), (theta**2).sum()])

    column = derivative(f, theta, 2, 1e-6, TWO_POINT)  # ∂/∂θ[1, 0]
    torch.testing.assert_close(column, torch.tensor([1.0, 6.0], dtype=torch.float64), rtol=1e-8, atol=1e-8)


def test_the_moved_entry_is_restored_even_when_f_fails() -> None:
    theta = torch.tensor([1.0, 2.0, 3.0])
    seen: list[float] = []

    def f() -> float:
        seen.append(theta[1].item())
        if len(seen) == 3:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError, match="boom"):
        values_along(f, theta, 1, 0.5, FOUR_POINT)
    assert seen == [3.0, 2.5, 1.5]  # θ + 2h, θ + h, θ − h
    assert torch.equal(theta, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="contiguous"):
        values_along(f, torch.zeros(3, 2).t(), 0, 0.1, TWO_POINT)
