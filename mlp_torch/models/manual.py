"""The ``manual`` gradient path: the lecture's chain rule written out, no autograd at all.

Every function here runs on plain tensors (callers hold ``torch.no_grad()``); forward functions
return what backward needs, backward functions return gradients named ``d<name>`` after the
forward variable they belong to. Shapes: ``N`` batch, ``I`` inputs of a layer, ``O`` outputs.

One dense layer and its loss, in the slides' notation (row-vector convention, ``x`` is (N, I)):

    a = x Wᵀ + b            dW = daᵀ x      db = Σ_n da      dx = da W
    h = σ(a)                da = dh ⊙ σ'(a)

Only what backward needs is kept: each layer's input and each activation's *output* (σ', tanh'
and relu' are all functions of the output), never the pre-activation.
"""

from __future__ import annotations

import torch
from torch import Tensor

# --------------------------------------------------------------------------- dense layer


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """a = x Wᵀ + b, with Wᵀ as a transposed view (BLAS reads it in place, no copy)."""
    if bias is None:
        return torch.mm(x, weight.t())  # N,O
    return torch.addmm(bias, x, weight.t())  # N,O


def linear_backward_input(da: Tensor, weight: Tensor) -> Tensor:
    """dℓ/dx = da W."""
    return torch.mm(da, weight)  # (N,O) @ (O,I) -> N,I


def accumulate_linear_grads(da: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """Add dℓ/dW = daᵀ x and dℓ/db = Σ_n da into ``.grad``, the way ``loss.backward()`` accumulates."""
    # dW = daᵀ x: (O,N) @ (N,I) -> O,I; written straight into .grad, no temporary when it exists
    if weight.grad is None:
        weight.grad = torch.mm(da.t(), x)
    else:
        weight.grad.addmm_(da.t(), x)
    if bias is not None:
        db = da.sum(dim=0)  # O
        if bias.grad is None:
            bias.grad = db
        else:
            bias.grad.add_(db)


# --------------------------------------------------------------------------- activations


def activation_forward(name: str, a: Tensor) -> Tensor:
    """h = σ(a) / tanh(a) / max(0, a), in place: the pre-activation ``a`` is not kept."""
    if name == "sigmoid":
        return a.sigmoid_()
    if name == "tanh":
        return a.tanh_()
    if name == "relu":
        return a.relu_()
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name: str, h: Tensor, dh: Tensor) -> Tensor:
    """da = dh ⊙ f'(a), with f' written in terms of the output h = f(a); overwrites ``dh``."""
    if name == "sigmoid":
        # σ'(a) = σ(a)(1 − σ(a)) = h (1 − h)
        return dh.mul_(torch.rsub(h, 1.0).mul_(h))  # N,O
    if name == "tanh":
        # tanh'(a) = 1 − tanh²(a) = 1 − h²
        return dh.mul_(torch.rsub(h * h, 1.0))  # N,O
    if name == "relu":
        # relu'(a) = 1[a > 0] = 1[h > 0]   (0 at the kink, as torch.relu)
        return dh.masked_fill_(h <= 0, 0.0)  # N,O
    raise ValueError(f"unknown activation {name!r}")


# --------------------------------------------------------------------------- losses


def softmax_cross_entropy_with_grad(
    logits: Tensor, target: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean softmax cross-entropy and its gradient dℓ/dlogits, fused (``F.cross_entropy`` semantics).

    ℓ_n = −w_{y_n} log ŷ_{n,y_n},  ŷ = softmax(a),  ℓ = Σ_n ℓ_n / Σ_n w_{y_n}
    dℓ/da_n = w_{y_n} (ŷ_n − y_n) / Σ_n w_{y_n}            (y_n one-hot; w ≡ 1 gives (ŷ − y) / N)

    Probability targets t (N, C): ℓ = −Σ_n Σ_c w_c t_nc log ŷ_nc / N,
    dℓ/da_n = (ŷ_n Σ_c w_c t_nc − w ⊙ t_n) / N.

    Args:
        logits: (N, C) scores ``a``.
        target: (N,) int64 class indices or (N, C) probability rows.
        weight: optional (C,) per-class weights.
    """
    n = logits.shape[0]
    logp = torch.log_softmax(logits, dim=1)  # N,C  (log-sum-exp: stable at any scale)
    if target.dim() == 1:
        rows = torch.arange(n, device=logits.device)
        w_n = None if weight is None else weight[target]  # N
        nll = -logp[rows, target]  # N
        norm: Tensor | float
        if w_n is None:
            loss, norm = nll.mean(), float(n)
        else:
            norm = w_n.sum()
            loss = (w_n * nll).sum() / norm
        dlogits = logp.exp_()  # N,C  ŷ (logp is no longer needed)
        dlogits[rows, target] -= 1.0  # ŷ − y
        if w_n is not None:
            dlogits.mul_(w_n.unsqueeze(1))  # w_{y_n} (ŷ_n − y_n)
        dlogits.div_(norm)
        return loss, dlogits
    wt = target if weight is None else target * weight  # N,C  w ⊙ t
    loss = -(wt * logp).sum() / n
    dlogits = logp.exp_().mul_(wt.sum(dim=1, keepdim=True)).sub_(wt).div_(n)  # N,C
    return loss, dlogits
