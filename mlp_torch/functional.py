"""The lecture's operations as hand-written ``torch.autograd.Function``s.

Every op is one small Function with its forward, the tensors it saves, and a backward that
is the formula from the slides, written above it. The public names are plain functions::

    a = linear(x, W, b)                      # a = W x + b, batched as a = x Wᵀ + b
    h = sigmoid(a) | tanh(a) | relu(a)       # activations
    f = step(a)                              # Rosenblatt's perceptron output
    ℓ = softmax_cross_entropy(a, y)          # ŷ = softmax(a), ℓ = −log ŷ_y
    ℓ = sigmoid_binary_cross_entropy(p, y)   # ŷ = σ(p), ℓ = −y log ŷ − (1 − y) log(1 − ŷ)

and whole layers as one Function each, which the models' ``custom`` path runs::

    h = linear_sigmoid(x, W, b) | linear_tanh(…) | linear_relu(…)    # h = f(x Wᵀ + b)
    ℓ, a = linear_softmax_cross_entropy(x, W, b, y)                 # the output layer and the loss

Conventions:

* Names: ``a`` is always a linear map's output, the pre-activation ``a = W x + b`` (the
  softmax slides' ``a``, whose gradient is ``dℓ/da = ŷ − y``), and ``h = f(a)`` an activation's
  output, in every layer. The MLP slides write the activation itself as ``a₁ = σ(W₁x + b₁)``,
  and the forward-pass slide ``zᵢ = Σⱼ w₁ᵢⱼ xⱼ + b₁``, ``aᵢ = σ(zᵢ)``: their ``z`` is our ``a``
  and their ``a`` our ``h``. Gradients are ``d<name>``: ``da = dℓ/da``, ``dh = dℓ/dh``.
* Shapes: ``x`` is ``(N, in)``, ``W`` is ``(out, in)`` as in the lecture (``a_i = Σ_j w_ij x_j + b_i``),
  logits are ``(N, C)``; a hidden layer's ``a`` and ``h`` are ``(N, H)``. Shape comments use these letters.
* ``backward`` is written with differentiable tensor ops, so double backward
  (``gradgradcheck``, Hessian-vector products) works for linear, sigmoid, tanh, relu,
  softmax-cross-entropy, sigmoid-binary-cross-entropy and the whole layers.
* The single-op Functions use the ``forward`` + ``setup_context`` style with
  ``generate_vmap_rule = True``, so ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``) see
  through them; the whole-layer Functions use the classic ``forward(ctx, …)`` style, which costs
  less per call (see their section). ``torch.compile`` sees through both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = [
    "linear",
    "sigmoid",
    "tanh",
    "relu",
    "step",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "linear_sigmoid",
    "linear_tanh",
    "linear_relu",
    "linear_softmax_cross_entropy",
    "REDUCTIONS",
]

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# Linear layer
# --------------------------------------------------------------------------------------------


class LinearFunction(torch.autograd.Function):
    """``a = x Wᵀ + b``: the lecture's ``a_i = Σ_j w_ij x_j + b_i`` for a batch of rows ``x``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if bias is None:
            return x @ weight.T  # N,out
        return torch.addmm(bias, x, weight.T)  # N,out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
        x, weight, bias = inputs
        # dW needs x and dx needs W; save only what the requested gradients use.
        ctx.save_for_backward(
            x if ctx.needs_input_grad[1] else None,
            weight if ctx.needs_input_grad[0] else None,
        )
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, da: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        dx = dW = db = None
        # dℓ/dx_j = Σ_i (dℓ/da_i) w_ij           → dx = da W
        if ctx.needs_input_grad[0]:
            dx = da @ weight  # N,out @ out,in -> N,in
        # dℓ/dw_ij = (dℓ/da_i) x_j = (ŷ_i − y_i) x_j, summed over the batch → dW = daᵀ x
        if ctx.needs_input_grad[1]:
            dW = da.T @ x  # out,N @ N,in -> out,in
        # dℓ/db_i = dℓ/da_i = ŷ_i − y_i, summed over the batch → db = Σ_n da
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = da.sum(0)  # out
        return dx, dW, db


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------


class _ActivationFunction(torch.autograd.Function):
    """An elementwise activation ``h = f(a)`` whose derivative is a function of its output.

    σ' = σ(1 − σ), tanh' = 1 − tanh², relu' = 1[h > 0]: saving ``h`` rather than ``a`` is all
    backward needs, and costs nothing extra because the next layer keeps ``h`` as its input.
    Subclasses define ``forward`` and ``backward``.
    """

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)


class SigmoidFunction(_ActivationFunction):
    """``σ(a) = 1 / (1 + e^{−a})``, computed without overflow for any finite ``a``."""

    @staticmethod
    def forward(a: Tensor) -> Tensor:
        # One formula for both signs, in which e is only raised to non-positive powers:
        #   σ(a) = e^{min(a, 0)} / (1 + e^{−|a|})
        #   a ≥ 0: 1 / (1 + e^{−a})          a < 0: e^{a} / (1 + e^{a})
        # so nothing overflows, and σ(a) ≈ e^{a} keeps its value down to the smallest float32
        # subnormal (σ(−100) = 3.8e-44, where torch.sigmoid returns 0).
        numerator = a.clamp_max(0.0).exp_()  # e^{min(a, 0)} ∈ (0, 1], N,H
        denominator = a.abs().neg_().exp_().add_(1.0)  # 1 + e^{−|a|} ∈ (1, 2], N,H
        return numerator.div_(denominator)  # N,H

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # σ'(a) = σ(a)(1 − σ(a)) = h (1 − h)          → da = dh ⊙ h ⊙ (1 − h)
        return dh * h * (1 - h)  # N,H


class TanhFunction(_ActivationFunction):
    """``tanh(a)``; PyTorch's kernel is already stable (it saturates to ±1, never NaN)."""

    @staticmethod
    def forward(a: Tensor) -> Tensor:
        return torch.tanh(a)  # N,H

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # tanh'(a) = 1 − tanh²(a) = 1 − h²            → da = dh ⊙ (1 − h²)
        return dh * (1 - h * h)  # N,H


class ReLUFunction(_ActivationFunction):
    """``relu(a) = max(0, a)``; ``h > 0`` exactly where ``a > 0``, so the output serves backward."""

    @staticmethod
    def forward(a: Tensor) -> Tensor:
        return torch.clamp_min(a, 0)  # N,H

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # relu'(a) = 1[a > 0] = 1[h > 0]  (0 at the kink a = 0, as PyTorch)   → da = dh ⊙ 1[h > 0]
        return dh * (h > 0)  # N,H


class StepFunction(torch.autograd.Function):
    """The perceptron's Heaviside step ``f(a) = 1 if a > 0 else 0``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a: Tensor) -> Tensor:
        return (a > 0).to(a.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        pass  # nothing to save: the derivative does not depend on a

    @staticmethod
    def backward(ctx: Any, df: Tensor) -> Tensor:
        # f'(a) = 0 for every a ≠ 0 (undefined at 0)   → da = 0
        return torch.zeros_like(df)


# --------------------------------------------------------------------------------------------
# Softmax + cross-entropy, fused: the lecture's case, then weights and soft targets
# --------------------------------------------------------------------------------------------


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """The lecture's loss for class labels ``y``: ``ŷ = softmax(a)``, ``ℓ_n = −log ŷ_{n,y_n}``.

    ``target`` holds one class index a row (int64), saved as it is: one int a row, not a dense
    row of C floats. ``reduction`` is ``"mean"`` (``ℓ = Σ_n ℓ_n / N``), ``"sum"`` or ``"none"``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, target: Tensor, reduction: str) -> Tensor:
        log_y_hat = _log_softmax(logits)  # log ŷ, N,C
        losses = -log_y_hat.gather(1, target[:, None])[:, 0]  # ℓ_n = −log ŷ_{n,y_n}, N
        return _reduce(losses, reduction, logits.shape[0])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, str], output: Tensor) -> None:
        logits, target, reduction = inputs
        # ŷ is recomputed from the logits in backward (C is small): saving inputs, not an
        # intermediate, is what keeps double backward correct.
        ctx.save_for_backward(logits, target)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx: Any, dloss: Tensor) -> tuple[Tensor, None, None]:
        logits, target = ctx.saved_tensors
        n, num_classes = logits.shape
        y_hat = torch.softmax(logits, dim=1)  # ŷ = softmax(a), N,C (shifted by the row max, as below)
        y = _one_hot(target, num_classes, logits.dtype)  # y = [0 … 1 … 0], N,C
        # dℓ_n/da_n = ŷ_n − y_n
        if ctx.reduction == "none":
            return (y_hat - y) * dloss[:, None], None, None  # N,C
        # dℓ/da = (ŷ − y) / N for the mean, ŷ − y for the sum
        da = (y_hat - y) / n if ctx.reduction == "mean" else y_hat - y  # N,C
        return da * dloss, None, None  # N,C


class WeightedSoftTargetCrossEntropyFunction(torch.autograd.Function):
    """The general case: ``ℓ_n = −Σ_c t_nc log ŷ_nc`` for target rows ``t`` of shape ``(N, C)``.

    ``t`` is a probability (or one-hot) row already multiplied by the class weights, ``w ⊙ y``;
    weighted class labels arrive here as weighted one-hot rows. Returns the ``(N,)`` losses; the
    public wrapper reduces them (the mean of weighted labels divides by ``Σ_n w_{y_n}``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, t: Tensor) -> Tensor:
        return -(t * _log_softmax(logits)).sum(1)  # ℓ_n = −Σ_c t_nc log ŷ_nc, N

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)  # logits and t: ŷ is recomputed, as above

    @staticmethod
    def backward(ctx: Any, dloss: Tensor) -> tuple[Tensor, Tensor | None]:
        logits, t = ctx.saved_tensors
        y_hat = torch.softmax(logits, dim=1)  # ŷ, N,C
        # dℓ_n/da_n = ŷ_n Σ_c t_nc − t_n   (= ŷ_n − t_n for an unweighted probability row)
        dlogits = dloss[:, None] * (y_hat * t.sum(1, keepdim=True) - t)  # N,C
        dt = None
        if ctx.needs_input_grad[1]:
            # dℓ_n/dt_nc = −log ŷ_nc
            dt = -dloss[:, None] * _log_softmax(logits)  # N,C
        return dlogits, dt


def _one_hot(target: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Class indices ``(N,)`` as one-hot rows ``(N, C)`` of ``dtype``."""
    # compared with arange rather than F.one_hot, which reads the values and so fails under vmap
    classes = torch.arange(num_classes, device=target.device)  # C
    return (target[:, None] == classes).to(dtype)  # N,C


def _shift_by_row_max(logits: Tensor) -> Tensor:
    """``a − max_k a_k`` per row: softmax is unchanged, and every ``e^{a}`` is now in (0, 1].

    The subtraction is exact for the largest entries, which keeps ``ŷ`` accurate even at
    ``|a| = 1e4`` in float32 (where ``a − logsumexp(a)`` would lose digits to the rounding of
    ``logsumexp`` at that magnitude). The shift is a constant: its gradient is zero.
    """
    return logits - logits.detach().amax(dim=1, keepdim=True)


def _log_softmax(logits: Tensor) -> Tensor:
    """``log ŷ_c = a_c − log Σ_k e^{a_k}``, finite for any finite logits.

    A naive ``e^{a} / Σ e^{a}`` gives ``inf/inf = NaN`` once ``a ≳ 89`` in float32.
    """
    shifted = _shift_by_row_max(logits)  # N,C
    return shifted - torch.log(torch.exp(shifted).sum(1, keepdim=True))  # N,C


def _reduce(losses: Tensor, reduction: str, divisor: Tensor | int) -> Tensor:
    """``"none"``: the ``(N,)`` losses; ``"sum"``: Σ_n ℓ_n; ``"mean"``: Σ_n ℓ_n / divisor."""
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / divisor  # 0/0 = nan for an empty batch, as PyTorch


# --------------------------------------------------------------------------------------------
# One sigmoid output unit + binary cross-entropy, fused (the forward-pass slide's network)
# --------------------------------------------------------------------------------------------


class SigmoidBinaryCrossEntropyFunction(torch.autograd.Function):
    """Two classes, one output unit ``p``: ``ŷ = σ(p)``, ``ℓ_n = −y_n log ŷ_n − (1 − y_n) log(1 − ŷ_n)``.

    ``y`` holds the label of each row as a number of ``p``'s dtype, 0 or 1 (or a probability of
    class 1). ``reduction`` is ``"mean"`` (``ℓ = Σ_n ℓ_n / N``), ``"sum"`` or ``"none"``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(p: Tensor, y: Tensor, reduction: str) -> Tensor:
        # −log σ(p) = log(1 + e^{−p}) = softplus(−p) and −log(1 − σ(p)) = softplus(p), so
        #   ℓ = y softplus(−p) + (1 − y) softplus(p) = softplus(p) − y p          (softplus(−p) = softplus(p) − p)
        #     = max(p, 0) − y p + log(1 + e^{−|p|})
        # e is only raised to non-positive powers and log's argument is in (1, 2]: no overflow and
        # no log(0) at any finite p (at p = ±1e4 in float32 the loss is exactly 0 or |p|). The small
        # log term is added last, so a confident right answer keeps it (ℓ = e^{−100} at p = 100, y = 1).
        losses = (p.clamp_min(0.0) - y * p) + torch.log1p(torch.exp(-p.abs()))  # ℓ_n, N
        return _reduce(losses, reduction, p.shape[0])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, str], output: Tensor) -> None:
        p, y, reduction = inputs
        # ŷ is recomputed from p in backward (one exp a row): saving inputs keeps double backward correct.
        ctx.save_for_backward(p, y)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx: Any, dloss: Tensor) -> tuple[Tensor, Tensor | None, None]:
        p, y = ctx.saved_tensors
        n = p.shape[0]
        y_hat = SigmoidFunction.apply(p)  # ŷ = σ(p), N (our sigmoid: its derivative serves double backward)
        # dℓ_n/dp_n = ŷ_n − y_n
        dp = y_hat - y  # N
        # dℓ_n/dy_n = −p_n   (a probability target's gradient; class labels need none)
        dy = -p if ctx.needs_input_grad[1] else None  # N
        if ctx.reduction == "mean":
            # dℓ/dp = (ŷ − y) / N
            dp = dp / n
            dy = None if dy is None else dy / n
        return dp * dloss, None if dy is None else dy * dloss, None


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Affine map ``a = x Wᵀ + b`` (the lecture's ``a = W x + b`` for each row ``x``).

    Args:
        x: inputs, ``(N, in)``.
        weight: ``W``, ``(out, in)``.
        bias: ``b``, ``(out,)``, or ``None``.

    Returns:
        ``(N, out)``.
    """
    _check_linear(x, weight, bias)
    return LinearFunction.apply(x, weight, bias)


def sigmoid(a: Tensor) -> Tensor:
    """Logistic sigmoid ``σ(a) = 1 / (1 + e^{−a})``; finite and exact at ±400 in float32."""
    return SigmoidFunction.apply(a)


def tanh(a: Tensor) -> Tensor:
    """Hyperbolic tangent; backward ``1 − tanh²`` from the saved output."""
    return TanhFunction.apply(a)


def relu(a: Tensor) -> Tensor:
    """Rectified linear unit ``max(0, a)``; backward ``1[a > 0]`` (zero at the kink, as PyTorch)."""
    return ReLUFunction.apply(a)


def step(a: Tensor) -> Tensor:
    """Rosenblatt's Heaviside step ``f(a) = 1 if a > 0 else 0``, in ``a``'s dtype.

    Backward returns zeros: the step's derivative is 0 everywhere except at ``a = 0``, where
    it does not exist. That is the true gradient, and it is why a perceptron cannot be trained
    by back-propagating through its step: it learns with the perceptron rule instead
    (``w ← w + η (y − f(x)) x``), and MLPs replace the step by sigmoid, tanh or ReLU.
    """
    return StepFunction.apply(a)


def softmax_cross_entropy(
    logits: Tensor, target: Tensor, reduction: str = "mean", weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy of ``ŷ = softmax(logits)`` against ``target``: ``ℓ = −log ŷ_label``.

    Matches ``F.cross_entropy`` (without label smoothing), including its class-weight semantics.
    Class labels without weights take the lecture's Function, whose backward is the fused
    gradient ``dℓ/da = ŷ − y`` (÷N for ``"mean"``); class weights and probability targets take
    ``WeightedSoftTargetCrossEntropyFunction``.

    Args:
        logits: ``(N, C)`` floating point scores ``a``.
        target: class indices ``(N,)`` (int64/int32, values in ``0..C−1``) or one-hot /
            probability rows ``(N, C)`` of ``logits``' dtype (the lecture's ``y = [1 0 0]``).
        reduction: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (the ``(N,)`` losses).
        weight: optional per-class weights ``(C,)``. With index targets, ``"mean"`` divides by
            ``Σ_n weight[target_n]``; with probability targets by ``N`` (as PyTorch does).

    An empty batch (``N = 0``) gives ``nan`` for ``"mean"`` (0/0, as PyTorch), ``0`` for
    ``"sum"`` and an empty tensor for ``"none"``.

    Raises:
        ValueError: logits not 2-D, wrong target shape, target out of range, unknown reduction.
        TypeError: integer logits, or a target dtype that is neither integer nor ``logits``' dtype.
    """
    _check_logits(logits, reduction, weight)
    n, num_classes = logits.shape
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}; move both to one device")
    if target.dim() == 1:
        _check_class_indices(target, n, num_classes)
        if weight is None:
            return SoftmaxCrossEntropyFunction.apply(logits, target.long(), reduction)  # the lecture's case
        t = _one_hot(target, num_classes, logits.dtype) * weight  # w ⊙ y, N,C
        return _reduce(WeightedSoftTargetCrossEntropyFunction.apply(logits, t), reduction, t.sum())
    if target.dim() == 2:
        _check_probability_rows(target, logits)
        t = target if weight is None else target * weight  # w ⊙ t, N,C
        return _reduce(WeightedSoftTargetCrossEntropyFunction.apply(logits, t), reduction, n)
    raise ValueError(f"target must be class indices (N,) or probability rows (N, C); got shape {tuple(target.shape)}")


def sigmoid_binary_cross_entropy(p: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """Binary cross-entropy of one sigmoid output unit: ``ŷ = σ(p)``, ``ℓ = −y log ŷ − (1 − y) log(1 − ŷ)``.

    Matches ``F.binary_cross_entropy_with_logits(p, y.float())``. The backward is the fused
    gradient ``dℓ/dp = ŷ − y`` (÷N for ``"mean"``), the two-class twin of softmax
    cross-entropy's ``ŷ − y``. The loss is computed from ``p`` as ``softplus(p) − y p``, never as
    ``log σ(p)``, so it is finite at every finite ``p``.

    Args:
        p: ``(N,)`` floating-point scores of the output unit (``ŷ = σ(p)`` is the probability of class 1).
        y: ``(N,)`` labels, an integer tensor of 0s and 1s, or probabilities of class 1 in ``p``'s dtype.
        reduction: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (the ``(N,)`` losses).

    An empty batch gives ``nan`` for ``"mean"`` (0/0, as PyTorch), ``0`` for ``"sum"``.

    Raises:
        ValueError: ``p`` not 1-D, ``y`` of another length, a label other than 0 or 1, unknown reduction.
        TypeError: integer ``p``, or float labels of another dtype than ``p``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if p.dim() != 1:
        raise ValueError(f"p must be 1-D (N,), one score per sample; got shape {tuple(p.shape)}")
    if not p.is_floating_point():
        raise TypeError(f"p must be floating point; got {p.dtype}")
    if y.device != p.device:
        raise ValueError(f"y is on {y.device} but p is on {p.device}; move both to one device")
    if y.dim() != 1:
        raise ValueError(f"y must be 1-D (N,), one label per sample; got shape {tuple(y.shape)}")
    if y.is_floating_point():
        if y.dtype != p.dtype:
            raise TypeError(f"probability targets must have p's dtype {p.dtype}; got {y.dtype}")
        if y.shape[0] != p.shape[0]:
            raise ValueError(f"y has {y.shape[0]} labels but p has {p.shape[0]} rows")
    else:
        _check_class_indices(y, p.shape[0], 2)
        y = y.to(p.dtype)
    return SigmoidBinaryCrossEntropyFunction.apply(p, y, reduction)


# --------------------------------------------------------------------------------------------
# Whole layers as one Function: the same formulas, fewer Functions and passes (the models' path)
# --------------------------------------------------------------------------------------------
#
# A hidden layer h = f(x Wᵀ + b) as one Function instead of two: the activation works in the memory
# of the pre-activation a, which nobody else holds (each activation overwrites it), and a training step of
# an L-layer MLP enters Python from the autograd engine L times each way instead of 2L + 1. The output
# layer and the loss are one Function too. Each backward is the two ops' formulas, one after the other; the single-op
# Functions above are the reference these are tested against.
#
# These use the classic forward(ctx, ...) style: a Function with setup_context binds its arguments
# with inspect.signature on every call (≈ 15 µs, a twentieth of a softmax-classifier step at batch
# 128). The price is torch.func: vmap and grad take the single-op Functions, not these.


def _save_dense(ctx: Any, x: Tensor, weight: Tensor, *more: Tensor) -> None:
    """Save x (for dW) and W (for dx) only if those gradients are wanted, then ``more``."""
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight if ctx.needs_input_grad[0] else None, *more)


def _linear_backward(ctx: Any, da: Tensor, x: Tensor, weight: Tensor) -> tuple[Tensor | None, ...]:
    """``LinearFunction.backward`` from ``da = dℓ/da``: ``dx = da W``, ``dW = daᵀ x``, ``db = Σ_n da``."""
    dx = dW = db = None
    if ctx.needs_input_grad[0]:
        dx = da @ weight  # N,out @ out,in -> N,in
    if ctx.needs_input_grad[1]:
        dW = da.T @ x  # out,N @ N,in -> out,in
    if ctx.needs_input_grad[2]:
        db = da.sum(0)  # out
    return dx, dW, db


class LinearSigmoidFunction(torch.autograd.Function):
    """``h = σ(x Wᵀ + b)``: the MLP slides' hidden layer ``a₁ = σ(W₁x + b₁)``. Saves x, W and h."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        a = torch.addmm(bias, x, weight.T)  # a = x Wᵀ + b, N,H
        # σ(a) = 1 / (1 + e^{−a}) by torch.sigmoid, the builtin and manual paths' bits: one exp, a fifth
        # of the time of sigmoid()'s two; unlike sigmoid() it flushes σ(a) < 1e-38 (a < −87) to 0.
        h = a.sigmoid_()  # h = σ(a), in a's memory, N,H
        _save_dense(ctx, x, weight, h)
        return h

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, h = ctx.saved_tensors
        # σ'(a) = h (1 − h)       → da = dh ⊙ h ⊙ (1 − h)
        da = (1 - h).mul_(h).mul_(dh)  # N,H  (one new tensor, not three, as manual.sigmoid_backward)
        # then the linear layer   → dx = da W,  dW = daᵀ x,  db = Σ_n da
        return _linear_backward(ctx, da, x, weight)


class LinearTanhFunction(torch.autograd.Function):
    """``h = tanh(x Wᵀ + b)``. Saves x, W and h."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        a = torch.addmm(bias, x, weight.T)  # a = x Wᵀ + b, N,H
        h = a.tanh_()  # h = tanh(a), in a's memory, N,H
        _save_dense(ctx, x, weight, h)
        return h

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, h = ctx.saved_tensors
        # tanh'(a) = 1 − h²       → da = dh ⊙ (1 − h²)
        da = dh * (1 - h * h)  # N,H
        # then the linear layer   → dx = da W,  dW = daᵀ x,  db = Σ_n da
        return _linear_backward(ctx, da, x, weight)


class LinearReLUFunction(torch.autograd.Function):
    """``h = relu(x Wᵀ + b)``. Saves x, W and h."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        a = torch.addmm(bias, x, weight.T)  # a = x Wᵀ + b, N,H
        h = a.clamp_min_(0)  # h = max(0, a), in a's memory, N,H
        _save_dense(ctx, x, weight, h)
        return h

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, h = ctx.saved_tensors
        # relu'(a) = 1[h > 0]     → da = dh ⊙ 1[h > 0]
        da = dh * (h > 0)  # N,H
        # then the linear layer   → dx = da W,  dW = daᵀ x,  db = Σ_n da
        return _linear_backward(ctx, da, x, weight)


class LinearSoftmaxCrossEntropyFunction(torch.autograd.Function):
    """The output layer and the lecture's loss, in the slides' orientation: one column per sample.

        a = W x + b,   ŷ = softmax(a),   ℓ = −(1/N) Σ_n log ŷ_{y_n}                    (a, ŷ: C,N)

    With the few rows of W a classifier has, ``W xᵀ`` is a faster product than ``x Wᵀ`` (a third
    less time on a CPU), and each sample's scores lie contiguous for the softmax. Returns ``(ℓ, logits)``,
    the logits as the usual ``(N, C)`` rows (a view of ``a``) for the caller's accuracy; a gradient
    that reaches them through some other use is added to ``dℓ/da``. Saves x, W, the logits (an
    output, so double backward stays correct: ŷ is recomputed from them) and the labels.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.addmm(bias[:, None], weight, x.T)  # a = W x + b, C,in @ in,N -> C,N
        log_y_hat = torch.log_softmax(a, dim=0)  # log ŷ = a − log Σ_k e^{a_k} (shifted by the max), C,N
        loss = -log_y_hat.gather(0, target[None, :]).mean()  # ℓ = −(1/N) Σ_n log ŷ_{y_n}
        logits = a.T  # N,C
        _save_dense(ctx, x, weight, logits, target)
        ctx.set_materialize_grads(False)  # the logits' gradient stays None unless something used them
        return loss, logits

    @staticmethod
    def backward(ctx: Any, dloss: Tensor | None, dlogits: Tensor | None) -> tuple[Tensor | None, ...]:
        x, weight, logits, target = ctx.saved_tensors
        a = logits.T  # C,N
        n = a.shape[1]
        if dloss is None:  # only the logits were used
            da = torch.zeros_like(a)  # C,N
        else:
            y_hat = torch.softmax(a, dim=0)  # ŷ = softmax(a), C,N
            y = torch.zeros_like(a).scatter_(0, target[None, :], 1.0)  # y = [0 … 1 … 0] in each column, C,N
            # dℓ/da = (ŷ − y) / N
            da = (y_hat - y) / n * dloss  # C,N
        if dlogits is not None:
            da = da + dlogits.T  # the logits' gradient from their other uses, C,N
        dx = dW = db = None
        # dℓ/dx = Wᵀ (dℓ/da), as rows
        if ctx.needs_input_grad[0]:
            dx = da.T @ weight  # N,C @ C,in -> N,in
        # dℓ/dW = (dℓ/da) xᵀ = (ŷ − y) xᵀ / N
        if ctx.needs_input_grad[1]:
            dW = da @ x  # C,N @ N,in -> C,in
        # dℓ/db = Σ_n dℓ/da
        if ctx.needs_input_grad[2]:
            db = da.sum(1)  # C
        return dx, dW, db, None


def linear_sigmoid(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """A whole sigmoid layer ``h = σ(x Wᵀ + b)`` as one Function; equal to ``sigmoid(linear(x, W, b))``.

    Args:
        x: inputs, ``(N, in)``.
        weight: ``W``, ``(out, in)``.
        bias: ``b``, ``(out,)``.

    Returns:
        ``(N, out)``.
    """
    _check_linear(x, weight, bias)
    return LinearSigmoidFunction.apply(x, weight, bias)


def linear_tanh(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``h = tanh(x Wᵀ + b)`` as one Function; equal to ``tanh(linear(x, W, b))``."""
    _check_linear(x, weight, bias)
    return LinearTanhFunction.apply(x, weight, bias)


def linear_relu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``h = relu(x Wᵀ + b)`` as one Function; equal to ``relu(linear(x, W, b))``."""
    _check_linear(x, weight, bias)
    return LinearReLUFunction.apply(x, weight, bias)


def linear_softmax_cross_entropy(x: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The output layer and the mean cross-entropy as one Function.

    Equal to ``a = linear(x, W, b); ℓ = softmax_cross_entropy(a, target)``, for class labels (the
    lecture's case; class weights and probability targets take those two functions).

    Args:
        x: inputs, ``(N, in)``.
        weight: ``W``, ``(C, in)``.
        bias: ``b``, ``(C,)``.
        target: class indices ``(N,)``, integers in ``0..C−1``.

    Returns:
        ``(ℓ, a)``: the scalar mean loss and the ``(N, C)`` logits.
    """
    _check_linear(x, weight, bias)
    if target.dim() != 1:
        raise ValueError(f"target must be class indices (N,); got shape {tuple(target.shape)}")
    if target.device != x.device:
        raise ValueError(f"target is on {target.device} but x is on {x.device}; move both to one device")
    _check_class_indices(target, x.shape[0], weight.shape[0])
    return LinearSoftmaxCrossEntropyFunction.apply(x, weight, bias, target.long())


# --------------------------------------------------------------------------------------------
# Validation: shapes, dtypes and devices; the targets' range is read from their values
# --------------------------------------------------------------------------------------------


def _check_same(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; move both to one device")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}; convert both to one dtype")


def _check_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if x.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"linear expects x (N, in) and weight (out, in); got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"linear: x has {x.shape[1]} features but weight expects {weight.shape[1]} (weight is (out, in))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    _check_same(x, weight, "x", "weight")
    if bias is not None:
        _check_same(x, bias, "x", "bias")


def _check_logits(logits: Tensor, reduction: str, weight: Tensor | None) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C); got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point; got {logits.dtype}")
    num_classes = logits.shape[1]
    if weight is not None:
        if tuple(weight.shape) != (num_classes,):
            raise ValueError(
                f"weight must have shape ({num_classes},) for {num_classes} classes; got {tuple(weight.shape)}"
            )
        _check_same(logits, weight, "logits", "weight")


def _check_class_indices(target: Tensor, n: int, num_classes: int) -> None:
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"class-index targets must be an integer tensor; got {target.dtype}")
    if target.shape[0] != n:
        raise ValueError(f"target has {target.shape[0]} labels but logits have {n} rows")
    # Reading values is data-dependent Python, which torch.compile cannot trace: skip it there.
    # Under torch.func transforms (vmap, grad) the target may be a wrapper without storage of its
    # own; debug_unwrap gives the tensor underneath (every vmapped sample), only to read it here.
    if torch.compiler.is_compiling() or n == 0:
        return
    values = torch.func.debug_unwrap(target)
    if values.device.type == "meta":
        return  # no values to read
    if values.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # a CUDA graph being captured cannot read values back either
    low, high = torch.stack(torch.aminmax(values)).tolist()  # one device read, not two
    if low < 0 or high >= num_classes:
        bad = high if high >= num_classes else low
        raise ValueError(f"target {bad} out of range for {num_classes} classes (valid: 0..{num_classes - 1})")


def _check_probability_rows(target: Tensor, logits: Tensor) -> None:
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"probability targets must have the logits' shape {tuple(logits.shape)}; got {tuple(target.shape)}"
        )
    if target.dtype != logits.dtype:
        raise TypeError(f"probability targets must have the logits' dtype {logits.dtype}; got {target.dtype}")
