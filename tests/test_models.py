"""The three gradient paths agree; models initialise, rebuild, save and load as documented."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from mlp_torch.compare import errors
from mlp_torch.errors import UsageError
from mlp_torch.models import (
    ACTIVATIONS,
    BACKENDS,
    MLP,
    Classifier,
    LinearSoftmax,
    Perceptron,
    build_model,
    manual,
)
from mlp_torch.models.activations import ACTIVATION_TABLE

# The bounds on the relative error of each tensor (max |a − b| / max |b|).
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
IN, C, N = 20, 4, 32


def grads_of(
    model: Classifier, x: torch.Tensor, y: torch.Tensor, backend: str, **kw
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, logits = model.compute_gradients(x, y, backend=backend, **kw)
    return loss, logits, [p.grad.clone() for p in model.parameters()]


def assert_same(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    _, max_rel, scaled = errors(a, b)
    assert scaled <= TOL[dtype], f"relative error {scaled:.2e} > {TOL[dtype]:.0e}"
    if dtype == torch.float64:
        assert max_rel <= 1e-10, f"elementwise relative error {max_rel:.2e}"


MODELS = [
    pytest.param(("softmax", [], "sigmoid"), id="softmax"),
    *[
        pytest.param(("mlp", hidden, act), id=f"mlp-{act}-{len(hidden)}")
        for act in ACTIVATIONS
        for hidden in ([], [16], [16, 12, 8])
    ],
    pytest.param(("perceptron", [], "sigmoid"), id="perceptron"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec", MODELS)
def test_backends_agree(spec: tuple[str, list[int], str], dtype: torch.dtype, device: torch.device) -> None:
    kind, hidden, activation = spec
    torch.manual_seed(0)
    model = build_model(kind, IN, C, hidden, activation, seed=0).to(device=device, dtype=dtype)
    if kind == "perceptron":  # from zero weights every prediction is a tie: move off it
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    x = torch.randn(N, IN, dtype=dtype, device=device)
    y = torch.randint(0, C, (N,), device=device)
    ref_loss, ref_logits, ref_grads = grads_of(model, x, y, "builtin")
    assert any(g.abs().max() > 0 for g in ref_grads)
    for backend in ("custom", "manual"):
        loss, logits, grads = grads_of(model, x, y, backend)
        assert_same(loss.reshape(1), ref_loss.reshape(1), dtype)
        assert_same(logits, ref_logits, dtype)
        for g, ref in zip(grads, ref_grads):
            assert g.dtype == dtype and g.device == ref.device
            assert_same(g, ref, dtype)


@pytest.mark.parametrize("kind", ["softmax", "mlp", "perceptron"])
def test_class_weights_agree_with_cross_entropy_semantics(kind: str, device: torch.device) -> None:
    torch.manual_seed(1)
    model = build_model(kind, IN, C, [16], "tanh", seed=1).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    x = torch.randn(N, IN, dtype=torch.float64, device=device)
    y = torch.randint(0, C, (N,), device=device)
    w = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    ref_loss, _, ref_grads = grads_of(model, x, y, "builtin", class_weight=w)
    if kind != "perceptron":
        assert torch.allclose(ref_loss, F.cross_entropy(model(x), y, weight=w))
    for backend in ("custom", "manual"):
        loss, _, grads = grads_of(model, x, y, backend, class_weight=w)
        assert_same(loss.reshape(1), ref_loss.reshape(1), torch.float64)
        for g, ref in zip(grads, ref_grads):
            assert_same(g, ref, torch.float64)


def test_probability_targets_agree() -> None:
    torch.manual_seed(2)
    model = MLP(IN, [8], C, "sigmoid", seed=2).double()
    x = torch.randn(N, IN, dtype=torch.float64)
    t = torch.softmax(torch.randn(N, C, dtype=torch.float64), dim=1)
    w = torch.rand(C, dtype=torch.float64) + 0.1
    for class_weight in (None, w):
        ref_loss, _, ref_grads = grads_of(model, x, t, "builtin", class_weight=class_weight)
        for backend in ("custom", "manual"):
            loss, _, grads = grads_of(model, x, t, backend, class_weight=class_weight)
            assert_same(loss.reshape(1), ref_loss.reshape(1), torch.float64)
            for g, ref in zip(grads, ref_grads):
                assert_same(g, ref, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compute_gradients_accumulates_like_backward_and_works_under_no_grad(backend: str) -> None:
    torch.manual_seed(3)
    model = MLP(IN, [16, 8], C, "relu", backend=backend, seed=3).double()
    x, y = torch.randn(N, IN, dtype=torch.float64), torch.randint(0, C, (N,))
    with torch.no_grad():
        loss, logits = model.compute_gradients(x, y)
        once = [p.grad.clone() for p in model.parameters()]
        model.compute_gradients(x, y)
    assert not loss.requires_grad and not logits.requires_grad and loss.dim() == 0
    for p, g in zip(model.parameters(), once):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_any_optimizer_can_step_on_any_backend(backend: str) -> None:
    torch.manual_seed(4)
    x, y = torch.randn(N, IN, dtype=torch.float64), torch.randint(0, C, (N,))
    reference = MLP(IN, [16], C, "sigmoid", seed=4).double()
    model = MLP(IN, [16], C, "sigmoid", backend=backend, seed=4).double()
    for m in (reference, model):
        optimizer = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            m.compute_gradients(x, y)
            optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


# llm.c's check: backward against autograd on loss = (out * dout).sum(), with the caller's tensors left as they were.


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_manual_activation_pair_matches_autograd(name: str) -> None:
    torch.manual_seed(0)
    f = ACTIVATION_TABLE[name]
    a, dh = 3 * torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 5, dtype=torch.float64)
    a[0, 0] = 0.0  # relu's kink: 0, as torch.relu
    a_before, dh_before = a.clone(), dh.clone()
    h, cache = f.forward(a)
    da = f.backward(dh, cache)
    assert torch.equal(a, a_before) and torch.equal(dh, dh_before)
    a_ref = a.clone().requires_grad_()
    h_ref = f.builtin(a_ref)
    (da_ref,) = torch.autograd.grad((h_ref * dh).sum(), a_ref)
    assert torch.equal(h, h_ref.detach())
    torch.testing.assert_close(da, da_ref, rtol=1e-15, atol=1e-16)


def test_manual_linear_pair_matches_autograd() -> None:
    torch.manual_seed(0)
    x, W, b = (torch.randn(*s, dtype=torch.float64) for s in [(6, 4), (3, 4), (3,)])
    da = torch.randn(6, 3, dtype=torch.float64)
    before = [t.clone() for t in (x, W, b, da)]
    a, cache = manual.linear_forward(x, W, b)
    dx, dW, db = manual.linear_backward(da, cache)
    assert all(torch.equal(t, u) for t, u in zip((x, W, b, da), before))
    leaves = [t.clone().requires_grad_() for t in (x, W, b)]
    a_ref = F.linear(*leaves)
    grads_ref = torch.autograd.grad((a_ref * da).sum(), leaves)
    torch.testing.assert_close(a, a_ref.detach(), rtol=1e-15, atol=1e-15)
    for grad, ref in zip((dx, dW, db), grads_ref):
        assert grad is not None
        torch.testing.assert_close(grad, ref, rtol=1e-15, atol=1e-15)
    no_dx, dW_again, _ = manual.linear_backward(da, cache, need_dx=False)
    assert no_dx is None and torch.equal(dW_again, dW)


def test_manual_cross_entropy_is_makemores_fused_gradient() -> None:
    torch.manual_seed(0)
    logits, y = 3 * torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 4, (9,))
    before = logits.clone()
    loss, dlogits = manual.softmax_cross_entropy(logits, y)
    assert torch.equal(logits, before)
    y_hat_minus_y = torch.softmax(logits, 1) - F.one_hot(y, 4).to(torch.float64)
    torch.testing.assert_close(dlogits, y_hat_minus_y / 9, rtol=1e-15, atol=1e-17)  # (ŷ − y) / N
    leaf = logits.clone().requires_grad_()
    ref = F.cross_entropy(leaf, y)
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-15, atol=0)
    torch.testing.assert_close(dlogits, torch.autograd.grad(ref, leaf)[0], rtol=1e-13, atol=1e-16)


def test_manual_forward_records_nothing_for_autograd() -> None:
    model = MLP(IN, [8], C, backend="manual", seed=0)
    assert not model(torch.randn(4, IN)).requires_grad
    model.backend = "custom"
    assert model(torch.randn(4, IN)).requires_grad


@pytest.mark.parametrize("src", BACKENDS)
def test_state_dict_moves_between_backends(src: str) -> None:
    torch.manual_seed(5)
    x = torch.randn(N, IN, dtype=torch.float64)
    original = MLP(IN, [16, 8], C, "tanh", backend=src, seed=5).double()
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    expected = original(x).detach()
    for dst in BACKENDS:
        buffer.seek(0)
        loaded = MLP(IN, [16, 8], C, "tanh", backend=dst, seed=99).double()
        loaded.load_state_dict(torch.load(buffer, weights_only=True))
        assert list(loaded.state_dict()) == list(original.state_dict())
        assert_same(loaded(x).detach(), expected, torch.float64)
        loaded.backend = src
        assert torch.equal(loaded(x).detach(), expected)


def test_state_dict_layout() -> None:
    model = build_model("mlp", 12, 3, [5, 4], "relu")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "layers.0.weight": (5, 12),
        "layers.0.bias": (5,),
        "layers.1.weight": (4, 5),
        "layers.1.bias": (4,),
        "layers.2.weight": (3, 4),
        "layers.2.bias": (3,),
    }
    assert list(build_model("softmax", 12, 3).state_dict()) == ["layers.0.weight", "layers.0.bias"]
    assert list(build_model("perceptron", 12, 3).state_dict()) == ["layers.0.weight", "layers.0.bias"]


@pytest.mark.parametrize("kind", ["softmax", "mlp", "perceptron"])
def test_config_rebuilds_the_model(kind: str) -> None:
    model = build_model(kind, 12, 3, [6], "tanh", backend="manual", seed=7)
    rebuilt = build_model(**model.config())
    assert type(rebuilt) is type(model) and rebuilt.config() == model.config()
    for p, q in zip(rebuilt.parameters(), model.parameters()):
        assert torch.equal(p, q)


def test_classes_and_kinds() -> None:
    assert isinstance(build_model("softmax", 4, 2), LinearSoftmax)
    assert isinstance(LinearSoftmax(4, 2), MLP) and LinearSoftmax(4, 2).hidden == []
    assert isinstance(build_model("perceptron", 4, 2), Perceptron)
    assert type(build_model("mlp", 4, 2, [3])) is MLP


def test_initialisation_is_seeded_and_scaled() -> None:
    a, b = MLP(400, [300, 200], 10, "sigmoid", seed=0), MLP(400, [300, 200], 10, "sigmoid", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.layers[0].weight, MLP(400, [300, 200], 10, "sigmoid", seed=1).layers[0].weight)
    # Xavier uniform: bound g √(6 / (fan_in + fan_out)), variance bound² / 3
    bound = (6 / (400 + 300)) ** 0.5
    assert a.layers[0].weight.abs().max() <= bound
    assert a.layers[0].weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
    tanh = MLP(400, [300], 10, "tanh", seed=0)
    assert tanh.layers[0].weight.abs().max() <= 5 / 3 * bound
    assert tanh.layers[0].weight.abs().max() > bound
    # He normal for ReLU: variance 2 / fan_in
    relu = MLP(400, [300], 10, "relu", seed=0)
    assert relu.layers[0].weight.var().item() == pytest.approx(2 / 400, rel=0.05)
    assert all(torch.count_nonzero(layer.bias) == 0 for m in (a, tanh, relu) for layer in m.layers)
    assert torch.count_nonzero(build_model("perceptron", 10, 3).layers[0].weight) == 0


def test_vanishing_gradient_of_a_deep_sigmoid_net() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(256, 64, dtype=torch.float64), torch.randint(0, 3, (256,))
    ratios = {}
    for activation in ("sigmoid", "relu"):
        model = MLP(64, [64] * 7, 3, activation, seed=0).double()  # 8 layers
        model.compute_gradients(x, y)
        norms = [layer.weight.grad.norm().item() for layer in model.layers]
        ratios[activation] = norms[0] / norms[-1]
    # σ' ≤ 1/4 at every layer: the first layer's gradient is ~1e-5 of the last one's
    assert ratios["sigmoid"] < 1e-3
    assert ratios["relu"] > 1e-2
    assert ratios["relu"] > 100 * ratios["sigmoid"]


def test_hidden_activations() -> None:
    x = torch.randn(5, 12)
    model = MLP(12, [7, 6], 3, "sigmoid", seed=0)
    hs = model.hidden_activations(x)
    assert [tuple(h.shape) for h in hs] == [(5, 7), (5, 6)]
    assert all(not h.requires_grad and h.min() >= 0 and h.max() <= 1 for h in hs)
    assert torch.allclose(hs[0], torch.sigmoid(F.linear(x, model.layers[0].weight, model.layers[0].bias)))
    assert LinearSoftmax(12, 3).hidden_activations(x) == []
    assert Perceptron(12, 3).hidden_activations(x) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_logits_stay_finite(backend: str) -> None:
    model = LinearSoftmax(IN, C, backend=backend, seed=0)
    x = 1e4 * torch.randn(N, IN)  # logits in the thousands, float32
    loss, _ = model.compute_gradients(x, torch.randint(0, C, (N,)))
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="sigmoid, tanh, relu"):
        build_model("mlp", 4, 2, [3], "gelu")
    with pytest.raises(UsageError, match="softmax, mlp, perceptron"):
        build_model("cnn", 4, 2)
    with pytest.raises(UsageError, match="builtin, custom, manual"):
        build_model("mlp", 4, 2, [3], backend="jax")
    model = build_model("mlp", 4, 2, [3])
    with pytest.raises(UsageError):
        model.backend = "fast"
    with pytest.raises(UsageError):
        model.compute_gradients(torch.randn(2, 4), torch.tensor([0, 1]), backend="fast")
    for bad in ({"in_features": 0}, {"num_classes": -1}, {"hidden": [3, 0]}):
        kwargs = {"kind": "mlp", "in_features": 4, "num_classes": 2, "hidden": [3], **bad}
        with pytest.raises(UsageError, match="positive integer"):
            build_model(**kwargs)
