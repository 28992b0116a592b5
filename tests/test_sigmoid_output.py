"""The sigmoid-output network: ``sigmoid_binary_cross_entropy`` and ``output="sigmoid"`` on every model and backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mlp_torch import functional as mf
from mlp_torch.compare import compare_gradients, format_report
from mlp_torch.errors import CheckpointError, UsageError
from mlp_torch.gradcheck import CASES, check_op
from mlp_torch.models import MLP, build_model, manual
from mlp_torch.training.checkpoint import validate_checkpoint

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


# ---------------------------------------------------------------------------------------------
# Models with output="sigmoid": one output unit, logits [0, p], all three backends agree
# ---------------------------------------------------------------------------------------------

SIGMOID_MODELS = [
    pytest.param("softmax", [], "sigmoid", id="logistic-regression"),
    pytest.param("mlp", [6], "sigmoid", id="mlp-sigmoid"),
    pytest.param("mlp", [7, 5], "tanh", id="mlp-tanh-2-layers"),
    pytest.param("mlp", [8], "relu", id="mlp-relu"),
]


def sigmoid_model(kind, hidden, activation, dtype=torch.float64, seed=0):
    return build_model(kind, 5, 2, hidden, activation, seed=seed, output="sigmoid").to(dtype)


def batch(n=24, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("kind,hidden,activation", SIGMOID_MODELS)
@pytest.mark.parametrize("weighted", [False, True])
def test_compare_agrees_on_all_backends_float64(kind, hidden, activation, weighted):
    model = sigmoid_model(kind, hidden, activation)
    x, y = batch()
    weight = torch.tensor([0.4, 1.7], dtype=torch.float64) if weighted else None
    report = compare_gradients(model, x, y, class_weight=weight)
    assert report.ok, format_report(report)
    assert {row.pair for row in report.rows} == {"custom-vs-builtin", "manual-vs-builtin", "finite-difference"}
    losses = list(report.losses.values())
    assert max(losses) - min(losses) <= 1e-14 * max(losses)
    assert [tuple(p.shape) for p in model.parameters()][-2:] == [(1, hidden[-1] if hidden else 5), (1,)]


@pytest.mark.parametrize("kind,hidden,activation", SIGMOID_MODELS)
def test_compare_agrees_on_all_backends_float32(kind, hidden, activation):
    model = sigmoid_model(kind, hidden, activation, dtype=torch.float32)
    x, y = batch(dtype=torch.float32)
    report = compare_gradients(model, x, y)
    assert report.ok, format_report(report)


def test_compare_catches_a_manual_gradient_without_the_division_by_n(monkeypatch):
    original = manual.sigmoid_binary_cross_entropy

    def without_mean(p, y, weight=None):
        loss, dp = original(p, y, weight)
        return loss, dp * len(p)  # ŷ − y instead of (ŷ − y) / N

    monkeypatch.setattr(manual, "sigmoid_binary_cross_entropy", without_mean)
    report = compare_gradients(sigmoid_model("mlp", [6], "tanh"), *batch())
    assert not report.ok
    assert {row.pair for row in report.rows if not row.ok} == {"manual-vs-builtin"}


@pytest.mark.parametrize("backend", ["builtin", "custom", "manual"])
def test_logistic_regression_gradient_is_the_slide_formula(backend):
    """hidden=[]: dℓ/db = mean_n (ŷ_n − y_n), dℓ/dw = mean_n (ŷ_n − y_n) x_n, with ŷ = σ(w·x + b)."""
    model = build_model("softmax", 5, 2, backend=backend, seed=3, output="sigmoid").double()
    x, y = batch()
    loss, logits = model.compute_gradients(x, y)
    w, b = model.layers[0].weight, model.layers[0].bias
    y_hat = torch.sigmoid(x @ w.detach()[0] + b.detach())  # N
    torch.testing.assert_close(b.grad, (y_hat - y).mean()[None], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(w.grad, ((y_hat - y)[:, None] * x).mean(0)[None], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(loss, -(y * y_hat.log() + (1 - y) * (1 - y_hat).log()).mean(), rtol=1e-13, atol=0)
    torch.testing.assert_close(logits, torch.stack([torch.zeros_like(y_hat), torch.logit(y_hat)], 1))


@pytest.mark.parametrize("backend", ["builtin", "custom", "manual"])
def test_logits_are_zero_and_p_so_argmax_and_softmax_need_nothing_new(backend):
    model = sigmoid_model("mlp", [6], "tanh")
    model.backend = backend
    x, y = batch(64)
    logits = model(x)
    assert logits.shape == (64, 2) and torch.equal(logits[:, 0], torch.zeros(64, dtype=logits.dtype))
    p = logits[:, 1]
    y_hat = torch.sigmoid(p)
    assert torch.equal(logits.argmax(1), (y_hat > 0.5).long())
    torch.testing.assert_close(torch.softmax(logits, 1), torch.stack([1 - y_hat, y_hat], 1), rtol=1e-14, atol=1e-15)
    # softmax cross-entropy of [0, p] is the binary cross-entropy of σ(p): the same loss, by either name
    torch.testing.assert_close(model.loss(x, y), F.cross_entropy(logits, y), rtol=1e-14, atol=0)


def test_config_rebuilds_the_sigmoid_output_and_old_configs_mean_softmax():
    for kind, hidden in (("softmax", []), ("mlp", [4, 3])):
        model = build_model(kind, 5, 2, hidden, "relu", seed=0, output="sigmoid")
        assert model.config()["output"] == "sigmoid"
        rebuilt = build_model(**model.config())
        assert rebuilt.config() == model.config() and rebuilt.layers[-1].weight.shape == (
            1,
            hidden[-1] if hidden else 5,
        )
        rebuilt.load_state_dict(model.state_dict())
    assert MLP(5, [3], 3).config()["output"] == "softmax"
    config = MLP(5, [3], 3).config()
    del config["output"]  # a config saved before outputs existed
    assert build_model(**config).output == "softmax"


def test_bad_output_choices_are_one_clear_error():
    with pytest.raises(UsageError, match="one unit for two classes; this model has 3 classes"):
        build_model("mlp", 5, 3, [4], output="sigmoid")
    with pytest.raises(UsageError, match="unknown output 'tanh'; choose one of: softmax, sigmoid"):
        build_model("mlp", 5, 2, [4], output="tanh")
    with pytest.raises(UsageError, match="the perceptron's output is its step"):
        build_model("perceptron", 5, 2, output="sigmoid")
    model = sigmoid_model("mlp", [4], "tanh")
    for backend in ("builtin", "custom", "manual"):
        with pytest.raises(ValueError, match=r"takes class labels \(N,\)"):
            model.compute_gradients(*batch()[:1], torch.full((24, 2), 0.5, dtype=torch.float64), backend=backend)


def checkpoint_for(model, classes=("cat", "dog"), image_size=2):
    in_features = model.in_features
    return {
        "model_config": model.config(),
        "model_state": {k: v.clone() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "image_size": image_size,
        "standardizer": {"mean": torch.zeros(in_features), "std": torch.ones(in_features)},
    }


def test_checkpoint_validation_knows_the_sigmoid_output(tmp_path):
    model = build_model("mlp", 12, 2, [4], seed=0, output="sigmoid")  # 12 = 3 · 2 · 2: a 2-px image
    validate_checkpoint(checkpoint_for(model), tmp_path / "ok.pt")
    validate_checkpoint(checkpoint_for(build_model("softmax", 12, 2, output="sigmoid")), tmp_path / "ok.pt")
    old = checkpoint_for(build_model("mlp", 12, 2, [4]))
    del old["model_config"]["output"]  # written before the sigmoid output existed: softmax
    validate_checkpoint(old, tmp_path / "old.pt")

    cases = {
        "its output 'tanh' is not one of softmax, sigmoid": lambda c: c["model_config"].update(output="tanh"),
        "its sigmoid output is one unit for two classes, its config says 3": lambda c: c.update(
            classes=["a", "b", "c"], model_config={**c["model_config"], "num_classes": 3}
        ),
        "describes layer sizes 12-4-2, its tensors hold 12-4-1": lambda c: c["model_config"].update(output="softmax"),
    }
    for message, change in cases.items():
        ckpt = checkpoint_for(model)
        change(ckpt)
        with pytest.raises(CheckpointError, match=message):
            validate_checkpoint(ckpt, tmp_path / "bad.pt")
    perceptron = checkpoint_for(build_model("perceptron", 12, 2))
    perceptron["model_config"]["output"] = "sigmoid"
    with pytest.raises(CheckpointError, match="unknown key"):
        validate_checkpoint(perceptron, tmp_path / "bad.pt")
