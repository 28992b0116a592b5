"""Check every hand-written Function against finite differences and against PyTorch's own op.

For each op in :mod:`mlp_torch.functional` three checks run:

* ``gradcheck``: ``torch.autograd.gradcheck`` in float64, plus our own report of
  ``max |J_analytic − J_numeric|`` with central differences (``ε = 1e-6``);
* ``gradgradcheck``: ``torch.autograd.gradgradcheck`` in float64, with the same error measured
  on the Jacobian of the vector-Jacobian product (double backward);
* ``vs-torch-float32``: forward and backward against PyTorch's op (``F.linear``, ``torch.sigmoid``,
  ``torch.tanh``, ``F.relu``, ``F.cross_entropy``, ``F.binary_cross_entropy_with_logits``, ``x > 0``;
  the whole-layer Functions against those composed) in float32, with explicit tolerances.

``mlp-torch gradcheck`` prints the table; :func:`run_checks` returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import functional as mf
from .finite_difference import TWO_POINT, derivative

Fn = Callable[..., Tensor]

# float32 against PyTorch: a few ulps of the values involved (sums over `in` features for linear).
FLOAT32_RTOL = 1e-5
FLOAT32_ATOL = 1e-6
FD_EPS = 1e-6
FD_ATOL = 1e-5  # torch.autograd.gradcheck's defaults (atol 1e-5, rtol 1e-3) decide pass/fail
FD_RTOL = 1e-3


@dataclass(frozen=True)
class CheckResult:
    """One row of the gradcheck table."""

    op: str
    check: str
    max_abs_error: float
    passed: bool


@dataclass(frozen=True)
class OpCase:
    """An op, PyTorch's reference for it, and how to draw inputs for it."""

    name: str
    ours: Fn
    reference: Fn
    make_inputs: Callable[[torch.dtype, torch.device, torch.Generator], tuple[Tensor, ...]]
    double_backward: bool = True


def _away_from_zero(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, g: torch.Generator) -> Tensor:
    """Values with |x| ≥ 0.1, so finite differences never straddle a kink at 0."""
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    return (x.sign() * (x.abs() + 0.1)).to(dtype=dtype, device=device)


def _linear_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (x, w, b))


def _sce_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    logits = (3 * torch.randn(5, 4, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
    target = torch.randint(0, 4, (5,), generator=g).to(device)
    return logits, target


def _sce_soft_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    logits = (3 * torch.randn(5, 4, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
    probs = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1).to(dtype=dtype, device=device)
    return logits, probs


def _sbce_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    p = (3 * torch.randn(6, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
    labels = torch.randint(0, 2, (6,), generator=g).to(device)
    return p, labels


def _sbce_soft_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    p = (3 * torch.randn(6, generator=g, dtype=torch.float64)).to(dtype=dtype, device=device)
    probabilities = torch.rand(6, generator=g, dtype=torch.float64).to(dtype=dtype, device=device)
    return p, probabilities


def _bce_with_logits(p: Tensor, y: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(p, y.to(p.dtype))


def _elementwise(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    return (_away_from_zero((4, 5), dtype, device, g),)


def _layer_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    """x, W, b whose pre-activations ``x Wᵀ + b`` all have |a| ≥ 0.1 (relu's kink stays out of reach)."""
    while True:
        x, w, b = _linear_inputs(torch.float64, torch.device("cpu"), g)
        if torch.addmm(b, x, w.T).abs().min() >= 0.1:
            return tuple(t.to(dtype=dtype, device=device) for t in (x, w, b))


def _output_layer_inputs(dtype: torch.dtype, device: torch.device, g: torch.Generator) -> tuple[Tensor, ...]:
    x, w, b = _linear_inputs(dtype, device, g)
    target = torch.randint(0, 3, (4,), generator=g).to(device)
    return x, w, b, target


def _loss_and_logits(loss: Tensor, logits: Tensor) -> Tensor:
    """``(ℓ, a)`` as one vector, so that every check covers both outputs' gradients."""
    return torch.cat([loss.reshape(1), logits.reshape(-1)])


def _ours_output_layer(x: Tensor, w: Tensor, b: Tensor, target: Tensor) -> Tensor:
    return _loss_and_logits(*mf.linear_softmax_cross_entropy(x, w, b, target))


def _torch_output_layer(x: Tensor, w: Tensor, b: Tensor, target: Tensor) -> Tensor:
    logits = F.linear(x, w, b)
    return _loss_and_logits(F.cross_entropy(logits, target), logits)


CASES: tuple[OpCase, ...] = (
    OpCase("linear", mf.linear, F.linear, _linear_inputs),
    OpCase("sigmoid", mf.sigmoid, torch.sigmoid, _elementwise),
    OpCase("tanh", mf.tanh, torch.tanh, _elementwise),
    OpCase("relu", mf.relu, F.relu, _elementwise),
    # PyTorch has no step with a gradient; its derivative is 0 wherever it is defined.
    OpCase("step", mf.step, lambda x: (x > 0).to(x.dtype) + 0 * x, _elementwise),
    OpCase("softmax_cross_entropy", mf.softmax_cross_entropy, F.cross_entropy, _sce_inputs),
    OpCase("softmax_cross_entropy[soft]", mf.softmax_cross_entropy, F.cross_entropy, _sce_soft_inputs),
    OpCase("sigmoid_binary_cross_entropy", mf.sigmoid_binary_cross_entropy, _bce_with_logits, _sbce_inputs),
    OpCase("sigmoid_binary_cross_entropy[soft]", mf.sigmoid_binary_cross_entropy, _bce_with_logits, _sbce_soft_inputs),
    # whole layers as one Function (the models' custom path), against PyTorch's ops composed
    OpCase("linear_sigmoid", mf.linear_sigmoid, lambda x, w, b: torch.sigmoid(F.linear(x, w, b)), _layer_inputs),
    OpCase("linear_tanh", mf.linear_tanh, lambda x, w, b: torch.tanh(F.linear(x, w, b)), _layer_inputs),
    OpCase("linear_relu", mf.linear_relu, lambda x, w, b: F.relu(F.linear(x, w, b)), _layer_inputs),
    OpCase("linear_softmax_cross_entropy", _ours_output_layer, _torch_output_layer, _output_layer_inputs),
)


def _numeric_jacobian(fn: Callable[..., Tensor], inputs: Sequence[Tensor], wrt: Sequence[int]) -> list[Tensor]:
    """Central differences ``(f(x + ε) − f(x − ε)) / 2ε`` for every entry of each input in ``wrt``."""
    moved = [t.clone() for t in inputs]  # entries are moved and restored one at a time
    columns = []
    for i in wrt:

        def f() -> Tensor:
            return fn(*moved).reshape(-1)

        jac = [derivative(f, moved[i], k, FD_EPS, TWO_POINT) for k in range(moved[i].numel())]
        columns.append(torch.stack(jac, dim=1))  # out, numel(x)
    return columns


def _analytic_jacobian(fn: Callable[..., Tensor], inputs: Sequence[Tensor], wrt: Sequence[int]) -> list[Tensor]:
    """Rows ``∂out_r/∂x`` from backward with one-hot output gradients (our backward, not autograd's)."""
    leaves = [t.detach().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    out = fn(*leaves).reshape(-1)
    if not out.requires_grad:  # e.g. relu's and step's backward do not depend on x: a zero Jacobian
        return [torch.zeros(out.numel(), leaves[i].numel(), dtype=out.dtype, device=out.device) for i in wrt]
    rows: list[list[Tensor]] = [[] for _ in wrt]
    for r in range(out.numel()):
        grads = torch.autograd.grad(out[r], [leaves[i] for i in wrt], retain_graph=True, allow_unused=True)
        for slot, (i, grad) in enumerate(zip(wrt, grads)):
            rows[slot].append(torch.zeros_like(leaves[i]).reshape(-1) if grad is None else grad.reshape(-1))
    return [torch.stack(r, dim=0) for r in rows]  # out, numel(x)


def _max_jacobian_error(fn: Callable[..., Tensor], inputs: Sequence[Tensor], wrt: Sequence[int]) -> float:
    analytic = _analytic_jacobian(fn, inputs, wrt)
    with torch.no_grad():
        numeric = _numeric_jacobian(fn, [t.detach() for t in inputs], wrt)
    return max(float((a - n).abs().max()) for a, n in zip(analytic, numeric))


def _differentiable(inputs: Sequence[Tensor]) -> list[int]:
    return [i for i, t in enumerate(inputs) if t.is_floating_point()]


def _vjp_fn(fn: Fn, inputs: Sequence[Tensor], wrt: Sequence[int], g: torch.Generator) -> Callable[..., Tensor]:
    """``x ↦ Jᵀv`` for a fixed random ``v``: its Jacobian is the op's double backward."""
    v = torch.randn(fn(*inputs).shape, generator=g, dtype=torch.float64).to(inputs[0])

    def vjp(*xs: Tensor) -> Tensor:
        leaves = [x if x.requires_grad or i not in wrt else x.requires_grad_() for i, x in enumerate(xs)]
        with torch.enable_grad():
            grads = torch.autograd.grad(fn(*leaves), [leaves[i] for i in wrt], v, create_graph=True)
        return torch.cat([gr.reshape(-1) for gr in grads])

    return vjp


def check_op(case: OpCase, device: torch.device, seed: int = 0) -> list[CheckResult]:
    """Run the three checks on one op and return their rows."""
    g = torch.Generator().manual_seed(seed)
    results = []

    inputs = case.make_inputs(torch.float64, device, g)
    wrt = _differentiable(inputs)
    leaves = tuple(t.detach().requires_grad_(i in wrt) for i, t in enumerate(inputs))
    ok = torch.autograd.gradcheck(case.ours, leaves, eps=FD_EPS, atol=FD_ATOL, rtol=FD_RTOL, raise_exception=False)
    err = _max_jacobian_error(case.ours, inputs, wrt)
    results.append(CheckResult(case.name, "gradcheck", err, bool(ok)))

    if case.double_backward:
        ok = torch.autograd.gradgradcheck(
            case.ours, leaves, eps=FD_EPS, atol=FD_ATOL, rtol=FD_RTOL, raise_exception=False
        )
        vjp = _vjp_fn(case.ours, inputs, wrt, g)
        err = _max_jacobian_error(vjp, inputs, wrt)
        results.append(CheckResult(case.name, "gradgradcheck", err, bool(ok)))

    inputs32 = case.make_inputs(torch.float32, device, g)
    results.append(_compare_float32(case, inputs32))
    return results


def _compare_float32(case: OpCase, inputs: tuple[Tensor, ...]) -> CheckResult:
    """Forward and backward of ours vs PyTorch's op in float32, same inputs, same upstream gradient."""
    wrt = _differentiable(inputs)
    ours_in = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    ref_in = [t.detach().clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    ours, ref = case.ours(*ours_in), case.reference(*ref_in)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1)).to(ours)
    ours_grads = torch.autograd.grad(ours, [ours_in[i] for i in wrt], upstream)
    ref_grads = torch.autograd.grad(ref, [ref_in[i] for i in wrt], upstream)
    pairs = [(ours, ref), *zip(ours_grads, ref_grads)]
    err = max(float((a - b).detach().abs().max()) for a, b in pairs)
    ok = all(torch.allclose(a, b, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL) for a, b in pairs)
    return CheckResult(case.name, "vs-torch-float32", err, ok)


def run_checks(device: torch.device | str = "cpu", seed: int = 0) -> list[CheckResult]:
    """All checks on all ops; see the module docstring.

    Args:
        device: where the tensors live (``cpu`` or ``cuda``).
        seed: seed of the random inputs.
    """
    device = torch.device(device)
    return [row for case in CASES for row in check_op(case, device, seed)]


def format_table(rows: Sequence[CheckResult]) -> str:
    """Render rows as a fixed-width text table."""
    width = max(len("op"), *(len(r.op) for r in rows))
    header = f"{'op':<{width}} {'check':<17} {'max abs error':>13}  passed"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.op:<{width}} {r.check:<17} {r.max_abs_error:>13.2e}  {'yes' if r.passed else 'NO'}")
    return "\n".join(lines)
