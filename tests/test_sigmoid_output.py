"""The sigmoid-output network: ``sigmoid_binary_cross_entropy`` and ``output="sigmoid"`` on every model and backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mlp_torch import functional as mf
from mlp_torch.gradcheck import CASES, check_op

RTOL32, ATOL32 = 1e-5, 1e-6
REDUCTIONS = ["mean", "sum", "none"]


def bce(p: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(p, y.to(p.dtype), reduction=reduction)


# ---------------------------------------------------------------------------------------------
# The Function: float64 gradcheck, float32 against PyTorch, extreme scores
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_kind", ["labels", "probabilities"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gradcheck_and_gradgradcheck(device, n, reduction, target_kind, contiguous):
    torch.manual_seed(n)
    scores = 3 * torch.randn(2 * n, dtype=torch.float64, device=device)
    p = (scores[:n].clone() if contiguous else scores[::2]).requires_grad_()
    assert p.is_contiguous() == contiguous or n == 1
    if target_kind == "labels":
        y = torch.randint(0, 2, (n,), device=device)
        inputs: tuple[torch.Tensor, ...] = (p,)

        def fn(p):
            return mf.sigmoid_binary_cross_entropy(p, y, reduction)
    else:
        y = torch.rand(n, dtype=torch.float64, device=device, requires_grad=True)
        inputs = (p, y)

        def fn(p, y):
            return mf.sigmoid_binary_cross_entropy(p, y, reduction)

    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


def test_backward_is_y_hat_minus_y_over_n(device):
    """The slide's gradient, literally: dℓ/dp = (σ(p) − y) / N for the mean, σ(p) − y for each ℓ_n."""
    p = torch.tensor([-2.0, 0.0, 0.5, 3.0], dtype=torch.float64, device=device, requires_grad=True)
    y = torch.tensor([1, 0, 1, 0], device=device)
    (dp,) = torch.autograd.grad(mf.sigmoid_binary_cross_entropy(p, y), p)
    y_hat = 1 / (1 + torch.exp(-p.detach()))
    torch.testing.assert_close(dp, (y_hat - y) / 4, rtol=1e-15, atol=0)
    losses = mf.sigmoid_binary_cross_entropy(p, y, "none")
    torch.testing.assert_close(losses, -(y * y_hat.log() + (1 - y) * (1 - y_hat).log()), rtol=1e-14, atol=0)
    assert type(losses.grad_fn).__name__ == "SigmoidBinaryCrossEntropyFunctionBackward"


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch_float32(device, reduction):
    torch.manual_seed(0)
    p = 4 * torch.randn(64, device=device)
    labels = torch.randint(0, 2, (64,), device=device)
    soft = torch.rand(64, device=device)
    for y in (labels, soft):
        ours_p, ref_p = p.clone().requires_grad_(), p.clone().requires_grad_()
        ours, ref = mf.sigmoid_binary_cross_entropy(ours_p, y, reduction), bce(ref_p, y, reduction)
        torch.testing.assert_close(ours, ref, rtol=RTOL32, atol=ATOL32)
        up = torch.randn_like(ours)
        (ours_dp,) = torch.autograd.grad(ours, ours_p, up)
        (ref_dp,) = torch.autograd.grad(ref, ref_p, up)
        torch.testing.assert_close(ours_dp, ref_dp, rtol=RTOL32, atol=ATOL32)


def test_extreme_scores_float32(device):
    """±1e4 and ±100 in float32, each with both labels: the float64 truth, rounded, and no log(0)."""
    p = torch.tensor([1e4, 1e4, -1e4, -1e4, 100.0, 100.0, -100.0, -100.0, 20.0, -20.0], device=device)
    y = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 1, 0], device=device)
    p.requires_grad_()
    losses = mf.sigmoid_binary_cross_entropy(p, y, "none")
    (dp,) = torch.autograd.grad(losses.sum(), p)
    assert torch.isfinite(losses).all() and torch.isfinite(dp).all()
    # the truth, case by case in float64: ℓ = |p| + log(1 + e^{−|p|}) on the wrong side, log(1 + e^{−|p|}) on the right
    p64 = p.detach().double()
    wrong_side = (p64 > 0) != (y == 1)
    exact = torch.where(wrong_side, p64.abs(), 0.0) + torch.log1p(torch.exp(-p64.abs()))
    torch.testing.assert_close(losses.double(), exact, rtol=2**-23, atol=1e-44)
    # ŷ − y: −1 or +1 where the answer is confidently wrong, 0 where it is confidently right
    expected = torch.tensor([0.0, 1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.0], device=device)
    torch.testing.assert_close(dp[:8], expected, rtol=0, atol=1e-30)
    # elsewhere ŷ − y is exact up to the rounding of ŷ to float32 (σ(20) rounds to 1: ŷ − y = 0, not −2e-9)
    torch.testing.assert_close(dp.double(), torch.sigmoid(p64) - y, rtol=2**-23, atol=2**-24)
    # and against PyTorch's own op in float32 (which flushes ℓ(−20, y=0) = 2e-9 to 0: our value is nearer)
    torch.testing.assert_close(losses, bce(p.detach(), y, "none"), rtol=RTOL32, atol=ATOL32)
    # the formula on the slide, evaluated as written, takes log(0) there
    y_hat = torch.sigmoid(p.detach())
    naive = -(y * y_hat.log() + (1 - y) * (1 - y_hat).log())
    assert not torch.isfinite(naive).all()


def test_empty_batch(device):
    p = torch.zeros(0, device=device, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long, device=device)
    assert torch.isnan(mf.sigmoid_binary_cross_entropy(p, y))
    assert mf.sigmoid_binary_cross_entropy(p, y, "sum").item() == 0.0
    assert mf.sigmoid_binary_cross_entropy(p, y, "none").shape == (0,)


def test_saves_only_its_inputs():
    p = torch.randn(5, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        mf.sigmoid_binary_cross_entropy(p, y)
    assert len(saved) == 2 and saved[0] is p and torch.equal(saved[1], y.float())


@pytest.mark.parametrize(
    "p,y,reduction,error,match",
    [
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), "mean", ValueError, "p must be 1-D"),
        (torch.zeros(3), torch.zeros(3, 1, dtype=torch.long), "mean", ValueError, "y must be 1-D"),
        (torch.zeros(3), torch.zeros(2, dtype=torch.long), "mean", ValueError, "2 labels but"),
        (torch.zeros(3), torch.tensor([0, 1, 2]), "mean", ValueError, "target 2 out of range for 2 classes"),
        (torch.zeros(3), torch.tensor([0, -1, 1]), "mean", ValueError, "target -1 out of range"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.float64), "mean", TypeError, "dtype"),
        (torch.zeros(3), torch.zeros(2), "mean", ValueError, "2 labels but p has 3"),
        (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), "mean", TypeError, "floating"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), "avg", ValueError, "reduction"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long, device="meta"), "mean", ValueError, "one device"),
    ],
)
def test_bad_input(p, y, reduction, error, match):
    with pytest.raises(error, match=match):
        mf.sigmoid_binary_cross_entropy(p, y, reduction)


def test_listed_by_gradcheck_and_its_checks_can_fail(monkeypatch):
    cases = [case for case in CASES if case.name.startswith("sigmoid_binary_cross_entropy")]
    assert [case.name for case in cases] == ["sigmoid_binary_cross_entropy", "sigmoid_binary_cross_entropy[soft]"]
    for case in cases:
        rows = check_op(case, torch.device("cpu"))
        assert [r.check for r in rows] == ["gradcheck", "gradgradcheck", "vs-torch-float32"]
        assert all(r.passed for r in rows), rows
    original = mf.SigmoidBinaryCrossEntropyFunction.backward

    def wrong(ctx, dloss):  # ŷ − y scaled by 1.01: a small mistake the checks must still see
        dp, dy, none = original(ctx, dloss)
        return 1.01 * dp, dy, none

    monkeypatch.setattr(mf.SigmoidBinaryCrossEntropyFunction, "backward", staticmethod(wrong))
    rows = check_op(cases[0], torch.device("cpu"))
    assert not any(r.passed for r in rows if r.check in ("gradcheck", "vs-torch-float32"))
