"""The ``manual`` gradient path: the lecture's chain rule written out, no autograd at all.

In the style of llm.c's ``layernorm.py``: each op is a ``*_forward`` that returns its output and
a cache, and a ``*_backward`` that takes the gradient of that output and the cache and returns
the gradients of the op's inputs, named ``d<name>`` after the forward variable they belong to.
Everything runs on plain tensors (callers hold ``torch.no_grad()``), and nothing overwrites a
tensor its caller passed in. Shapes: ``N`` batch, ``I`` inputs of a layer, ``O`` its outputs
(``H`` for a hidden layer's). Names as in :mod:`mlp_torch.functional`: ``a`` is a linear map's
output (the pre-activation), ``h = f(a)`` an activation's output.

One dense layer and its loss, in the slides' notation (row-vector convention, ``x`` is (N, I)):

    a = x Wᵀ + b            dW = daᵀ x      db = Σ_n da      dx = da W
    h = σ(a)                da = dh ⊙ σ'(a) = dh ⊙ h ⊙ (1 − h)
    ŷ = softmax(a)          dℓ/da = (ŷ − y) / N              (ℓ the mean cross-entropy)
    ŷ = σ(p)                dℓ/dp = (ŷ − y) / N              (one output unit p, binary cross-entropy)

Only what backward needs is cached: each layer's input and weight, and each activation's
*output* (σ', tanh' and relu' are all functions of the output), never the pre-activation.

Under ``torchrun`` each process runs this on its rows of the batch and the trainer then
all-reduces ``.grad`` explicitly (:mod:`mlp_torch.training.distributed`): the whole batch's
gradient is the mean of the processes' gradients, weighted by their rows, and the autograd hooks
through which ``DistributedDataParallel`` averages would never fire here, as nothing here is autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

LinearCache = tuple[Tensor, Tensor]  # (x, W)

# --------------------------------------------------------------------------- dense layer


def linear_forward(x: Tensor, W: Tensor, b: Tensor) -> tuple[Tensor, LinearCache]:
    """a = x Wᵀ + b; the cache is (x, W)."""
    a = torch.addmm(b, x, W.t())  # N,I @ I,O + O -> N,O  (Wᵀ is a view: BLAS reads it in place)
    return a, (x, W)


def linear_backward(da: Tensor, cache: LinearCache, need_dx: bool = True) -> tuple[Tensor | None, Tensor, Tensor]:
    """(dx, dW, db) from da = dℓ/da; ``need_dx=False`` skips dx (the first layer's, nobody's)."""
    x, W = cache
    dx = da @ W if need_dx else None  # N,O @ O,I -> N,I
    dW = da.t() @ x  # O,N @ N,I -> O,I
    db = da.sum(dim=0)  # O
    return dx, dW, db


def accumulate_grad(param: Tensor, grad: Tensor) -> None:
    """``param.grad += grad``, the way ``loss.backward()`` accumulates (it assigns when there is none)."""
    if param.grad is None:
        param.grad = grad
    else:
        param.grad += grad


# --------------------------------------------------------------------------- activations
# h = f(a) and da = dh ⊙ f'(a), with f' written in terms of the output h; the cache is h.
# Backward multiplies in place into the first tensor it creates itself, never into dh or h.


def sigmoid_forward(a: Tensor) -> tuple[Tensor, Tensor]:
    """h = σ(a) = 1 / (1 + e^{−a})."""
    h = torch.sigmoid(a)  # N,H
    return h, h


def sigmoid_backward(dh: Tensor, cache: Tensor) -> Tensor:
    """σ'(a) = σ(a)(1 − σ(a)) = h (1 − h)."""
    h = cache  # N,H
    return (1 - h).mul_(h).mul_(dh)  # da = (1 − h) ⊙ h ⊙ dh, N,H  (one new tensor, not three)


def tanh_forward(a: Tensor) -> tuple[Tensor, Tensor]:
    """h = tanh(a)."""
    h = torch.tanh(a)  # N,H
    return h, h


def tanh_backward(dh: Tensor, cache: Tensor) -> Tensor:
    """tanh'(a) = 1 − tanh²(a) = 1 − h²."""
    h = cache  # N,H
    return (1 - h * h).mul_(dh)  # da = (1 − h²) ⊙ dh, N,H


def relu_forward(a: Tensor) -> tuple[Tensor, Tensor]:
    """h = max(0, a)."""
    h = torch.relu(a)  # N,H
    return h, h


def relu_backward(dh: Tensor, cache: Tensor) -> Tensor:
    """relu'(a) = 1[a > 0] = 1[h > 0]   (0 at the kink, as torch.relu)."""
    h = cache  # N,H
    return dh * (h > 0)  # da = dh ⊙ 1[h > 0], N,H


# --------------------------------------------------------------------------- losses


def softmax_cross_entropy(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The lecture's loss and its gradient, fused: ℓ = −mean_n log ŷ_{n,y_n} and dℓ/da = (ŷ − y) / N.

    Args:
        logits: (N, C) scores ``a``.
        y: (N,) int64 class indices.
    """
    n = logits.shape[0]
    rows = torch.arange(n, device=logits.device)  # N
    log_y_hat = torch.log_softmax(logits, dim=1)  # N,C  (log-sum-exp: stable at any scale)
    loss = -log_y_hat[rows, y].mean()  # ℓ = −mean_n log ŷ_{n,y_n}
    # makemore's three lines: ŷ, minus 1 at the label, over N
    dlogits = log_y_hat.exp()  # ŷ = softmax(a), N,C
    dlogits[rows, y] -= 1  # ŷ − y
    dlogits /= n  # (ŷ − y) / N
    return loss, dlogits


def weighted_soft_target_cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The general case, with ``F.cross_entropy``'s semantics: class weights and/or probability targets.

    With target rows t = w ⊙ y (weighted one-hot) or w ⊙ p (weighted probabilities), (N, C):

        ℓ_n = −Σ_c t_nc log ŷ_nc          dℓ_n/da_n = ŷ_n Σ_c t_nc − t_n
        ℓ = Σ_n ℓ_n / Σ_n w_{y_n} for class labels, Σ_n ℓ_n / N for probability rows

    Args:
        logits: (N, C) scores ``a``.
        target: (N,) int64 class indices or (N, C) probability rows.
        weight: optional (C,) per-class weights.
    """
    n, num_classes = logits.shape
    if target.dim() == 1:
        t = torch.nn.functional.one_hot(target, num_classes).to(logits.dtype)  # y, N,C
        if weight is not None:
            t *= weight  # w ⊙ y
        norm: Tensor | int = t.sum()  # Σ_n w_{y_n}
    else:
        t = target if weight is None else target * weight  # w ⊙ p, N,C
        norm = n
    log_y_hat = torch.log_softmax(logits, dim=1)  # N,C
    loss = -(t * log_y_hat).sum() / norm
    dlogits = (log_y_hat.exp() * t.sum(dim=1, keepdim=True) - t) / norm  # N,C
    return loss, dlogits


def sigmoid_binary_cross_entropy(p: Tensor, y: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One sigmoid output unit and its loss, fused: ℓ = −mean_n [y log ŷ + (1 − y) log(1 − ŷ)] and dℓ/dp = (ŷ − y) / N.

    With class weights, F.cross_entropy's convention: ℓ = Σ_n w_{y_n} ℓ_n / Σ_n w_{y_n} and
    dℓ/dp_n = w_{y_n} (ŷ_n − y_n) / Σ_n w_{y_n}.

    Args:
        p: (N,) scores of the output unit, ŷ = σ(p).
        y: (N,) int64 labels, 0 or 1.
        weight: optional (2,) per-class weights.
    """
    n = p.shape[0]
    y_float = y.to(p.dtype)  # N
    # ℓ_n = softplus(p_n) − y_n p_n = max(p_n, 0) − y_n p_n + log(1 + e^{−|p_n|})   (never log 0)
    losses = (p.clamp_min(0) - y_float * p).add_(torch.log1p(torch.exp(-p.abs())))  # N
    if weight is None:  # the lecture's case
        loss = losses.mean()
        dp = torch.sigmoid(p)  # ŷ = σ(p), N
        dp -= y_float  # ŷ − y
        dp /= n  # (ŷ − y) / N
        return loss, dp
    w_n = weight[y]  # N
    norm = w_n.sum()  # Σ_n w_{y_n}
    loss = (w_n * losses).sum() / norm
    dp = (torch.sigmoid(p) - y_float).mul_(w_n).div_(norm)  # w_n (ŷ − y) / Σ w, N
    return loss, dp
