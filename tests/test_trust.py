"""Checkpoints and run configs are data from strangers: ``eval``, ``predict`` and ``train --resume``
never download, never take URLs, md5 sums or cache folders from them, and run no code from them.

The reproduction is the issue's: a checkpoint that loads cleanly with ``weights_only=True`` but
whose data config points at a crafted ``cifar-10-python.tar.gz`` (every batch a pickle that runs
``touch PWNED``), by URL and md5 or by data root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_archives import evil_cifar10, write_evil_folder
from PIL import Image

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, train


def tiny_run(runs: Path, data: DataOptions, name: str) -> Path:
    config = TrainConfig(
        hidden=[8],
        epochs=1,
        batch_size=32,
        device="cpu",
        histogram_every=0,
        progress=False,
        runs_dir=runs,
        name=name,
        data=data,
    )
    return Path(train(config)["run_dir"])


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """``mlp-torch train --dataset synthetic --epochs 1 --hidden 8``, smaller."""
    data = DataOptions(dataset="synthetic", synthetic_train_per_class=40, synthetic_test_per_class=10, image_size=8)
    return tiny_run(tmp_path_factory.mktemp("trust") / "runs", data, "base")


@pytest.fixture
def rt(tmp_path) -> dict[str, Path]:
    """The issue's /tmp/rt: the crafted archive, served by file:// URL, and where PWNED would appear."""
    evil = tmp_path / "evil.tar.gz"
    marker = tmp_path / "PWNED"
    evil.write_bytes(evil_cifar10(marker))
    return {"dir": tmp_path, "evil": evil, "marker": marker, "root": tmp_path / "evil_root"}


def poisoned(data: dict, rt: dict[str, Path], **more) -> dict:
    return {
        **data,
        **more,
        "dataset": "cifar",
        "data_root": str(rt["root"]),
        "cifar10_url": rt["evil"].as_uri(),
        "cifar10_md5": hashlib.md5(rt["evil"].read_bytes()).hexdigest(),
        "cache_dir": str(rt["dir"] / "evil_cache"),
    }


def stranger_checkpoint(run: Path, rt: dict[str, Path], **more) -> Path:
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["data"] = poisoned(ckpt["config"]["data"], rt, **more)
    path = rt["dir"] / "stranger.pt"
    torch.save(ckpt, path)
    return path


def stranger_run(run: Path, rt: dict[str, Path]) -> Path:
    """A copy of ``run`` whose config.json and checkpoints all carry the poisoned data config."""
    copy = rt["dir"] / "runs" / run.name
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["data"] = poisoned(config["config"]["data"], rt)
    (copy / "config.json").write_text(json.dumps(config))
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(copy / "checkpoints" / name, weights_only=True)
        ckpt["config"]["data"] = poisoned(ckpt["config"]["data"], rt)
        torch.save(ckpt, copy / "checkpoints" / name)
    return copy


def mlp_torch(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mlp_torch", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )


def one_error_line(proc: subprocess.CompletedProcess, command: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mlp-torch {command}: error: ")
    return lines[0]


# ---------------------------------------------------------------- the reproduction, as processes


def test_eval_of_the_crafted_checkpoint_runs_no_code(base, rt):
    proc = mlp_torch("eval", str(stranger_checkpoint(base, rt)), "--device", "cpu", cwd=rt["dir"])
    assert proc.returncode == 2
    line = one_error_line(proc, "eval")
    assert "is not inside a run directory" in line and "--data-root" in line
    assert not rt["marker"].exists()
    assert not rt["root"].exists() and not (rt["dir"] / "evil_cache").exists()


def test_predict_with_the_crafted_checkpoint_runs_no_code(base, rt):
    image = rt["dir"] / "cat.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    proc = mlp_torch("predict", str(stranger_checkpoint(base, rt)), str(image), "--device", "cpu", cwd=rt["dir"])
    assert proc.returncode == 0, proc.stderr  # predict needs the model only: the data config is never read
    assert str(image) in proc.stdout
    assert not rt["marker"].exists() and not rt["root"].exists()


def test_resume_of_a_crafted_run_runs_no_code_and_downloads_nothing(base, rt):
    run = stranger_run(base, rt)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    proc = mlp_torch("train", "--resume", str(run), "--epochs", "2", "--device", "cpu", cwd=rt["dir"])
    assert proc.returncode == 2
    line = one_error_line(proc, "train")
    assert f"place the official archive at {rt['root'] / 'cifar-10-python.tar.gz'}" in line
    assert "c58f30108f718f92721af3b95e74349a" in line  # the official md5, not the one in config.json
    assert not rt["marker"].exists() and not rt["root"].exists()
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing saved is lost


# ---------------------------------------------------------------- the same, with the crafted files in reach

CIFAR10_ONLY = {"classes": ["cat", "dog", "ship"]}  # the default mix would first miss CIFAR-100's bear


def test_eval_with_the_crafted_batches_extracted_in_the_data_root_refuses_them(base, rt, capsys):
    write_evil_folder(rt["root"], rt["marker"])
    stranger = stranger_checkpoint(base, rt, **CIFAR10_ONLY)
    assert main(["eval", str(stranger), "--data-root", str(rt["root"]), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused without running anything" in err
    assert not rt["marker"].exists()


def test_eval_never_downloads_even_when_the_user_trusts_the_md5(base, rt, capsys, monkeypatch):
    monkeypatch.setenv("MLP_TORCH_CIFAR10_URL", rt["evil"].as_uri())
    monkeypatch.setenv("MLP_TORCH_CIFAR10_MD5", hashlib.md5(rt["evil"].read_bytes()).hexdigest())
    stranger = stranger_checkpoint(base, rt, **CIFAR10_ONLY)
    assert main(["eval", str(stranger), "--data-root", str(rt["root"]), "--device", "cpu"]) == 2
    assert "place the official archive at" in capsys.readouterr().err
    assert not rt["root"].exists()
    rt["root"].mkdir()  # placed by hand, with the md5 the user gave: extracted, then refused on reading
    shutil.copy(rt["evil"], rt["root"] / "cifar-10-python.tar.gz")
    assert main(["eval", str(stranger), "--data-root", str(rt["root"]), "--device", "cpu"]) == 2
    assert "refused without running anything" in capsys.readouterr().err
    assert not rt["marker"].exists()


def test_eval_of_a_crafted_run_directory_downloads_nothing(base, rt, capsys):
    run = stranger_run(base, rt)
    for target in (run, run / "checkpoints" / "last.pt"):
        assert main(["eval", str(target), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"place the official archive at {rt['root'] / 'cifar-10-python.tar.gz'}" in err
    assert not rt["marker"].exists() and not rt["root"].exists()


# ---------------------------------------------------------------- where the data are: the command line or the run


def write_folder(root: Path, classes=("ant", "bee"), per_class: int = 8) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) // 2 + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run on an image folder: (run directory, data root)."""
    base = tmp_path_factory.mktemp("folder")
    write_folder(base / "photos")
    data = DataOptions(dataset="folder", data_root=base / "photos", image_size=8, cache_dir=base / "train-cache")
    return tiny_run(base / "runs", data, "photos"), base / "photos"


def test_eval_takes_the_data_root_from_the_run_directory_and_the_cache_from_the_command_line(folder_run, tmp_path):
    run, _ = folder_run
    out = tmp_path / "eval.json"
    cache = tmp_path / "cache"
    assert main(["eval", str(run), "--device", "cpu", "--cache-dir", str(cache), "--json", str(out)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(out.read_text())["accuracy"] == metrics["test_accuracy"]
    assert len(list(cache.glob("folder-ant-bee-8px-*.pt"))) == 1  # not the run's --cache-dir


def test_a_lone_checkpoint_needs_data_root_except_for_synthetic_data(folder_run, base, tmp_path, capsys):
    run, photos = folder_run
    lone = tmp_path / "lone.pt"
    shutil.copy(run / "checkpoints" / "best.pt", lone)
    assert main(["eval", str(lone), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --data-root DIR" in err
    moved = tmp_path / "moved"
    shutil.copytree(photos, moved)
    args = ["--data-root", str(moved), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--json"]
    assert main(["eval", str(lone), *args, str(tmp_path / "a.json")]) == 0
    assert main(["eval", str(run), *args, str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    synthetic = tmp_path / "synthetic.pt"
    shutil.copy(base / "checkpoints" / "best.pt", synthetic)
    assert main(["eval", str(synthetic), "--device", "cpu"]) == 0  # generated data live nowhere


def test_resume_takes_data_root_and_cache_dir_from_the_command_line_only(folder_run, tmp_path, capsys):
    run, photos = folder_run
    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["data"]["cache_dir"] = str(tmp_path / "planted-cache")
    (copy / "config.json").write_text(json.dumps(config))
    moved = tmp_path / "moved"
    photos.rename(moved)
    try:
        assert main(["train", "--resume", str(copy), "--epochs", "2", "--device", "cpu"]) == 2
        assert "image folder" in capsys.readouterr().err
        cache = tmp_path / "cache"
        argv = ["train", "--resume", str(copy), "--epochs", "2", "--data-root", str(moved), "--cache-dir", str(cache)]
        assert main([*argv, "--device", "cpu"]) == 0
    finally:
        moved.rename(photos)
    err = capsys.readouterr().err
    assert "ignoring" not in err  # --data-root and --cache-dir are not among the flags a resume ignores
    assert not (tmp_path / "planted-cache").exists() and len(list(cache.glob("*.pt"))) == 1
    assert json.loads((copy / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize(
    "key, value, phrase",
    [
        ("classes", "cat", "data option 'classes' is 'cat' (str)"),
        ("classes", ["../../etc"], "data option 'classes'"),
        ("image_size", "32", "data option 'image_size' is '32' (str), expected int"),
        ("seed", True, "data option 'seed' is True (bool), expected int"),
        ("evil", 1, "unknown data option(s) 'evil'"),
        ("synthetic_train_per_class", 10**9, "synthetic data would take over 4 GiB"),
    ],
)
def test_a_malformed_saved_data_config_is_one_line_naming_the_key(base, tmp_path, capsys, key, value, phrase):
    ckpt = torch.load(base / "checkpoints" / "best.pt", weights_only=True)
    ckpt["config"]["data"][key] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    assert main(["eval", str(tmp_path / "bad.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and phrase in err and str(tmp_path / "bad.pt") in err
