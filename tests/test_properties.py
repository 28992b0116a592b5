"""Property-based tests: our Functions against PyTorch's own ops on random shapes, dtypes and values.

Values range over ±1e4 and include subnormals (hypothesis favours 0, ±tiny, the bounds and the
subnormal range). Tolerances follow from rounding-error bounds, in units of the dtype's
``eps`` (the spacing of numbers at 1.0):

* a few elementary operations (exp, add, divide), each rounded once, are within a few ``eps``
  relative error; both our result and PyTorch's carry such an error;
* a sum of ``k`` products is within ``k·eps·Σ|terms|`` (the standard dot-product bound), whatever
  order either implementation adds in;
* below ``finfo.tiny`` (the smallest normal number) relative precision is lost: kernels that
  compute ``1/(1 + e^{100})`` flush to 0 where we return the correct subnormal, so differences
  smaller than ``tiny`` are not errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mlp_torch import functional as ours

SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float64]


@st.composite
def tensors(draw, shape, dtype, bound=1e4):
    """A tensor of ``shape`` whose entries are anywhere in [−bound, bound], subnormals included."""
    width = 64 if dtype == torch.float64 else 32
    tiny = torch.finfo(dtype).tiny
    values = st.one_of(
        st.floats(-bound, bound, width=width, allow_nan=False, allow_subnormal=True),
        st.floats(-tiny, tiny, width=width, allow_nan=False, allow_subnormal=True),  # the subnormal range
    )
    n = math.prod(shape)
    return torch.tensor(draw(st.lists(values, min_size=n, max_size=n)), dtype=torch.float64).reshape(shape).to(dtype)


shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))


def assert_close(got, expected, tolerance, what):
    """``|got − expected| ≤ tolerance`` elementwise (tolerance a tensor or a number)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape, what
    excess = (got - expected).abs() - tolerance
    assert not bool((excess > 0).any()), f"{what}: max excess {excess.max().item():.3g}\n{got}\n{expected}"


# -------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data(), shape=shapes)
def test_sigmoid_and_tanh_match_torch(dtype, data, shape):
    z = data.draw(tensors(shape, dtype)).requires_grad_()
    dh = data.draw(tensors(shape, dtype, bound=10.0))
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    for name, mine, theirs in (("sigmoid", ours.sigmoid, torch.sigmoid), ("tanh", ours.tanh, torch.tanh)):
        h = mine(z)
        ref = theirs(z)
        # forward: ≤ 2 eps ours (exp, add, divide) + ≤ 2 eps PyTorch's kernel
        assert_close(h, ref, 4 * eps * ref.abs() + tiny, f"{name} forward")
        (dz,) = torch.autograd.grad(h, z, dh)
        (dref,) = torch.autograd.grad(ref, z, dh)
        # backward from the output: σ(1−σ) and 1−h² cancel where h ≈ ±1, so the error is absolute,
        # ≤ ~3 eps in the factor, for each implementation: 8 eps·|dh|
        assert_close(dz, dref, 8 * eps * dh.abs() + tiny, f"{name} backward")
        assert torch.isfinite(h).all() and torch.isfinite(dz).all(), name


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16])
@SETTINGS
@given(data=st.data(), shape=shapes)
def test_relu_and_step_are_exact(dtype, data, shape):
    z = data.draw(tensors(shape, torch.float32 if dtype == torch.bfloat16 else dtype)).to(dtype).requires_grad_()
    dh = data.draw(tensors(shape, torch.float32, bound=10.0)).to(dtype)
    # max(0, z), z > 0 and their gradients involve no rounding at all: equal bit for bit.
    h = ours.relu(z)
    assert torch.equal(h, torch.relu(z))
    assert torch.equal(torch.autograd.grad(h, z, dh)[0], torch.autograd.grad(torch.relu(z), z, dh)[0])
    f = ours.step(z)
    assert torch.equal(f, torch.heaviside(z.detach(), torch.zeros((), dtype=dtype)))
    assert torch.equal(torch.autograd.grad(f, z, dh)[0], torch.zeros_like(z))


# ------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data(), n=st.integers(1, 4), fan_in=st.integers(1, 6), fan_out=st.integers(1, 5), bias=st.booleans())
def test_linear_matches_torch(dtype, data, n, fan_in, fan_out, bias):
    x = data.draw(tensors((n, fan_in), dtype)).requires_grad_()
    w = data.draw(tensors((fan_out, fan_in), dtype)).requires_grad_()
    b = data.draw(tensors((fan_out,), dtype)).requires_grad_() if bias else None
    da = data.draw(tensors((n, fan_out), dtype, bound=10.0))
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    a, ref = ours.linear(x, w, b), F.linear(x, w, b)
    ax, aw, ab = x.detach().abs(), w.detach().abs(), (b.detach().abs() if bias else 0)
    # a sum of fan_in products plus the bias, rounded fan_in + 1 times, in each implementation
    k = fan_in + 1
    assert_close(a, ref, 2 * k * eps * (ax @ aw.T + ab) + k * tiny, "a = x Wᵀ + b")
    inputs = (x, w, b) if bias else (x, w)
    got = torch.autograd.grad(a, inputs, da)
    expected = torch.autograd.grad(ref, inputs, da)
    bounds = (
        2 * fan_out * eps * (da.abs() @ aw) + fan_out * tiny,  # dx = da W: fan_out terms
        2 * n * eps * (da.abs().T @ ax) + n * tiny,  # dW = daᵀ x: n terms
        2 * n * eps * da.abs().sum(0) + n * tiny,
    )  # db = Σ_n da
    for name, g, e, bound in zip(("dx", "dW", "db"), got, expected, bounds):
        assert_close(g, e, bound, name)


# ------------------------------------------------------------------------------ softmax cross-entropy


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    data=st.data(),
    n=st.integers(1, 5),
    num_classes=st.integers(2, 6),
    reduction=st.sampled_from(["none", "sum", "mean"]),
    weighted=st.booleans(),
)
def test_softmax_cross_entropy_matches_torch(dtype, data, n, num_classes, reduction, weighted):
    logits = data.draw(tensors((n, num_classes), dtype)).requires_grad_()
    target = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    weight = None
    if weighted:  # positive weights, so that "mean" never divides by zero
        weight = torch.tensor(
            data.draw(st.lists(st.floats(0.1, 10.0), min_size=num_classes, max_size=num_classes)), dtype=dtype
        )
    loss = ours.softmax_cross_entropy(logits, target, reduction=reduction, weight=weight)
    ref = F.cross_entropy(logits, target, reduction=reduction, weight=weight)
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    a = logits.detach()
    w = torch.ones(num_classes, dtype=dtype) if weight is None else weight
    wn = w[target]  # N
    # ℓ_n = log Σ e^{a − max} + max − a_y: the shifts a_c − max are rounded relative to |a_c| + |max|,
    # and log Σ of C terms in (0, 1] adds C eps; both implementations, weighted by w_y.
    per_sample = 4 * eps * wn * (2 * a.abs().amax(1) + num_classes + 1)  # N
    divisor = {"none": 1, "sum": 1, "mean": wn.sum()}[reduction]
    bound = per_sample if reduction == "none" else per_sample.sum() / divisor
    assert_close(loss, ref, bound + tiny, f"loss ({reduction})")
    dloss = torch.ones_like(ref) if reduction != "none" else data.draw(tensors((n,), dtype, bound=10.0))
    (dlogits,) = torch.autograd.grad(loss, logits, dloss)
    (dref,) = torch.autograd.grad(ref, logits, dloss)
    # dℓ/da = w_y (ŷ − y) · dloss / divisor: ŷ within (C + 4) eps absolutely in each implementation
    scale = (wn * dloss.abs() / divisor)[:, None]  # N,1
    assert_close(dlogits, dref, 2 * (num_classes + 4) * eps * scale + tiny, "dlogits")
    assert torch.isfinite(loss).all() and torch.isfinite(dlogits).all()
