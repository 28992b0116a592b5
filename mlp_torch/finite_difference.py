"""Centred finite differences: the one implementation behind ``gradcheck`` and ``compare``.

A derivative is estimated from values of ``f`` at points moved along one coordinate ``θ_k``:

    two-point   ∂f/∂θ_k ≈ (f(θ + h e_k) − f(θ − h e_k)) / 2h                              error ∝ h²
    four-point  ∂f/∂θ_k ≈ (−f(θ + 2h e_k) + 8 f(θ + h e_k) − 8 f(θ − h e_k) + f(θ − 2h e_k)) / 12h
                                                                                          error ∝ h⁴

Each also carries a rounding error ∝ ε |f| / h (ε the dtype's precision), so a smaller
truncation error lets ``h`` grow and the total fall: in float64 the two-point quotient bottoms out
near 1e-10, the four-point one near 1e-13 (what the tiny first-layer gradients of a deep sigmoid
net need; see :mod:`mlp_torch.compare`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class Stencil:
    """``∂f/∂θ_k ≈ Σ_i c_i f(θ + o_i h e_k) / (d h)`` with integer offsets ``o``, weights ``c`` and divisor ``d``."""

    offsets: tuple[int, ...]
    weights: tuple[int, ...]
    divisor: int


TWO_POINT = Stencil(offsets=(1, -1), weights=(1, -1), divisor=2)
FOUR_POINT = Stencil(offsets=(2, 1, -1, -2), weights=(-1, 8, -8, 1), divisor=12)


def values_along(f: Callable[[], T], theta: Tensor, k: int, h: float, stencil: Stencil) -> list[T]:
    """``f()`` with ``theta.view(-1)[k]`` moved to ``θ_k + o h`` for each offset ``o`` of the stencil.

    ``theta`` is changed in place while ``f`` runs (so ``f`` may read it through a model) and is
    restored exactly afterwards, also when ``f`` raises.
    """
    if not theta.is_contiguous():
        raise ValueError("finite differences move entries of a contiguous tensor")
    flat = theta.view(-1)
    original = flat[k].item()
    values = []
    try:
        for offset in stencil.offsets:
            flat[k] = original + offset * h
            values.append(f())
    finally:
        flat[k] = original
    return values


def quotient(values: Sequence[Tensor], h: float, stencil: Stencil) -> Tensor:
    """``Σ_i c_i v_i / (d h)``: the derivative estimate from :func:`values_along`'s values."""
    total = values[0] * stencil.weights[0]
    for weight, value in zip(stencil.weights[1:], values[1:]):
        total = total + weight * value
    return total / (stencil.divisor * h)


def derivative(f: Callable[[], Tensor], theta: Tensor, k: int, h: float, stencil: Stencil) -> Tensor:
    """``∂f/∂θ_k`` by centred differences (``f`` may return any tensor: one column of a Jacobian)."""
    return quotient(values_along(f, theta, k, h, stencil), h, stencil)
