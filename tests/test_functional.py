"""The hand-written Functions against finite differences (float64) and PyTorch's own ops (float32)."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mlp_torch import functional as mf
from mlp_torch.gradcheck import run_checks

# float32 comparisons with PyTorch: a few ulps relative, plus an absolute floor near zero.
RTOL32, ATOL32 = 1e-5, 1e-6

ELEMENTWISE = [
    (mf.sigmoid, torch.sigmoid),
    (mf.tanh, torch.tanh),
    (mf.relu, F.relu),
]
ELEMENTWISE_IDS = ["sigmoid", "tanh", "relu"]


def away_from_zero(*shape: int, device: torch.device, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random values with |x| ≥ 0.05: finite differences never straddle relu's or step's kink."""
    x = torch.randn(*shape, dtype=dtype, device=device)
    return x.sign() * (x.abs() + 0.05)


def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values as ``x`` in a non-contiguous layout: every other column of a wider tensor."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x.detach()
    y = wide[..., ::2]
    assert not y.is_contiguous()
    return y.requires_grad_(x.requires_grad)


# ---------------------------------------------------------------------------------------------
# float64 gradcheck / gradgradcheck
# ---------------------------------------------------------------------------------------------

LINEAR_SHAPES = [(1, 3, 2), (4, 5, 2), (3, 7, 50)]  # (N, in, out): N = 1, two outputs, many outputs


@pytest.mark.parametrize("n,d_in,d_out", LINEAR_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_gradcheck(device, n, d_in, d_out, contiguous, with_bias):
    torch.manual_seed(0)
    x = torch.randn(n, d_in, dtype=torch.float64, device=device, requires_grad=True)
    w = torch.randn(d_out, d_in, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(d_out, dtype=torch.float64, device=device, requires_grad=True) if with_bias else None
    if not contiguous:
        x, w = non_contiguous(x), non_contiguous(w)
    inputs = (x, w, b)
    assert gradcheck(mf.linear, inputs)
    assert gradgradcheck(mf.linear, inputs)


@pytest.mark.parametrize("shape", [(1, 2), (4, 5), (3, 200)])
@pytest.mark.parametrize("ours,_ref", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_activation_gradcheck(device, shape, ours, _ref):
    torch.manual_seed(0)
    x = away_from_zero(*shape, device=device).requires_grad_()
    assert gradcheck(ours, (x,))
    assert gradgradcheck(ours, (x,))
    assert gradcheck(ours, (non_contiguous(x),))


def test_step_gradcheck_and_zero_gradient(device):
    x = away_from_zero(4, 5, device=device).requires_grad_()
    assert gradcheck(mf.step, (x,))
    (dx,) = torch.autograd.grad(mf.step(x).sum(), x)
    assert torch.equal(dx, torch.zeros_like(x))
    assert torch.equal(mf.step(x), (x > 0).to(x.dtype))
    assert mf.step(torch.zeros(1, device=device)).item() == 0.0  # f(0) = 0: "1 if x > 0"


SCE_SHAPES = [(1, 2), (5, 2), (4, 7), (3, 1000)]  # N = 1, C = 2, large C


@pytest.mark.parametrize("n,c", SCE_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["index", "onehot", "soft"])
def test_softmax_cross_entropy_gradcheck(device, n, c, reduction, target_kind):
    torch.manual_seed(0)
    logits = (3 * torch.randn(n, c, dtype=torch.float64, device=device)).requires_grad_()
    labels = torch.randint(0, c, (n,), device=device)
    if target_kind == "index":
        target = labels
    elif target_kind == "onehot":
        target = F.one_hot(labels, c).to(torch.float64)
    else:
        target = torch.softmax(torch.randn(n, c, dtype=torch.float64, device=device), 1).requires_grad_()

    def loss(a, t=target):
        return mf.softmax_cross_entropy(a, t, reduction)

    fast = c > 100  # large C: gradcheck's fast mode checks random projections of the Jacobian
    assert gradcheck(loss, (logits,), fast_mode=fast)
    assert gradgradcheck(loss, (logits,), fast_mode=fast)
    assert gradcheck(loss, (non_contiguous(logits),), fast_mode=fast)
    if target_kind == "soft":  # the gradient with respect to soft targets is −log ŷ
        both = (logits, target)
        assert gradcheck(lambda a, t: mf.softmax_cross_entropy(a, t, reduction), both, fast_mode=fast)
        assert gradgradcheck(lambda a, t: mf.softmax_cross_entropy(a, t, reduction), both, fast_mode=fast)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_class_weights(device, reduction):
    torch.manual_seed(0)
    logits = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.tensor([0, 1, 2, 2, 1, 2], device=device)
    weight = torch.tensor([0.5, 2.0, 1.5], dtype=torch.float64, device=device)
    ours = mf.softmax_cross_entropy(logits, target, reduction, weight=weight)
    ref = F.cross_entropy(logits, target, weight=weight, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    up = torch.randn_like(ours)
    torch.testing.assert_close(
        torch.autograd.grad(ours, logits, up)[0], torch.autograd.grad(ref, logits, up)[0], rtol=1e-12, atol=1e-12
    )
    assert gradcheck(lambda a: mf.softmax_cross_entropy(a, target, reduction, weight=weight), (logits,))
    soft = F.one_hot(target, 3).to(torch.float64)
    torch.testing.assert_close(
        mf.softmax_cross_entropy(logits, soft, reduction, weight=weight),
        F.cross_entropy(logits, soft, weight=weight, reduction=reduction),
        rtol=1e-12,
        atol=1e-12,
    )


def test_lecture_gradient_formula(device):
    """dℓ/da = ŷ − y, dℓ/dW = (ŷ − y) xᵀ, dℓ/db = ŷ − y for one sample, as on the slides."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, dtype=torch.float64, device=device)
    W = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    label = torch.tensor([2], device=device)
    a = mf.linear(x, W, b)
    loss = mf.softmax_cross_entropy(a, label)
    dW, db = torch.autograd.grad(loss, (W, b))
    y_hat = torch.softmax(a.detach(), 1)[0]
    y = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device)
    torch.testing.assert_close(db, y_hat - y, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(dW, torch.outer(y_hat - y, x[0]), rtol=1e-14, atol=1e-15)


def test_index_target_backward_is_y_hat_minus_y_over_n(device):
    """The lecture's case has its own Function, whose backward is literally (softmax(a) − onehot(y)) / N."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(7, 4, dtype=torch.float64, device=device)).requires_grad_()
    target = torch.randint(0, 4, (7,), device=device)
    loss = mf.softmax_cross_entropy(logits, target)
    assert type(loss.grad_fn).__name__ == "SoftmaxCrossEntropyFunctionBackward"
    (da,) = torch.autograd.grad(loss, logits)
    y_hat, y = torch.softmax(logits.detach(), 1), F.one_hot(target, 4).to(torch.float64)
    assert torch.equal(da, (y_hat - y) / 7)
    (da_sum,) = torch.autograd.grad(mf.softmax_cross_entropy(logits, target, "sum"), logits)
    assert torch.equal(da_sum, y_hat - y)
    # class weights and probability targets take the general Function instead
    weighted = mf.softmax_cross_entropy(
        logits, target, "none", weight=torch.ones(4, dtype=torch.float64, device=device)
    )
    soft = mf.softmax_cross_entropy(logits, y, "none")
    for losses in (weighted, soft):
        assert type(losses.grad_fn).__name__ == "WeightedSoftTargetCrossEntropyFunctionBackward"


# ---------------------------------------------------------------------------------------------
# float32 against PyTorch, including extreme inputs
# ---------------------------------------------------------------------------------------------


def assert_same_forward_backward(ours_fn, ref_fn, *inputs, rtol=RTOL32, atol=ATOL32):
    ours_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ref_in = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    ours, ref = ours_fn(*ours_in), ref_fn(*ref_in)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    up = torch.randn_like(ours)
    diff = [i for i, t in enumerate(inputs) if t.is_floating_point()]
    ours_g = torch.autograd.grad(ours, [ours_in[i] for i in diff], up)
    ref_g = torch.autograd.grad(ref, [ref_in[i] for i in diff], up)
    for a, b in zip(ours_g, ref_g):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_linear_matches_torch_float32(device):
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, device=device) for s in [(8, 16), (5, 16), (5,)])
    assert_same_forward_backward(mf.linear, F.linear, x, w, b)
    assert_same_forward_backward(lambda x, w: mf.linear(x, w), F.linear, x, w)


@pytest.mark.parametrize("ours,ref", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_activation_matches_torch_float32(device, ours, ref):
    torch.manual_seed(0)
    x = 5 * torch.randn(64, 33, device=device)
    assert_same_forward_backward(ours, ref, x)


@pytest.mark.parametrize("ours,ref", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_activation_extreme_inputs(device, ours, ref):
    x = torch.tensor([-400.0, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 400.0], device=device)
    assert_same_forward_backward(ours, ref, x)
    exact = ref(x.double())  # the float64 value is the truth the float32 result must round to
    torch.testing.assert_close(ours(x).double(), exact, rtol=2**-23, atol=1e-44)


def test_sigmoid_is_stable_where_the_naive_formula_overflows(device):
    x = torch.tensor([-400.0, -120.0, 0.0, 120.0, 400.0], device=device, requires_grad=True)
    h = mf.sigmoid(x)
    (dx,) = torch.autograd.grad(h.sum(), x)
    assert torch.isfinite(h).all() and torch.isfinite(dx).all()
    assert h[0] == 0.0 and h[-1] == 1.0 and h[2] == 0.5
    torch.testing.assert_close(dx, torch.tensor([0.0, 0.0, 0.25, 0.0, 0.0], device=device), rtol=0, atol=1e-30)
    # σ'(z) written as e^{−z} / (1 + e^{−z})² is inf/inf at z = −400 in float32:
    e = torch.exp(-x.detach())
    assert torch.isnan(e / (1 + e) ** 2)[0]


EXTREME_LOGITS = {
    "plus-minus-1e4": torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [1e4, 1e4, -1e4]]),
    "all-equal": torch.full((4, 5), 7.0),
    "one-huge": torch.tensor([[0.0, 0.0, 3e4, 0.0], [1.0, -2.0, 0.5, 3e4]]),
    "around-90": torch.tensor([[90.0, 89.0, -90.0], [-95.0, -92.0, -91.0]]),
}


@pytest.mark.parametrize("name", list(EXTREME_LOGITS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_extreme_logits(device, name, reduction):
    logits = EXTREME_LOGITS[name].to(device)
    target = torch.arange(logits.shape[0], device=device) % logits.shape[1]
    assert_same_forward_backward(
        lambda a: mf.softmax_cross_entropy(a, target, reduction),
        lambda a: F.cross_entropy(a, target, reduction=reduction),
        logits,
    )


def test_softmax_cross_entropy_finite_where_naive_softmax_is_nan(device):
    logits = torch.tensor([[1e4, -1e4, 0.0], [90.0, 95.0, 100.0]], device=device, requires_grad=True)
    target = torch.tensor([0, 1], device=device)
    naive = torch.exp(logits.detach()) / torch.exp(logits.detach()).sum(1, keepdim=True)
    assert torch.isnan(naive).any()
    loss = mf.softmax_cross_entropy(logits, target, "none")
    (da,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(da).all()
    exact = torch.logsumexp(logits.detach().double(), 1) - logits.detach().double()[[0, 1], target]
    torch.testing.assert_close(loss.double(), exact, rtol=RTOL32, atol=ATOL32)
    # ŷ − y: row 0 predicts class 0 with certainty, so its gradient is exactly 0
    assert torch.equal(da[0], torch.zeros(3, device=device))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_cross_entropy_matches_torch_float32(device, reduction):
    torch.manual_seed(0)
    logits = 4 * torch.randn(32, 10, device=device)
    labels = torch.randint(0, 10, (32,), device=device)
    soft = torch.softmax(torch.randn(32, 10, device=device), 1)
    for target in (labels, soft):
        assert_same_forward_backward(
            lambda a, t=target: mf.softmax_cross_entropy(a, t, reduction),
            lambda a, t=target: F.cross_entropy(a, t, reduction=reduction),
            logits,
        )


def test_empty_batch(device):
    logits = torch.zeros(0, 3, device=device, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long, device=device)
    assert torch.isnan(mf.softmax_cross_entropy(logits, target))
    assert mf.softmax_cross_entropy(logits, target, "sum").item() == 0.0
    assert mf.softmax_cross_entropy(logits, target, "none").shape == (0,)
    (da,) = torch.autograd.grad(mf.softmax_cross_entropy(logits, target, "sum"), logits)
    assert da.shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# What each Function saves for backward
# ---------------------------------------------------------------------------------------------


def saved_tensors_of(fn, *inputs):
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*inputs)
    return out, saved


@pytest.mark.parametrize("fn", [mf.sigmoid, mf.tanh, mf.relu], ids=["sigmoid", "tanh", "relu"])
def test_activations_save_only_their_output(fn):
    x = torch.randn(4, 3, requires_grad=True)
    out, saved = saved_tensors_of(fn, x)
    assert len(saved) == 1 and saved[0] is out


def test_step_saves_nothing_and_linear_saves_only_what_is_needed():
    x = torch.randn(4, 3, requires_grad=True)
    assert saved_tensors_of(mf.step, x)[1] == []
    w = torch.randn(2, 3, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    _, saved = saved_tensors_of(mf.linear, x.detach(), w, b)  # no dx wanted: W is not needed
    assert len(saved) == 1 and saved[0] is not w


# ---------------------------------------------------------------------------------------------
# torch.func and torch.compile
# ---------------------------------------------------------------------------------------------


def test_vmap_grad_per_sample_gradients(device):
    torch.manual_seed(0)
    n, d, h, c = 6, 5, 4, 3
    params = {
        "W1": torch.randn(h, d, dtype=torch.float64, device=device),
        "b1": torch.randn(h, dtype=torch.float64, device=device),
        "W2": torch.randn(c, h, dtype=torch.float64, device=device),
        "b2": torch.randn(c, dtype=torch.float64, device=device),
    }
    x = torch.randn(n, d, dtype=torch.float64, device=device)
    y = torch.randint(0, c, (n,), device=device)

    def loss(p, xi, yi):
        a1 = mf.sigmoid(mf.linear(xi[None], p["W1"], p["b1"]))
        return mf.softmax_cross_entropy(mf.linear(a1, p["W2"], p["b2"]), yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(n):
        looped = torch.func.grad(loss)(params, x[i], y[i])
        for name in params:
            torch.testing.assert_close(per_sample[name][i], looped[name], rtol=1e-12, atol=1e-14)

    # and they match PyTorch's own ops
    def ref_loss(p, xi, yi):
        a1 = torch.sigmoid(F.linear(xi[None], p["W1"], p["b1"]))
        return F.cross_entropy(F.linear(a1, p["W2"], p["b2"]), yi[None])

    ref = torch.func.vmap(torch.func.grad(ref_loss), in_dims=(None, 0, 0))(params, x, y)
    for name in params:
        torch.testing.assert_close(per_sample[name], ref[name], rtol=1e-12, atol=1e-14)


def test_target_range_is_checked_under_vmap():
    """The range check reads the targets under torch.func transforms too (through public API)."""
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 3, 2])

    def loss(a, t):
        return mf.softmax_cross_entropy(a[None], t[None])

    with pytest.raises(ValueError, match="target 3 out of range for 3 classes"):
        torch.func.vmap(loss)(logits, target)
    with pytest.raises(ValueError, match="target 3 out of range for 3 classes"):
        torch.func.vmap(torch.func.grad(loss))(logits, target)


def test_ops_use_no_private_torch_api():
    source = inspect.getsource(mf)
    assert not re.search(r"torch\._|\b_C\b", source), re.findall(r"torch\._\w+(?:\.\w+)*", source)


@pytest.mark.slow
def test_training_step_under_torch_compile_fullgraph():
    torch.manual_seed(0)
    W = torch.randn(3, 8, requires_grad=True)
    b = torch.zeros(3, requires_grad=True)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))

    def step_loss(x, y):
        return mf.softmax_cross_entropy(mf.linear(mf.sigmoid(x), W, b), y)

    compiled = torch.compile(step_loss, fullgraph=True)
    loss_c = compiled(x, y)
    dW_c, db_c = torch.autograd.grad(loss_c, (W, b))
    loss_e = step_loss(x, y)
    dW_e, db_e = torch.autograd.grad(loss_e, (W, b))
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(dW_c, dW_e)
    torch.testing.assert_close(db_c, db_e)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_target_out_of_range_message():
    with pytest.raises(ValueError, match="target 7 out of range for 3 classes"):
        mf.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="target -1 out of range for 3 classes"):
        mf.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([-1, 2]))


@pytest.mark.parametrize(
    "logits,target,error,match",
    [
        (torch.zeros(2, 3), torch.tensor([0, 1, 2]), ValueError, "3 labels but logits have 2 rows"),
        (torch.zeros(2, 3), torch.tensor([0.0, 1.0]), TypeError, "integer tensor"),
        (torch.zeros(6), torch.tensor([0, 1]), ValueError, "logits must be 2-D"),
        (torch.zeros(2, 3, 1), torch.tensor([0, 1]), ValueError, "logits must be 2-D"),
        (torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]), TypeError, "floating point"),
        (torch.zeros(2, 3), torch.zeros(2, 4), ValueError, "logits' shape"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), TypeError, "logits' dtype"),
        (torch.zeros(2, 3), torch.zeros(2, 3, 1), ValueError, "class indices"),
    ],
)
def test_softmax_cross_entropy_bad_input(logits, target, error, match):
    with pytest.raises(error, match=match):
        mf.softmax_cross_entropy(logits, target)


def test_bad_reduction_and_weight():
    with pytest.raises(ValueError, match="reduction must be one of"):
        mf.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), "average")
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        mf.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), weight=torch.ones(2))


def test_linear_bad_input():
    with pytest.raises(ValueError, match="x has 4 features but weight expects 3"):
        mf.linear(torch.zeros(2, 4), torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        mf.linear(torch.zeros(2, 3), torch.zeros(5, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="x is torch.float32 but weight is torch.float64"):
        mf.linear(torch.zeros(2, 3), torch.zeros(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="linear expects x"):
        mf.linear(torch.zeros(3), torch.zeros(5, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_mismatch():
    with pytest.raises(ValueError, match="target is on cpu but logits are on cuda"):
        mf.softmax_cross_entropy(torch.zeros(2, 3, device="cuda"), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="move both to one device"):
        mf.linear(torch.zeros(2, 3, device="cuda"), torch.zeros(5, 3))


def test_device_mismatch_meta():
    """Same check without a GPU: the meta device stands in for a second device."""
    with pytest.raises(ValueError, match="target is on meta but logits are on cpu"):
        mf.softmax_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="move both to one device"):
        mf.linear(torch.zeros(2, 3), torch.zeros(5, 3, device="meta"))


# ---------------------------------------------------------------------------------------------
# The gradcheck command's library
# ---------------------------------------------------------------------------------------------


def test_run_checks_all_pass_and_cover_every_op(device):
    rows = run_checks(device)
    assert all(r.passed for r in rows), [r for r in rows if not r.passed]
    ops = {r.op for r in rows}
    assert {"linear", "sigmoid", "tanh", "relu", "step", "softmax_cross_entropy"} <= ops
    assert {r.check for r in rows} == {"gradcheck", "gradgradcheck", "vs-torch-float32"}
    assert all(r.max_abs_error < 1e-5 for r in rows)


def test_run_checks_detects_a_wrong_backward(monkeypatch):
    """The checker can fail: break sigmoid's backward by a factor of 2 and the rows say so."""
    original = mf.SigmoidFunction.backward

    def wrong(ctx, dh):
        return 2 * original(ctx, dh)

    monkeypatch.setattr(mf.SigmoidFunction, "backward", staticmethod(wrong))
    rows = [r for r in run_checks("cpu") if r.op == "sigmoid"]
    assert not any(r.passed for r in rows if r.check in ("gradcheck", "vs-torch-float32"))
