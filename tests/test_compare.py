"""``compare``: passes on correct gradients, fails on a wrong one, and writes the documented JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mlp_torch import cli
from mlp_torch import functional as MF
from mlp_torch.compare import PAIRS, compare_gradients, errors
from mlp_torch.models import MLP
from mlp_torch.models.activations import ACTIVATION_TABLE


def run_compare(tmp_path: Path, *flags: str) -> tuple[int, dict]:
    out = tmp_path / "out.json"
    code = cli.main(["compare", "--dataset", "synthetic", "--device", "cpu", "--json", str(out), *flags])
    return code, json.loads(out.read_text())


def test_errors_follow_the_cs231n_formula() -> None:
    a, b = torch.tensor([1.0, 0.0, 1e-9]), torch.tensor([1.1, 0.0, 0.0])
    max_abs, max_rel, scaled = errors(a, b)
    assert max_abs == pytest.approx(0.1)
    assert max_rel == pytest.approx(0.1, rel=1e-6)  # 1e-9 / max(1e-8, 1e-9) = 0.1 as well
    assert scaled == pytest.approx(0.1 / 1.1)


@pytest.mark.parametrize(
    "flags",
    [
        ("--model", "mlp", "--hidden", "32", "16", "8", "--activation", "tanh"),
        ("--model", "mlp", "--hidden", "32", "16", "8", "--activation", "sigmoid"),
        ("--model", "mlp", "--hidden", "32", "16", "8", "--activation", "relu"),
        ("--model", "softmax"),
        ("--model", "perceptron"),
    ],
    ids=["tanh", "sigmoid", "relu", "softmax", "perceptron"],
)
def test_compare_passes_in_float64_with_all_pairs(tmp_path: Path, flags: tuple[str, ...]) -> None:
    code, report = run_compare(tmp_path, *flags, "--dtype", "float64")
    assert code == 0 and report["ok"] is True
    assert {row["pair"] for row in report["rows"]} == set(PAIRS)
    for row in report["rows"]:
        assert set(row) >= {"param", "pair", "max_abs", "max_rel", "ok"} and row["ok"] is True
        if row["pair"] != "finite-difference":
            assert row["max_rel"] <= 1e-10


def test_compare_float32_has_no_finite_differences(tmp_path: Path) -> None:
    code, report = run_compare(tmp_path, "--model", "mlp", "--hidden", "16", "--dtype", "float32", "--image-size", "8")
    assert code == 0
    assert {row["pair"] for row in report["rows"]} == {"custom-vs-builtin", "manual-vs-builtin"}


def test_compare_with_class_weights(tmp_path: Path) -> None:
    code, report = run_compare(tmp_path, "--model", "mlp", "--hidden", "8", "--balance", "weights", "--image-size", "8")
    assert code == 0 and report["ok"]


def test_a_wrong_manual_gradient_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Forget σ'(a): da = dh instead of dh ⊙ h (1 − h).
    wrong = dataclasses.replace(ACTIVATION_TABLE["sigmoid"], backward=lambda dh, cache: dh)
    monkeypatch.setitem(ACTIVATION_TABLE, "sigmoid", wrong)
    code, report = run_compare(tmp_path, "--model", "mlp", "--hidden", "16", "--image-size", "8")
    assert code == 1 and report["ok"] is False
    failed = {(row["param"], row["pair"]) for row in report["rows"] if not row["ok"]}
    assert ("layers.0.weight", "manual-vs-builtin") in failed
    assert all(pair == "manual-vs-builtin" for _, pair in failed)  # builtin, custom and FD still agree


def test_a_wrong_custom_gradient_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class WrongTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z):  # type: ignore[no-untyped-def]
            h = torch.tanh(z)
            ctx.save_for_backward(h)
            return h

        @staticmethod
        def backward(ctx, dh):  # type: ignore[no-untyped-def]
            (h,) = ctx.saved_tensors
            return dh * (1 - h)  # should be 1 − h²

    def wrong_layer(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return WrongTanh.apply(MF.linear(x, W, b))

    monkeypatch.setitem(
        ACTIVATION_TABLE, "tanh", dataclasses.replace(ACTIVATION_TABLE["tanh"], custom_layer=wrong_layer)
    )
    code, report = run_compare(
        tmp_path, "--model", "mlp", "--hidden", "16", "--activation", "tanh", "--image-size", "8"
    )
    assert code == 1
    assert {row["pair"] for row in report["rows"] if not row["ok"]} == {"custom-vs-builtin"}


def test_finite_differences_catch_a_gradient_that_all_backends_share(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = MLP(12, [8], 3, "sigmoid", seed=0).double()
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(0, 3, (16,))
    assert compare_gradients(model, x, y).ok
    loss = model.loss
    monkeypatch.setattr(model, "loss", lambda *a, **k: 1.01 * loss(*a, **k))  # the loss FD sees differs by 1 %
    report = compare_gradients(model, x, y)
    assert not report.ok
    assert {row.pair for row in report.rows if not row.ok} == {"finite-difference"}


def test_kink_crossings_are_skipped_not_passed() -> None:
    torch.manual_seed(0)
    model = MLP(6, [4], 3, "relu", seed=0).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    with torch.no_grad():  # put a ReLU input exactly on its kink for sample 0
        layer = model.layers[0]
        layer.bias[0] = -(x[0] @ layer.weight[0])
    report = compare_gradients(model, x, y, fd_samples=4)
    row = next(r for r in report.rows if r.param == "layers.0.bias" and r.pair == "finite-difference")
    assert "crossed a kink" in row.note
    assert report.ok


def test_compare_leaves_existing_grads_alone() -> None:
    model = MLP(6, [4], 3, seed=0).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    model.compute_gradients(x, y)
    before = [p.grad.clone() for p in model.parameters()]
    params = [p.clone() for p in model.parameters()]
    compare_gradients(model, x, y)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), before))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_bad_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compare", "--dataset", "synthetic", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "--activation", "gelu"])
    assert exit_info.value.code == 2
