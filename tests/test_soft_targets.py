"""Label smoothing and mixup: soft targets fed to the same cross-entropy, dℓ/da = ŷ − t, on every backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.data.targets import mixup, smooth_labels
from mlp_torch.errors import UsageError
from mlp_torch.models import MLP, LinearSoftmax
from mlp_torch.training import TrainConfig, load_checkpoint, load_run_config, train, trainer
from mlp_torch.training.distributed import World


def soft_batch(n: int = 16, d: int = 10, c: int = 4, eps: float = 0.1, alpha: float = 0.4, seed: int = 0):
    """A float64 batch with label-smoothed, mixed-up targets, as the training loop makes them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return mixup(x, smooth_labels(y, c, eps, torch.float64), alpha, g)


# ---------------------------------------------------------------- the two transformations


def test_label_smoothing_is_pytorchs():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    t = smooth_labels(y, 5, 0.1, torch.float64)
    assert torch.equal(smooth_labels(y, 5, 0.0, torch.float64), F.one_hot(y, 5).double())
    torch.testing.assert_close(t.sum(1), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-15)
    assert t.max().item() == pytest.approx(0.9 + 0.1 / 5) and t.min().item() == pytest.approx(0.1 / 5)
    torch.testing.assert_close(
        F.cross_entropy(logits, t), F.cross_entropy(logits, y, label_smoothing=0.1), rtol=1e-14, atol=0
    )


def test_mixup_mixes_each_row_with_one_other_by_one_lambda():
    n = 12
    x = torch.eye(n, dtype=torch.float64)  # row i is e_i: mixed, it is λ e_i + (1 − λ) e_π(i)
    t = smooth_labels(torch.arange(n) % 3, 3, 0.0, torch.float64)
    mixed_x, mixed_t = mixup(x, t, 0.4, torch.Generator().manual_seed(3))
    lam = mixed_x.diagonal()  # λ, or 1 where π(i) = i
    off_diagonal = mixed_x - torch.diag(lam)
    partner = torch.where(off_diagonal.amax(1) > 0, off_diagonal.argmax(1), torch.arange(n))  # π
    assert sorted(partner.tolist()) == list(range(n)), "the partners are a permutation of the batch"
    moved = partner != torch.arange(n)
    assert moved.sum() > 1 and torch.all(lam[moved] == lam[moved][0]), "one λ a batch"
    lam = lam[moved][0]
    assert 0 < lam < 1
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[partner], rtol=0, atol=1e-15)
    torch.testing.assert_close(mixed_t, lam * t + (1 - lam) * t[partner], rtol=0, atol=1e-15)
    torch.testing.assert_close(mixed_t.sum(1), torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_draws_lambda_from_beta_alpha_alpha(alpha):
    x, t = torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    mixed = torch.stack([mixup(x, t, alpha, g)[0][:, 0] for _ in range(4000)])  # draws,2
    # π swaps the two rows half the time: then row 0 is λ·1 + (1 − λ)·0 = λ (else it stays 1)
    lam = mixed[mixed[:, 1] > 0, 0]
    assert 1800 < len(lam) < 2200
    variance = 1 / (4 * (2 * alpha + 1))  # Var Beta(α, α) = 1 / (4 (2α + 1)), mean 1/2
    assert lam.mean().item() == pytest.approx(0.5, abs=4 * (variance / len(lam)) ** 0.5)
    assert lam.var().item() == pytest.approx(variance, rel=0.1)


def test_mixup_is_reproducible_from_the_generator():
    a = soft_batch(seed=5)
    b = soft_batch(seed=5)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], soft_batch(seed=6)[0])


# ---------------------------------------------------------------- three backends, one gradient


def test_three_backends_agree_on_a_mixup_label_smoothing_step():
    x, t = soft_batch(n=16, d=10, c=4)
    grads = {}
    for backend in ("builtin", "custom", "manual"):
        model = MLP(10, [12, 8], 4, activation="relu", seed=0).double()
        loss, _ = model.compute_gradients(x, t, backend=backend)
        grads[backend] = (loss, [p.grad for p in model.parameters()])
    ref_loss, ref = grads["builtin"]
    for backend in ("custom", "manual"):
        loss, got = grads[backend]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-13, atol=0)
        for g_got, g_ref in zip(got, ref):
            torch.testing.assert_close(g_got, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["builtin", "custom", "manual"])
def test_soft_targets_keep_the_lectures_gradient(backend):
    x, t = soft_batch(n=16, d=10, c=4)
    model = LinearSoftmax(10, 4, seed=0).double()
    _, logits = model.compute_gradients(x, t, backend=backend)
    da = (torch.softmax(logits, 1) - t) / len(x)  # dℓ/da = (ŷ − t) / N
    torch.testing.assert_close(model.layers[0].bias.grad, da.sum(0), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(model.layers[0].weight.grad, da.T @ x, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------- through the training loop


def tiny_config(runs_dir: Path, **overrides) -> TrainConfig:
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=60, synthetic_test_per_class=20, image_size=8, cache=False
    )
    values = dict(hidden=[16], epochs=2, batch_size=32, device="cpu", runs_dir=runs_dir, progress=False, data=data)
    return TrainConfig(**{**values, "histogram_every": 0, **overrides})


def final_state(metrics: dict) -> dict:
    ckpt = load_checkpoint(Path(metrics["run_dir"]) / "checkpoints" / "last.pt")
    return {**ckpt["model_state"], "rng": ckpt["rng"]["data"]}


def test_zero_smoothing_and_mixup_reproduce_the_run_bit_for_bit(tmp_path):
    plain = final_state(train(tiny_config(tmp_path / "plain")))
    zero = final_state(train(tiny_config(tmp_path / "zero", label_smoothing=0.0, mixup=0.0)))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    mixed = final_state(train(tiny_config(tmp_path / "mixed", label_smoothing=0.1, mixup=0.4)))
    assert not torch.equal(plain["layers.0.weight"], mixed["layers.0.weight"])
    assert not torch.equal(plain["rng"], mixed["rng"]), "mixup draws from the run's generator"


def test_a_mixup_run_resumes_bit_for_bit(tmp_path):
    config = tiny_config(tmp_path / "whole", epochs=3, label_smoothing=0.1, mixup=0.4)
    whole = final_state(train(config))
    half = train(dataclasses.replace(config, runs_dir=tmp_path / "split"), stop_after_epochs=1)
    run_dir = Path(half["run_dir"])
    saved = load_run_config(run_dir)
    assert (saved.label_smoothing, saved.mixup) == (0.1, 0.4), "config.json keeps both"
    resumed = final_state(train(saved, resume=run_dir))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("soft", [dict(label_smoothing=0.1), dict(mixup=0.2)])
def test_soft_targets_are_refused_under_torchrun(soft):
    # the all-reduce weighs each process's rows by their labels; mixup's draws would part the generators
    with pytest.raises(UsageError, match="train in one process, not 2 under torchrun"):
        trainer.check_soft_targets(TrainConfig(**soft), World(rank=1, size=2))
    trainer.check_soft_targets(TrainConfig(**soft), World())  # one process: allowed


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
        (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
        (["--mixup", "-0.2"], "--mixup must be a finite number ≥ 0"),
        (["--mixup", "nan"], "--mixup must be a finite number ≥ 0"),
        (["--model", "perceptron", "--mixup", "0.2"], "the perceptron learns from class labels"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, capsys, flags, says):
    runs = tmp_path / "runs"
    args = ["train", "--dataset", "synthetic", "--no-cache", "--device", "cpu", "--runs-dir", str(runs), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not runs.exists(), "a refused run leaves nothing behind"
