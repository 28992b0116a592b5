"""Compare a model's gradients across the three backends and against finite differences.

For one batch, every parameter's gradient is computed with ``builtin``, ``custom`` and ``manual``;
``custom`` and ``manual`` are each compared with ``builtin``. In float64 the ``builtin`` gradient is
also compared with centred finite differences on a random sample of entries, as CS231n's
``grad_check_sparse`` does, using the fourth-order centred stencil of
:mod:`mlp_torch.finite_difference` (step h = 1e-3):

    ∂ℓ/∂θ_k ≈ (−ℓ(θ + 2h e_k) + 8 ℓ(θ + h e_k) − 8 ℓ(θ − h e_k) + ℓ(θ − 2h e_k)) / 12h

The plain two-point quotient (ℓ(θ + h) − ℓ(θ − h)) / 2h has a truncation error ∝ h² and a rounding
error ∝ ε ℓ / h; in float64 their best sum is ~1e-10, too coarse for the tiny first-layer gradients
of a deep sigmoid net. The four-point stencil's truncation error is ∝ h⁴, so a larger h is allowed
and the rounding error falls to ~1e-13.

Errors, per parameter and pair (a = the checked gradient, b = the reference):

    max_abs = max |a − b|
    max_rel = max |a − b| / max(1e-8, |a| + |b|)        elementwise (CS231n's relative error)
    scaled  = max |a − b| / max(1e-8, max |b|)          relative to the tensor's scale

While training, ``--check-grads-every`` judges each layer by one number instead
(:func:`layer_errors`): ``‖a − b‖ / ‖b‖`` over the layer's weight and bias, ≈ 1e-7 in float32 when
the gradient is right and ≈ 1 when it is wrong; it passes below 1e-4 (float64: 1e-10).

The pass/fail tolerance (see :func:`tolerance_for`):

- backend pairs in float64: ``max_rel ≤ 1e-10``. The three paths do the same arithmetic in a
  different order, so they agree to ~1e-13 even elementwise.
- backend pairs in float32: ``scaled ≤ 1e-5``. Elementwise relative error is meaningless in float32
  for entries that are the sum of terms of both signs (a gradient of 1e-7 made of terms of 1e-2
  carries rounding noise of 1e-9, i.e. a "relative error" of 1e-2 that no code can avoid), so
  the error is measured against the tensor's scale instead, at ~100 float32 ulps.
- finite differences (float64 only): ``max_rel ≤ 1e-5``. The quotient carries ~1e-13 of rounding
  noise however good the code is; for an entry whose true gradient is ~0 (a unit that is nearly
  dead on the batch), the formula's 1e-8 floor turns that into a relative error of ~1e-5.
  Smooth nets typically show ≤ 1e-8 (CS231n: ≤ 1e-7 is good). ReLU and the perceptron criterion
  are piecewise linear: where the perturbation crosses a kink (a ReLU input or the perceptron's
  prediction changes between θ − 2h and θ + 2h), the quotient measures the jump, not the derivative,
  so those entries are skipped and counted in the row's note (never silently passed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .finite_difference import FOUR_POINT, quotient, values_along
from .models import BACKENDS, Classifier

PAIRS: tuple[str, ...] = ("custom-vs-builtin", "manual-vs-builtin", "finite-difference")
FD_STEP = 1e-3
TOL_BACKENDS_FLOAT64 = 1e-10  # on max_rel
TOL_BACKENDS_FLOAT32 = 1e-5  # on scaled
TOL_FINITE_DIFFERENCE = 1e-5  # on max_rel, float64 only
# layer_errors (a whole layer's relative error, used while training) passes below these
GRAD_CHECK_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}


@dataclass
class CompareRow:
    """One parameter, one pair of gradients."""

    param: str
    pair: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    scaled: float
    tol: float
    ok: bool
    verdict: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        row["shape"] = list(self.shape)
        return row


@dataclass
class CompareReport:
    """All rows, the loss each backend computed, and whether every row passed."""

    rows: list[CompareRow]
    losses: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "losses": self.losses, "rows": [row.to_dict() for row in self.rows]}


def errors(a: Tensor, b: Tensor) -> tuple[float, float, float]:
    """(max_abs, max_rel, scaled) between gradient ``a`` and reference ``b`` (formulas above)."""
    if a.numel() == 0:
        return 0.0, 0.0, 0.0
    diff = (a - b).abs()
    max_rel = (diff / (a.abs() + b.abs()).clamp_min(1e-8)).max().item()
    scaled = diff.max().item() / max(1e-8, b.abs().max().item())
    return diff.max().item(), max_rel, scaled


def layer_errors(model: Classifier, checked: dict[str, Tensor], reference: dict[str, Tensor]) -> list[float]:
    """Per layer, ``‖g − g_ref‖ / ‖g_ref‖`` over its weight and bias together (one sync for all layers).

    Scale-free and summed over the whole layer, this error is ≈ 1e-7 for float32 gradients that are
    right (rounding) and ≈ 1 for wrong ones, whatever the layer's gradient norm; the elementwise
    relative error is not (see the module docstring). A layer whose reference gradient is 0 has
    error 0 if the checked one is 0 too, else ∞.

    Args:
        model: the model the gradients belong to (for its layers' parameter names).
        checked: gradient per parameter name (``layers.{i}.weight``), as :func:`backend_gradients` returns.
        reference: the same for the reference path.
    """
    sums = []
    for i, layer in enumerate(model.layers):
        names = [f"layers.{i}.{name}" for name, _ in layer.named_parameters()]
        diff = sum((checked[n].double() - reference[n].double()).square().sum() for n in names)
        ref = sum(reference[n].double().square().sum() for n in names)
        sums.append(torch.stack([torch.as_tensor(diff), torch.as_tensor(ref)]))
    result = []
    for diff_sq, ref_sq in torch.stack(sums).tolist():
        if ref_sq > 0:
            result.append(math.sqrt(diff_sq / ref_sq))
        else:
            result.append(0.0 if diff_sq == 0 else math.inf)
    return result


def layer_error_tolerance(dtype: torch.dtype) -> float:
    """The pass threshold of :func:`layer_errors`: three orders of magnitude above rounding, far below 1."""
    return GRAD_CHECK_TOLERANCE.get(dtype, 1e-2)


def cs231n_verdict(rel: float) -> str:
    """CS231n's reading of a relative error."""
    if rel <= 1e-7:
        return "good"
    if rel <= 1e-4:
        return "ok for kinks, else suspect"
    if rel <= 1e-2:
        return "suspect"
    return "wrong"


def tolerance_for(pair: str, dtype: torch.dtype) -> tuple[str, float]:
    """Which error a pair is judged by and its tolerance (see the module docstring)."""
    if pair == "finite-difference":
        return "max_rel", TOL_FINITE_DIFFERENCE
    if dtype == torch.float64:
        return "max_rel", TOL_BACKENDS_FLOAT64
    return "scaled", TOL_BACKENDS_FLOAT32


def backend_gradients(
    model: Classifier, x: Tensor, target: Tensor, backend: str, class_weight: Tensor | None = None
) -> tuple[float, dict[str, Tensor]]:
    """Loss and fresh gradients of every parameter with one backend; existing ``.grad``s are kept."""
    params = dict(model.named_parameters())
    saved = {name: p.grad for name, p in params.items()}
    try:
        for p in params.values():
            p.grad = None
        loss, _ = model.compute_gradients(x, target, class_weight=class_weight, backend=backend)
        grads = {
            name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for name, p in params.items()
        }
    finally:
        for name, p in params.items():
            p.grad = saved[name]
    return loss.item(), grads


def finite_difference_gradients(
    model: Classifier,
    x: Tensor,
    target: Tensor,
    samples: int,
    step: float = FD_STEP,
    class_weight: Tensor | None = None,
    seed: int = 0,
) -> dict[str, tuple[Tensor, Tensor, int]]:
    """Fourth-order centred differences (module docstring) on ``samples`` random entries per parameter.

    Returns, per parameter name, the flat indices kept, their difference quotients, and how many
    sampled entries were dropped because ±h crossed a kink (``model.kink_pattern`` changed).
    """
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, tuple[Tensor, Tensor, int]] = {}

    def loss_and_kinks() -> tuple[Tensor, Tensor | None]:
        loss = model.loss(x, target, class_weight, backend="builtin").double()
        return loss, model.kink_pattern(x)

    with torch.no_grad():
        for name, p in model.named_parameters():
            picks = torch.randperm(p.numel(), generator=generator)[:samples].tolist()
            kept, quotients, skipped = [], [], 0
            for k in picks:
                losses, patterns = zip(*values_along(loss_and_kinks, p, k, step, FOUR_POINT))
                first = patterns[0]
                if first is not None and not all(q is not None and torch.equal(first, q) for q in patterns[1:]):
                    skipped += 1  # ±h crossed a kink: the quotient would measure the jump
                    continue
                kept.append(k)
                quotients.append(quotient(losses, step, FOUR_POINT).item())
            out[name] = (
                torch.tensor(kept, dtype=torch.long),
                torch.tensor(quotients, dtype=p.dtype),
                skipped,
            )
    return out


def compare_gradients(
    model: Classifier,
    x: Tensor,
    target: Tensor,
    class_weight: Tensor | None = None,
    fd_samples: int = 10,
    finite_differences: bool | None = None,
    seed: int = 0,
) -> CompareReport:
    """Gradients of every parameter with all three backends (and finite differences), compared.

    Args:
        model: any model from :mod:`mlp_torch.models`; its parameters and ``.grad`` are left as found.
        x: (N, in_features) inputs in the model's dtype and device.
        target: (N,) int64 class indices.
        class_weight: optional (C,) class weights, passed to every loss.
        fd_samples: entries per parameter checked with finite differences.
        finite_differences: compute them; default: only when the parameters are float64.
        seed: chooses the sampled entries.

    Returns:
        A report whose ``rows`` hold one :class:`CompareRow` per parameter and pair.
    """
    dtype = next(model.parameters()).dtype
    if finite_differences is None:
        finite_differences = dtype == torch.float64
    losses, grads = {}, {}
    for backend in BACKENDS:
        losses[backend], grads[backend] = backend_gradients(model, x, target, backend, class_weight)

    rows = []
    for name, reference in grads["builtin"].items():
        for other in ("custom", "manual"):
            rows.append(_row(name, f"{other}-vs-builtin", reference.shape, grads[other][name], reference, dtype))
    if finite_differences:
        fd = finite_difference_gradients(model, x, target, fd_samples, class_weight=class_weight, seed=seed)
        for name, (index, quotients, skipped) in fd.items():
            analytic = grads["builtin"][name].reshape(-1)[index.to(x.device)].cpu()
            note = f"{len(index)} sampled entries" + (f", {skipped} skipped: ±h crossed a kink" if skipped else "")
            rows.append(_row(name, "finite-difference", grads["builtin"][name].shape, analytic, quotients, dtype, note))
    return CompareReport(rows=rows, losses=losses)


def _row(
    name: str, pair: str, shape: torch.Size, a: Tensor, b: Tensor, dtype: torch.dtype, note: str = ""
) -> CompareRow:
    max_abs, max_rel, scaled = errors(a, b)
    metric, tol = tolerance_for(pair, dtype)
    err = max_rel if metric == "max_rel" else scaled
    ok = bool(err <= tol)  # a NaN error fails
    return CompareRow(name, pair, tuple(shape), max_abs, max_rel, scaled, tol, ok, cs231n_verdict(err), note)


def format_report(report: CompareReport) -> str:
    """A fixed-width table: one line per parameter and pair, then the verdict."""
    header = (
        f"{'param':<16} {'pair':<18} {'shape':<12} {'max|Δ|':>10} {'max rel':>10} {'scaled':>10} {'tol':>7}  verdict"
    )
    lines = [header, "-" * len(header)]
    for row in report.rows:
        shape = "x".join(map(str, row.shape))
        status = "PASS" if row.ok else "FAIL"
        note = f"  ({row.note})" if row.note else ""
        lines.append(
            f"{row.param:<16} {row.pair:<18} {shape:<12} {row.max_abs:>10.2e} {row.max_rel:>10.2e} "
            f"{row.scaled:>10.2e} {row.tol:>7.0e}  {status} {row.verdict}{note}"
        )
    losses = ", ".join(f"{b} {v:.10g}" for b, v in report.losses.items())
    lines.append(f"loss: {losses}")
    lines.append("all pairs within tolerance" if report.ok else "SOME PAIRS EXCEED THEIR TOLERANCE")
    return "\n".join(lines)
