"""Soft targets for training: label smoothing and mixup, plain data processing on a batch.

Both turn the lecture's one-hot rows ``y = [0 … 1 … 0]`` into probability rows ``t``; the loss
is then ``ℓ_n = −Σ_c t_nc log ŷ_nc``, whose gradient is still ``dℓ/da = ŷ − t``
(:class:`~mlp_torch.functional.WeightedSoftTargetCrossEntropyFunction`, and the manual path's
``weighted_soft_target_cross_entropy``).

    label smoothing (Szegedy et al. 2016)   t = (1 − ε) y + ε / C
    mixup (Zhang et al. 2018)               λ ~ Beta(α, α),  π a random permutation of the batch
                                            x̃ = λ x + (1 − λ) x_π,   t̃ = λ t + (1 − λ) t_π

Every random number comes from the generator passed in (the run's data generator), so a run
with mixup is reproducible and resumes bit for bit like any other.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smooth_labels(y: Tensor, num_classes: int, eps: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """Class labels ``(N,)`` as probability rows ``(N, C)``: ``(1 − ε) y + ε / C`` (``ε = 0``: one-hot)."""
    one_hot = (y[:, None] == torch.arange(num_classes, device=y.device)).to(dtype)  # y, N,C
    return one_hot * (1.0 - eps) + eps / num_classes  # t, N,C


def mixup(x: Tensor, t: Tensor, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mix each row of the batch with another's: ``λ x + (1 − λ) x_π`` and ``λ t + (1 − λ) t_π``.

    One ``λ ~ Beta(α, α)`` per batch, as in the paper; the pairs come from a random permutation π.

    Args:
        x: inputs ``(N, D)``.
        t: probability rows ``(N, C)``.
        alpha: the Beta distribution's parameter, > 0 (small α: λ mostly near 0 or 1).
        generator: the only source of randomness; on ``x``'s device.
    """
    # Beta(α, α) is the first coordinate of Dirichlet(α, α); torch.distributions.Beta samples the
    # same way but cannot take a generator.
    concentration = torch.full((2,), alpha, dtype=torch.float64, device=x.device)
    lam = torch._sample_dirichlet(concentration, generator=generator)[0].to(x.dtype)  # λ, a 0-d tensor: no sync
    pi = torch.randperm(len(x), generator=generator, device=x.device)  # N
    return lam * x + (1 - lam) * x[pi], lam * t + (1 - lam) * t[pi]  # x̃ (N,D), t̃ (N,C)
