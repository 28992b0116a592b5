"""``mlp-torch eval`` and ``mlp-torch predict`` on a finished run, and the functions behind them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlp_torch.cli import main
from mlp_torch.data import DataOptions, load_data
from mlp_torch.data.folder import read_image
from mlp_torch.errors import CheckpointError
from mlp_torch.training import TrainConfig, load_checkpoint, train
from mlp_torch.training.inference import evaluate_checkpoint, load_model, predict_images

CLASSES = ["class0", "class1", "class2"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-epoch run: (config, metrics, run directory)."""
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=60, synthetic_test_per_class=20, image_size=8, cache=False
    )
    config = TrainConfig(
        hidden=[16],
        epochs=3,
        batch_size=32,
        lr=0.05,
        device="cpu",
        histogram_every=0,
        runs_dir=tmp_path_factory.mktemp("inference") / "runs",
        progress=False,
        data=data,
    )
    metrics = train(config)
    return config, metrics, Path(metrics["run_dir"])


# ---------------------------------------------------------------- eval


def test_eval_run_dir_on_test_matches_metrics_json(run, tmp_path, capsys):
    _, metrics, run_dir = run
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("test split") and "balanced accuracy" in printed and "true \\ predicted" in printed
    for name in CLASSES:
        assert sum(line.strip().startswith(name) for line in printed.splitlines()) == 2, "accuracy row + matrix row"
    result = json.loads(out.read_text())
    assert result["split"] == "test" and result["classes"] == CLASSES
    assert list(result["per_class_accuracy"]) == CLASSES
    assert result["accuracy"] == metrics["test_accuracy"]
    assert result["balanced_accuracy"] == metrics["test_balanced_accuracy"]
    assert result["confusion_matrix"] == metrics["confusion_matrix"]
    assert result["loss"] == pytest.approx(metrics["test_loss"])
    assert f"{100 * metrics['test_accuracy']:6.2f} %" in printed


def test_eval_val_split_reproduces_the_best_epoch(run, tmp_path, capsys):
    _, metrics, run_dir = run
    out = tmp_path / "val.json"
    assert main(["eval", str(run_dir), "--split", "val", "--device", "cpu", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith("val split")
    result = json.loads(out.read_text())
    assert result["accuracy"] == metrics["best_val_accuracy"]
    assert result["balanced_accuracy"] == metrics["best_val_balanced_accuracy"]
    assert sum(map(sum, result["confusion_matrix"])) == 18  # 6 validation images per class


def test_evaluate_checkpoint_file_scores_that_checkpoint(run):
    _, metrics, run_dir = run
    result, classes = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt", CPU, split="val")
    last_epoch = metrics["history"][-1]
    assert classes == CLASSES
    assert result.accuracy == last_epoch["val_accuracy"]
    assert result.balanced_accuracy == last_epoch["val_balanced_accuracy"]
    assert result.loss == pytest.approx(last_epoch["val_loss"])


def test_eval_refuses_what_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "checkpoints/best.pt" in err and err.count("\n") == 1
    assert main(["eval", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        evaluate_checkpoint(tmp_path, CPU)


# ---------------------------------------------------------------- predict


def write_images(folder: Path) -> list[Path]:
    """A PNG the size of training images and a larger greyscale JPEG (converted and resized on read)."""
    rng = np.random.default_rng(0)
    png, jpeg = folder / "small.png", folder / "big grey.jpg"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8), mode="L").save(jpeg, quality=90)
    return [png, jpeg]


def test_predict_prints_top_classes_with_probabilities(run, tmp_path, capsys):
    _, _, run_dir = run
    images = write_images(tmp_path)
    out = tmp_path / "predictions.json"
    assert main(["predict", str(run_dir), *map(str, images), "--top", "2", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(str(path) in printed for path in images)
    predictions = json.loads(out.read_text())
    assert [p["image"] for p in predictions] == [str(path) for path in images]
    for entry in predictions:
        names = [t["class"] for t in entry["top"]]
        probs = [t["probability"] for t in entry["top"]]
        assert len(names) == 2 and len(set(names)) == 2 and set(names) <= set(CLASSES)
        assert all(0.0 <= p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True)
        assert sum(probs) <= 1.0 + 1e-6
        assert all(f"{name:<16} {100 * p:6.2f} %" in printed for name, p in zip(names, probs))


def test_predict_probabilities_are_the_models_softmax(run, tmp_path):
    _, _, run_dir = run
    images = write_images(tmp_path)
    loaded = load_model(run_dir, CPU)
    top = predict_images(loaded, images, top=10)  # more than there are classes: all of them
    pixels = torch.stack([read_image(p, 8) for p in images])
    with torch.no_grad():
        expected = torch.softmax(loaded.model(loaded.standardizer(pixels)), dim=1)
    for row, probs in zip(top, expected):
        assert sorted(name for name, _ in row) == CLASSES
        assert sum(p for _, p in row) == pytest.approx(1.0, abs=1e-6)
        for name, p in row:
            assert p == pytest.approx(float(probs[CLASSES.index(name)]), abs=1e-6)


def test_predict_needs_nothing_but_the_checkpoint(run, tmp_path, capsys):
    """Moved away from its run (no config.json, no data), best.pt still predicts like the trained model."""
    config, _, run_dir = run
    lone = tmp_path / "lone.pt"
    shutil.copy(run_dir / "checkpoints" / "best.pt", lone)
    test = load_data(config.data).test
    picked = [0, 25, 59]  # one image of each class, saved losslessly at the training size
    paths = []
    for i in picked:
        path = tmp_path / f"test{i}.png"
        Image.fromarray(test.x[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    out = tmp_path / "p.json"
    assert main(["predict", str(lone), *map(str, paths), "--top", "1", "--device", "cpu", "--json", str(out)]) == 0
    capsys.readouterr()
    loaded = load_model(lone, CPU)
    ckpt = load_checkpoint(lone)
    assert loaded.classes == ckpt["classes"] == CLASSES and loaded.image_size == 8
    logits = loaded.model(loaded.standardizer(test.x[picked]))
    assert [p["top"][0]["class"] for p in json.loads(out.read_text())] == [CLASSES[int(k)] for k in logits.argmax(1)]


def test_predict_bad_input_is_a_one_line_error(run, tmp_path, capsys):
    _, _, run_dir = run
    image = write_images(tmp_path)[0]
    assert main(["predict", str(run_dir), str(image), "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(tmp_path / "nope.png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nope.png" in err and err.count("\n") == 1
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    assert main(["predict", str(run_dir), str(not_an_image), "--device", "cpu"]) == 2
    assert "cannot read image" in capsys.readouterr().err
