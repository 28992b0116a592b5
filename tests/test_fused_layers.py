"""Whole layers as one Function: the same numbers as the single-op Functions composed, and checked alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mlp_torch import functional as mf
from mlp_torch.models import MLP, LinearSoftmax
from mlp_torch.models.activations import ACTIVATION_TABLE, ACTIVATIONS

FUSED = {"sigmoid": mf.linear_sigmoid, "tanh": mf.linear_tanh, "relu": mf.linear_relu}
SINGLE = {"tanh": mf.tanh, "relu": mf.relu}


def layer_inputs(n: int, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype = torch.float64):
    """x, W, b with every pre-activation |x Wᵀ + b| ≥ 0.05: finite differences never straddle relu's kink."""
    g = torch.Generator().manual_seed(0)
    while True:
        x, w = torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(d_out, d_in, generator=g).double()
        b = torch.randn(d_out, generator=g, dtype=torch.float64)
        if torch.addmm(b, x, w.T).abs().min() >= 0.05:
            return tuple(t.to(device=device, dtype=dtype) for t in (x, w, b))


def grads(fn, inputs: tuple[torch.Tensor, ...], wanted: tuple[bool, ...], upstream_seed: int = 1):
    """The output and the gradients of ``(out · u).sum()`` for a fixed random ``u``, for the inputs wanted."""
    leaves = [t.detach().clone().requires_grad_(w) for t, w in zip(inputs, wanted)]
    out = fn(*leaves)
    u = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=out.dtype).to(out)
    got = torch.autograd.grad((out * u).sum(), [t for t, w in zip(leaves, wanted) if w])
    return out.detach(), got


# ---------------------------------------------------------------------------------------------
# Hidden layers: h = f(x Wᵀ + b)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tanh", "relu"])
@pytest.mark.parametrize("x_needs_grad", [True, False], ids=["dx", "first-layer"])
def test_fused_layer_is_bitwise_the_composed_ops(device, name, x_needs_grad):
    """Same addmm, same activation kernel, same backward formulas: the same bits, forward and backward."""
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, device=device) for s in [(16, 24), (8, 24), (8,)])
    wanted = (x_needs_grad, True, True)
    fused_out, fused_grads = grads(FUSED[name], (x, w, b), wanted)
    ref_out, ref_grads = grads(lambda x, w, b: SINGLE[name](mf.linear(x, w, b)), (x, w, b), wanted)
    assert torch.equal(fused_out, ref_out)
    assert all(torch.equal(g, r) for g, r in zip(fused_grads, ref_grads))


@pytest.mark.parametrize("x_needs_grad", [True, False], ids=["dx", "first-layer"])
def test_sigmoid_layer_is_bitwise_torch_sigmoid_then_the_lecture_backward(device, x_needs_grad):
    """Forward: torch.sigmoid's bits; backward: da = (1 − h) ⊙ h ⊙ dh, then linear's backward, bit for bit."""
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, device=device) for s in [(16, 24), (8, 24), (8,)])
    wanted = (x_needs_grad, True, True)
    fused_out, fused_grads = grads(mf.linear_sigmoid, (x, w, b), wanted)
    leaves = [t.clone().requires_grad_(need) for t, need in zip((x, w, b), wanted)]
    a = mf.linear(*leaves)
    h = torch.sigmoid(a.detach())
    dh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)).to(h)  # grads()'s upstream u
    ref_grads = torch.autograd.grad(a, [t for t in leaves if t.requires_grad], (1 - h) * h * dh)
    assert torch.equal(fused_out, h)
    assert all(torch.equal(g, r) for g, r in zip(fused_grads, ref_grads))


@pytest.mark.parametrize("name", ACTIVATIONS)
@pytest.mark.parametrize("n,d_in,d_out", [(1, 3, 2), (4, 5, 3), (3, 7, 20)])
def test_fused_layer_gradcheck(device, name, n, d_in, d_out):
    x, w, b = (t.requires_grad_() for t in layer_inputs(n, d_in, d_out, device))
    assert gradcheck(FUSED[name], (x, w, b))
    assert gradgradcheck(FUSED[name], (x, w, b))
    strided = torch.zeros(n, 2 * d_in, dtype=x.dtype, device=device)[:, ::2].copy_(x.detach()).requires_grad_()
    assert not strided.is_contiguous()
    assert gradcheck(FUSED[name], (strided, w, b))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_fused_layer_matches_torch_float32(device, name):
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, device=device) for s in [(32, 40), (12, 40), (12,)])
    builtin = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu}[name]
    ours_out, ours_grads = grads(FUSED[name], (x, w, b), (True, True, True))
    ref_out, ref_grads = grads(lambda x, w, b: builtin(F.linear(x, w, b)), (x, w, b), (True, True, True))
    torch.testing.assert_close(ours_out, ref_out, rtol=1e-5, atol=1e-6)
    for g, r in zip(ours_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def saved_by(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*inputs)
    return saved


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_fused_layer_saves_x_for_dW_w_for_dx_and_its_output(name):
    x, w, b = torch.randn(4, 3), torch.randn(2, 3, requires_grad=True), torch.randn(2, requires_grad=True)
    first = saved_by(FUSED[name], x, w, b)  # the first layer: nobody wants dx, so W is not kept
    assert len(first) == 2 and first[0] is x and not any(t is w for t in first)
    hidden = saved_by(FUSED[name], x.requires_grad_(), w, b)
    assert len(hidden) == 3 and hidden[0] is x and hidden[1] is w
    frozen = saved_by(FUSED[name], x, w.detach(), b)  # no dW wanted: x is not kept (only W and h)
    assert len(frozen) == 2 and not any(t is x for t in frozen)


def sigmoid_layer(a: torch.Tensor) -> torch.Tensor:
    return mf.linear_sigmoid(a[:, None], torch.ones(1, 1), torch.zeros(1))[:, 0]  # σ(1·a + 0)


def test_sigmoid_layer_is_bitwise_torch_sigmoid_to_the_extremes():
    """The layer takes torch.sigmoid's bits everywhere (the builtin and manual paths' values), flushing
    σ(a) to 0 below a ≈ −88.7 as it does; the single-op sigmoid is the one that keeps the subnormals."""
    g = torch.Generator().manual_seed(0)
    a = torch.cat([torch.linspace(-110.0, 30.0, 200_001), 8 * torch.randn(50_000, generator=g)])
    a = torch.cat([a, torch.tensor([-400.0, -100.0, -88.8, 0.0, 400.0])])
    assert torch.equal(sigmoid_layer(a), torch.sigmoid(a))
    assert sigmoid_layer(torch.tensor([-100.0])) == 0 and mf.sigmoid(torch.tensor([-100.0])) > 0


def test_sigmoid_is_within_an_ulp_or_two_everywhere():
    """The single op: within 2.5 ulp of float64's σ over a dense sweep, and within one step of the
    spacing of the subnormals in their range (a < −87.3)."""
    a = torch.cat([torch.linspace(-110.0, 30.0, 400_001), 8 * torch.randn(100_000, generator=torch.Generator())])
    exact = torch.sigmoid(a.double())
    spacing = torch.exp2(torch.floor(torch.log2(exact)).clamp(min=-126) - 23)  # float32's ulp at σ(a)
    error = (mf.sigmoid(a).double() - exact).abs() / spacing
    assert error[exact >= 2**-126].max() <= 2.5
    assert error[exact < 2**-126].max() <= 1.0


# ---------------------------------------------------------------------------------------------
# The output layer and the loss: (ℓ, a) = linear_softmax_cross_entropy(x, W, b, y)
# ---------------------------------------------------------------------------------------------


def composed(x, w, b, y):
    logits = mf.linear(x, w, b)
    return mf.softmax_cross_entropy(logits, y), logits


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("x_needs_grad", [True, False])
def test_output_layer_equals_the_composed_ops(device, dtype, tol, x_needs_grad):
    torch.manual_seed(0)
    x, w, b = (3 * torch.randn(*s, device=device, dtype=dtype) for s in [(9, 7), (4, 7), (4,)])
    y = torch.randint(0, 4, (9,), device=device)
    results = []
    for fn in (mf.linear_softmax_cross_entropy, composed):
        leaves = [x.clone().requires_grad_(x_needs_grad), w.clone().requires_grad_(), b.clone().requires_grad_()]
        loss, logits = fn(*leaves, y)
        (loss + (logits * logits).sum() / 100).backward()  # a gradient through the logits too
        results.append([loss.detach(), logits.detach(), *(t.grad for t in leaves if t.requires_grad)])
    assert len(results[0]) == len(results[1]) == (5 if x_needs_grad else 4)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_output_layer_backward_is_the_lecture_formula():
    """One sample: dℓ/db = ŷ − y and dℓ/dW = (ŷ − y) xᵀ, as on the slides."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, dtype=torch.float64)
    W = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    loss, logits = mf.linear_softmax_cross_entropy(x, W, b, torch.tensor([2]))
    dW, db = torch.autograd.grad(loss, (W, b))
    y_hat, y = torch.softmax(logits.detach(), 1)[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(db, y_hat - y, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(dW, torch.outer(y_hat - y, x[0]), rtol=1e-14, atol=1e-15)


def test_output_layer_gradcheck_through_loss_and_logits(device):
    torch.manual_seed(0)
    x, w, b = (torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True) for s in [(5, 6), (3, 6), (3,)])
    y = torch.tensor([0, 2, 1, 2, 0], device=device)

    def both(x, w, b):
        loss, logits = mf.linear_softmax_cross_entropy(x, w, b, y)
        return torch.cat([loss[None], logits.reshape(-1)])

    assert gradcheck(both, (x, w, b))
    assert gradgradcheck(both, (x, w, b))
    only_logits = torch.autograd.grad(mf.linear_softmax_cross_entropy(x, w, b, y)[1].sum(), w)[0]  # ℓ unused
    torch.testing.assert_close(only_logits, x.detach().sum(0).expand(3, 6), rtol=1e-14, atol=1e-14)


def test_output_layer_is_finite_at_extreme_logits():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [90.0, 95.0]], requires_grad=True)
    y = torch.tensor([0, 1, 2])
    loss, _ = mf.linear_softmax_cross_entropy(x, w, torch.zeros(3), y)
    (dw,) = torch.autograd.grad(loss, w)
    ref = F.cross_entropy(F.linear(x, w), y)
    assert torch.isfinite(loss) and torch.isfinite(dw).all()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(dw, torch.autograd.grad(ref, w)[0])


def test_output_layer_bad_input():
    x, w, b = torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(4)
    with pytest.raises(ValueError, match="target 4 out of range for 4 classes"):
        mf.linear_softmax_cross_entropy(x, w, b, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"class indices \(N,\)"):
        mf.linear_softmax_cross_entropy(x, w, b, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="3 labels but logits have 2 rows"):
        mf.linear_softmax_cross_entropy(x, w, b, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="x has 3 features but weight expects 5"):
        mf.linear_softmax_cross_entropy(x, torch.zeros(4, 5), b, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="x has 2 features but weight expects 3"):
        mf.linear_sigmoid(torch.zeros(2, 2), w, b)


# ---------------------------------------------------------------------------------------------
# The models' custom path runs these
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_table_pairs_each_fused_layer_with_its_ops(name):
    """The custom path's hidden layer gives the builtin path's bits."""
    x, w, b = layer_inputs(6, 5, 4, torch.device("cpu"), torch.float32)
    entry = ACTIVATION_TABLE[name]
    assert torch.equal(entry.custom_layer(x, w, b), entry.builtin(F.linear(x, w, b)))
    torch.testing.assert_close(entry.custom_layer(x, w, b), entry.custom(mf.linear(x, w, b)), rtol=3e-7, atol=0)


def test_custom_models_run_one_function_per_layer():
    x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
    mlp = MLP(12, [6, 5], 3, activation="tanh", backend="custom", seed=0)
    loss = mlp.loss(x, y)
    node = loss.grad_fn
    assert type(node).__name__ == "LinearSoftmaxCrossEntropyFunctionBackward"
    names = []
    while node is not None and node.next_functions:
        node = next((f for f, _ in node.next_functions if f is not None and "Linear" in type(f).__name__), None)
        if node is not None:
            names.append(type(node).__name__)
    assert names == ["LinearTanhFunctionBackward", "LinearTanhFunctionBackward"]
    softmax = LinearSoftmax(12, 3, backend="custom", seed=0)
    assert type(softmax.loss(x, y).grad_fn).__name__ == "LinearSoftmaxCrossEntropyFunctionBackward"
    # class weights and probability targets take the general loss on the logits
    weighted = mlp.loss(x, y, class_weight=torch.ones(3))
    assert type(weighted.grad_fn).__name__ != "LinearSoftmaxCrossEntropyFunctionBackward"
