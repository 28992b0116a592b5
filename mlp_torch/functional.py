"""The lecture's operations as hand-written ``torch.autograd.Function``s.

Every op is one small Function with its forward, the tensors it saves, and a backward that
is the formula from the slides, written above it. The public names are plain functions::

    a = linear(x, W, b)                      # a = W x + b, batched as a = x Wᵀ + b
    h = sigmoid(a) | tanh(a) | relu(a)       # activations
    f = step(a)                              # Rosenblatt's perceptron output
    ℓ = softmax_cross_entropy(a, y)          # ŷ = softmax(a), ℓ = −log ŷ_label

Conventions:

* Shapes: ``x`` is ``(N, in)``, ``W`` is ``(out, in)`` as in the lecture (``a_i = Σ_j w_ij x_j + b_i``),
  logits are ``(N, C)``. Shape comments use these letters.
* ``backward`` is written with differentiable tensor ops, so double backward
  (``gradgradcheck``, Hessian-vector products) works for linear, sigmoid, tanh, relu and
  softmax-cross-entropy.
* Functions use the ``forward`` + ``setup_context`` style with ``generate_vmap_rule = True``, so
  ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``) and ``torch.compile`` see through them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["linear", "sigmoid", "tanh", "relu", "step", "softmax_cross_entropy", "REDUCTIONS"]

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
    """An elementwise activation ``h = f(z)`` whose derivative is a function of its output.

    σ' = σ(1 − σ), tanh' = 1 − tanh², relu' = 1[h > 0]: saving ``h`` rather than ``z`` is all
    backward needs, and costs nothing extra because the next layer keeps ``h`` as its input.
    Subclasses define ``forward`` and ``backward``.
    """

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)


class SigmoidFunction(_ActivationFunction):
    """``σ(z) = 1 / (1 + e^{−z})``, computed without overflow for any finite ``z``."""

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        # exp of a non-positive number never overflows, and one formula covers both signs:
        #   σ(z) = e^{min(z, 0)} / (1 + e^{−|z|})
        #   z ≥ 0: 1 / (1 + e^{−z})      z < 0: e^{z} / (1 + e^{z})
        # Each op after the first two writes into a tensor made here: on the CPU a fresh N,H
        # tensor costs more than the arithmetic (its pages are first touched), so two, not nine.
        # (torch.sigmoid is one pass, but it returns 0 below z ≈ −88.7, where e^{z} is still a
        # float32 subnormal; the extreme-input test holds us to that.)
        numerator = z.clamp_max(0.0).exp_()  # e^{min(z, 0)} ∈ (0, 1], N,H
        denominator = z.abs().neg_().exp_().add_(1.0)  # 1 + e^{−|z|} ∈ (1, 2], N,H
        return numerator.div_(denominator)

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # σ'(z) = σ(z)(1 − σ(z))          → dz = dh ⊙ h ⊙ (1 − h)
        dh_h = dh * h  # N,H
        return torch.addcmul(dh_h, dh_h, h, value=-1.0)  # dh h − dh h h, one temporary fewer


class TanhFunction(_ActivationFunction):
    """``tanh(z)``; PyTorch's kernel is already stable (it saturates to ±1, never NaN)."""

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.tanh(z)

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # tanh'(z) = 1 − tanh²(z)          → dz = dh ⊙ (1 − h²)
        return torch.addcmul(dh, dh * h, h, value=-1.0)  # dh − dh h h


class ReLUFunction(_ActivationFunction):
    """``relu(z) = max(0, z)``; ``h > 0`` exactly where ``z > 0``, so the output serves backward."""

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return torch.clamp_min(z, 0)

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        # relu'(z) = 1[z > 0]  (0 at the kink z = 0, as PyTorch does)   → dz = dh ⊙ 1[z > 0]
        return torch.where(h > 0, dh, 0.0)


class StepFunction(torch.autograd.Function):
    """The perceptron's Heaviside step ``f(z) = 1 if z > 0 else 0``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> Tensor:
        return (z > 0).to(z.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        pass  # nothing to save: the derivative does not depend on z

    @staticmethod
    def backward(ctx: Any, df: Tensor) -> Tensor:
        # f'(z) = 0 for every z ≠ 0 (undefined at 0)   → dz = 0
        return torch.zeros_like(df)


# --------------------------------------------------------------------------------------------
# Softmax + cross-entropy, fused
# --------------------------------------------------------------------------------------------


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Per-sample ``ℓ_n = −Σ_c w_c y_nc log softmax(a_n)_c`` (``w = 1`` without class weights).

    ``target`` is either unweighted class indices ``(N,)``, saved as they are (one int a row, as
    ``nll_loss`` keeps them, not a dense row of C floats), or dense rows ``(N, C)`` (one-hot or
    probabilities) already multiplied by the class weights; the public wrapper picks.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, target: Tensor) -> Tensor:
        wy = _dense_rows(target, logits)  # N,C
        return -(wy * _log_softmax(logits)).sum(1)  # ℓ_n = −Σ_c w_c y_nc log ŷ_nc, N

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        logits, target = inputs
        # ŷ is recomputed from the logits in backward (C is small): saving inputs, not an
        # intermediate, is what keeps double backward correct.
        ctx.save_for_backward(logits, target)

    @staticmethod
    def backward(ctx: Any, dloss: Tensor) -> tuple[Tensor, Tensor | None]:
        logits, target = ctx.saved_tensors
        wy = _dense_rows(target, logits)  # N,C
        # one kernel for ŷ; it shifts by the row max as _log_softmax does, so it is as stable
        probs = torch.softmax(logits, dim=1)  # ŷ = softmax(a), N,C
        # dℓ/da_i = ŷ_i − y_i  (with weights and soft targets: ŷ_i Σ_c w_c y_c − w_i y_i)
        dlogits = dloss[:, None] * (probs * wy.sum(1, keepdim=True) - wy)  # N,C
        dwy = None
        if ctx.needs_input_grad[1]:
            # dℓ/dy_c = −log ŷ_c
            dwy = -dloss[:, None] * _log_softmax(logits)
        return dlogits, dwy


def _dense_rows(target: Tensor, logits: Tensor) -> Tensor:
    """``target`` as ``(N, C)`` rows of ``logits``' dtype: class indices become one-hot rows."""
    if target.dim() == 2:
        return target
    # one-hot without F.one_hot, which reads the values and so fails under vmap
    classes = torch.arange(logits.shape[1], device=logits.device)  # C
    return (target[:, None] == classes).to(logits.dtype)  # N,C


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
    return LinearFunction.apply(x, weight, bias)


def sigmoid(x: Tensor) -> Tensor:
    """Logistic sigmoid ``σ(x) = 1 / (1 + e^{−x})``; finite and exact at ±400 in float32."""
    return SigmoidFunction.apply(x)


def tanh(x: Tensor) -> Tensor:
    """Hyperbolic tangent; backward ``1 − tanh²`` from the saved output."""
    return TanhFunction.apply(x)


def relu(x: Tensor) -> Tensor:
    """Rectified linear unit ``max(0, x)``; backward ``1[x > 0]`` (zero at the kink, as PyTorch)."""
    return ReLUFunction.apply(x)


def step(x: Tensor) -> Tensor:
    """Rosenblatt's Heaviside step ``f(x) = 1 if x > 0 else 0``, in ``x``'s dtype.

    Backward returns zeros: the step's derivative is 0 everywhere except at ``x = 0``, where
    it does not exist. That is the true gradient, and it is why a perceptron cannot be trained
    by back-propagating through its step: it learns with the perceptron rule instead
    (``w ← w + η (y − f(x)) x``), and MLPs replace the step by sigmoid, tanh or ReLU.
    """
    return StepFunction.apply(x)


def softmax_cross_entropy(
    logits: Tensor, target: Tensor, reduction: str = "mean", weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy of ``ŷ = softmax(logits)`` against ``target``: ``ℓ = −log ŷ_label``.

    Matches ``F.cross_entropy`` (without label smoothing), including its class-weight semantics.
    Backward is the lecture's fused gradient ``dℓ/da = ŷ − y`` (÷N for ``"mean"``).

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
    function_target, divisor = _function_target(logits, target, reduction, weight)
    losses = SoftmaxCrossEntropyFunction.apply(logits, function_target)  # N
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / divisor


# --------------------------------------------------------------------------------------------
# Validation (static checks only: shapes, dtypes, devices; nothing that reads tensor values
# under torch.func transforms or torch.compile, where data-dependent Python control flow fails)
# --------------------------------------------------------------------------------------------


def _check_same(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_a} is on {a.device} but {name_b} is on {b.device}; move both to one device")
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} is {a.dtype} but {name_b} is {b.dtype}; convert both to one dtype")


def _values_are_readable(t: Tensor) -> bool:
    """True when Python may look at ``t``'s values (eager mode, a plain tensor)."""
    if torch.compiler.is_compiling():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(t)


def _function_target(
    logits: Tensor, target: Tensor, reduction: str, weight: Tensor | None
) -> tuple[Tensor, Tensor | float]:
    """Validate the inputs; return the Function's target and the divisor for ``"mean"``.

    The target is the class indices themselves when there are no weights, else ``w ⊙ y`` as
    ``(N, C)`` rows (autograd then carries the gradients of ``weight`` and soft targets).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be 2-D (N, C); got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point; got {logits.dtype}")
    n, num_classes = logits.shape
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}; move both to one device")
    if weight is not None:
        if tuple(weight.shape) != (num_classes,):
            raise ValueError(
                f"weight must have shape ({num_classes},) for {num_classes} classes; got {tuple(weight.shape)}"
            )
        _check_same(logits, weight, "logits", "weight")

    if target.dim() == 1:  # class indices
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise TypeError(f"class-index targets must be an integer tensor; got {target.dtype}")
        if target.shape[0] != n:
            raise ValueError(f"target has {target.shape[0]} labels but logits have {n} rows")
        if _values_are_readable(target) and n > 0:
            low, high = torch.stack(torch.aminmax(target)).tolist()  # one device read, not two
            bad = high if high >= num_classes else low
            if low < 0 or high >= num_classes:
                raise ValueError(f"target {bad} out of range for {num_classes} classes (valid: 0..{num_classes - 1})")
        if weight is None:
            return target, float(n) if n else torch.nan
        wy = _dense_rows(target, logits) * weight  # N,C
        return wy, wy.sum()

    if target.dim() == 2:  # one-hot or probability rows
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(
                f"probability targets must have the logits' shape {tuple(logits.shape)}; got {tuple(target.shape)}"
            )
        if target.dtype != logits.dtype:
            raise TypeError(f"probability targets must have the logits' dtype {logits.dtype}; got {target.dtype}")
        wy = target if weight is None else target * weight
        return wy, float(n) if n else torch.nan

    raise ValueError(f"target must be class indices (N,) or probability rows (N, C); got shape {tuple(target.shape)}")
