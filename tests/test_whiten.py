"""``--whiten zca``: the Whitener's formula against a dense ZCA in float64, training on whitened and
augmented images, and a whitened model carried whole through checkpoints (eval, predict, resume)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_training import assert_same_final_state, tiny_config, tiny_data

from mlp_torch.cli import main
from mlp_torch.data import DeviceBatches, Standardizer, Whitener, fit_preprocessor
from mlp_torch.data.preprocess import RANK_CUTOFF
from mlp_torch.errors import CheckpointError
from mlp_torch.training import load_checkpoint, load_run_config, train
from mlp_torch.training.checkpoint import save_checkpoint, validate_checkpoint
from mlp_torch.training.inference import load_model
from mlp_torch.training.trainer import start_run

CPU = torch.device("cpu")


def correlated(n: int = 400, d: int = 12, seed: int = 0) -> torch.Tensor:
    """Features with standard deviations from 10 to 1 along random orthogonal directions (correlated, as
    neighbouring pixels are), shifted away from 0."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return (torch.randn(n, d, generator=g) * torch.logspace(1, 0, d)) @ rotation.T + 3.0


def dense_zca(z: torch.Tensor, zca_eps: float) -> torch.Tensor:
    """The textbook map s · U (Λ + εI)^-½ Uᵀ in float64, every direction with its own eigenvalue."""
    z = z.double()
    lam, u = torch.linalg.eigh(z.T @ z / (len(z) - 1))
    lam = lam.clamp_min(0)
    eps = zca_eps * lam.mean()
    w = (u * (lam + eps).rsqrt()) @ u.T
    scale = (z @ w).var(0).mean().rsqrt()  # the mean feature variance of the result is 1
    return scale * w


def test_with_every_direction_kept_the_whitener_is_the_dense_zca_map():
    x = correlated()
    std = Standardizer.fit(x)
    white = Whitener.fit(std, x, zca_eps=1e-3)  # ε tiny: every eigenvalue is above ε/50
    assert white.rank == x.shape[1]
    z = std(x)
    expected = z.double() @ dense_zca(z, 1e-3)
    torch.testing.assert_close(white(x).double(), expected, rtol=1e-4, atol=1e-4)
    out = white(x).double()
    assert out.var(0).mean() == pytest.approx(1.0, abs=1e-4)
    cov = out.T @ out / (len(out) - 1)
    assert (cov - torch.diag(cov.diagonal())).abs().max() < 0.02, "decorrelated"


def test_a_soft_whitener_keeps_the_strong_directions_and_scales_the_rest_within_one_percent():
    x = correlated(d=24)
    std = Standardizer.fit(x)
    white = Whitener.fit(std, x, zca_eps=10.0)
    z = std(x).double()
    lam, u = torch.linalg.eigh(z.T @ z / (len(z) - 1))
    eps = 10.0 * lam.clamp_min(0).mean()
    assert white.rank == int((lam > eps / RANK_CUTOFF).sum()) and 0 < white.rank < 24
    # along each principal direction the map is a scaling; its factor is (λ + ε)^-½ up to the global
    # scale, exactly for the kept directions and within 1 % for the others
    factors = (white(std_inverse(std, u.T.float())).double() * u.T).sum(1)
    exact = (lam.clamp_min(0) + eps).rsqrt()
    ratio = factors / exact
    kept = lam > eps / RANK_CUTOFF
    assert torch.allclose(ratio[kept], ratio[kept][0].expand(int(kept.sum())), rtol=1e-4)
    assert ((ratio[~kept] / ratio[kept][0]) - 1).abs().max() < 0.01


def std_inverse(std: Standardizer, z: torch.Tensor) -> torch.Tensor:
    """Inputs whose standardised form is ``z``."""
    return z * std.std + std.mean


def test_whitened_images_are_flipped_and_cropped_as_floats_with_the_mean_as_padding():
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    white = fit_preprocessor(x, "zca", 10.0)
    images = white.images(x)
    assert images.dtype == torch.float32 and images.shape == x.shape
    torch.testing.assert_close(images.reshape(20, -1), white(x))
    batches = DeviceBatches(
        images, torch.zeros(20, dtype=torch.long), 20, Standardizer.identity(192), shuffle=False, augment_crop=2
    )
    xb, _ = next(iter(batches))
    assert xb.dtype == torch.float32 and xb.shape == (20, 192)
    shifted = xb.reshape(20, 3, 8, 8)
    # every crop of a 2-pixel zero-padded image keeps a 4x4 core of the original somewhere; padding is 0
    assert any(
        torch.equal(shifted[0, :, 2:6, 2:6], images[0, :, a : a + 4, b : b + 4]) for a in range(5) for b in range(5)
    )


# ------------------------------------------------------------------------------ a whitened run


@pytest.fixture(scope="module")
def whitened_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    config = tiny_config(runs, data=tiny_data(whiten="zca", zca_eps=10.0), epochs=2, histogram_every=1)
    metrics = train(config)
    return config, metrics, Path(metrics["run_dir"])


def test_a_whitened_run_saves_its_whitener_and_eval_applies_it(whitened_run, capsys):
    config, metrics, run_dir = whitened_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert set(ckpt["whitener"]) == {"basis", "gains", "scale"}
    assert ckpt["whitener"]["basis"].shape[0] == 192 and set(ckpt["standardizer"]) == {"mean", "std"}
    loaded = load_model(run_dir, CPU)
    assert isinstance(loaded.standardizer, Whitener)
    out = run_dir / "eval.json"
    assert main(["eval", str(run_dir), "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["accuracy"] == metrics["test_accuracy"]
    # the same checkpoint without its whitener scores differently: eval did use it
    plain = dict(ckpt)
    del plain["whitener"]
    torch.save(plain, run_dir / "plain.pt")
    assert main(["eval", str(run_dir / "plain.pt"), "--device", "cpu", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["loss"] != pytest.approx(metrics["test_loss"], rel=1e-6)
    capsys.readouterr()


def test_predict_whitens_the_image_as_training_did(whitened_run, tmp_path, capsys):
    _, _, run_dir = whitened_run
    pixels = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    image = tmp_path / "one.png"
    Image.fromarray(pixels.numpy()).save(image)
    out = tmp_path / "predictions.json"
    assert main(["predict", str(run_dir), str(image), "--top", "4", "--device", "cpu", "--json", str(out)]) == 0
    top = {t["class"]: t["probability"] for t in json.loads(out.read_text())[0]["top"]}
    loaded = load_model(run_dir, CPU)
    x = pixels.permute(2, 0, 1).unsqueeze(0)  # 1,3,8,8
    assert isinstance(loaded.standardizer, Whitener)
    for name, transform in (("whitened", loaded.standardizer), ("standardised only", loaded.standardizer.standardizer)):
        with torch.no_grad():
            probs = torch.softmax(loaded.model(transform(x)), dim=1)[0]
        expected = {c: float(p) for c, p in zip(loaded.classes, probs)}
        same = all(top[c] == pytest.approx(expected[c], rel=1e-5, abs=1e-7) for c in top)
        assert same == (name == "whitened"), name
    capsys.readouterr()


def test_the_whitener_is_refitted_the_same_and_resume_is_bitwise_exact(tmp_path):
    data = tiny_data(whiten="zca", augment_flip=True, augment_crop=2)
    config = tiny_config(tmp_path / "whole", data=data, epochs=3, histogram_every=0)
    whole = Path(train(config)["run_dir"])
    half = train(dataclasses.replace(config, runs_dir=tmp_path / "split"), stop_after_epochs=1)
    run_dir = Path(half["run_dir"])
    train(load_run_config(run_dir), resume=run_dir)
    assert_same_final_state(whole, run_dir)


@pytest.mark.parametrize(
    "case, says",
    [
        ("basis rows", "whitener basis is (100, 4), not (192, k)"),
        ("gains", "whitener has (3,) gains for 4 directions"),
        ("scale", "whitener scale is not one positive number"),
        ("keys", "whitener is not a dict of basis, gains and scale"),
    ],
)
def test_a_doctored_whitener_is_refused(whitened_run, tmp_path, case, says):
    _, _, run_dir = whitened_run
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    w = {"basis": torch.zeros(192, 4), "gains": torch.zeros(4), "scale": torch.tensor(1.0, dtype=torch.float64)}
    if case == "basis rows":
        w["basis"] = torch.zeros(100, 4)
    elif case == "gains":
        w["gains"] = torch.zeros(3)
    elif case == "scale":
        w["scale"] = torch.tensor(-1.0)
    else:
        del w["scale"]
    ckpt["whitener"] = w
    with pytest.raises(CheckpointError, match=re.escape(says)):
        validate_checkpoint(ckpt, tmp_path / "x.pt")


def test_zca_eps_must_be_positive(tmp_path, capsys):
    assert (
        main(["train", "--dataset", "synthetic", "--whiten", "zca", "--zca-eps", "0", "--runs-dir", str(tmp_path)]) == 2
    )
    assert "--zca-eps must be a positive number" in capsys.readouterr().err


def test_resume_whitens_with_the_saved_map_not_a_new_fit(tmp_path):
    config = tiny_config(tmp_path, data=tiny_data(whiten="zca"), epochs=2, histogram_every=0)
    run_dir = Path(train(config, stop_after_epochs=1)["run_dir"])
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["whitener"]["scale"] = ckpt["whitener"]["scale"] * 2  # a map that a refit would not give
    save_checkpoint(last, ckpt)
    with start_run(load_run_config(run_dir), resume=run_dir) as state:
        assert isinstance(state.standardizer, Whitener) and state.standardizer.scale == float(ckpt["whitener"]["scale"])
        torch.testing.assert_close(state.batches.x, state.standardizer.images(state.data.train.x))
        torch.testing.assert_close(state.state_dict()["whitener"]["basis"], ckpt["whitener"]["basis"])
