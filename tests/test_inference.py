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


# ---------------------------------------------------------------- a checkpoint is checked before anything is built


def doctor(ckpt: dict, case: str) -> dict:
    """``ckpt`` (the 3-class, 8 px, 192-16-3 MLP of ``run``) with one thing made untrue."""
    cfg, state = ckpt["model_config"], ckpt["model_state"]
    if case == "huge hidden layer":
        cfg["hidden"] = [10**12]
    elif case == "image size":
        ckpt["image_size"] = 16
    elif case == "in_features and image size":
        cfg["in_features"], ckpt["image_size"] = 768, 16
    elif case == "standardiser length":
        ckpt["standardizer"]["mean"] = torch.zeros(100)
    elif case == "classes as a string":
        ckpt["classes"] = "cat"
    elif case == "too few class names":
        ckpt["classes"] = ["cat", "dog"]
    elif case == "kind":
        cfg["kind"] = "transformer"
    elif case == "activation":
        cfg["activation"] = "gelu"
    elif case == "backend":
        cfg["backend"] = "fast"
    elif case == "size as a string":
        cfg["in_features"] = "192"
    elif case == "missing bias":
        del state["layers.1.bias"]
    elif case == "broken chain":
        state["layers.1.weight"] = torch.zeros(3, 15)
    elif case == "zero-stride views":  # 4 bytes in the file posing as a 10**6-unit layer
        cfg["hidden"] = [10**6]
        state["layers.0.weight"] = torch.zeros(1).expand(10**6, 192)
        state["layers.0.bias"] = torch.zeros(1).expand(10**6)
        state["layers.1.weight"] = torch.zeros(1).expand(3, 10**6)
    return ckpt


DOCTORED = {
    "huge hidden layer": "describes layer sizes 192-1000000000000-3, its tensors hold 192-16-3",
    "image size": "image size 16 does not give the model's 192 inputs",
    "in_features and image size": "describes layer sizes 768-16-3, its tensors hold 192-16-3",
    "standardiser length": "standardizer mean is (100,), not 192 floating-point numbers",
    "classes as a string": "class names are str 'cat', not a list of names",
    "too few class names": "names 2 classes (cat, dog) for a 3-class model",
    "kind": "model kind 'transformer' is not one of",
    "activation": "activation 'gelu' is not one of",
    "backend": "backend 'fast' is not one of",
    "size as a string": "sizes (in_features, num_classes, hidden) are not integers",
    "missing bias": "not layers.0..0.weight/bias",
    "broken chain": "does not chain: layer 0 gives 16 outputs, layer 1 takes 15",
    "zero-stride views": "strided views instead of stored tensors at layer 0",
}


@pytest.mark.parametrize("case", list(DOCTORED))
def test_a_checkpoint_that_disagrees_with_itself_is_one_line_and_builds_nothing(
    run, tmp_path, capsys, monkeypatch, case
):
    import mlp_torch.training.inference as inference

    _, _, run_dir = run
    ckpt = doctor(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True), case)
    path = tmp_path / "doctored.pt"
    torch.save(ckpt, path)
    built = []
    monkeypatch.setattr(inference, "build_model", lambda **kw: built.append(kw))
    image = write_images(tmp_path)[0]
    for argv in (["predict", str(path), str(image)], ["eval", str(path)]):
        assert main([*argv, "--device", "cpu"]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured.err
        assert captured.err.startswith(f"mlp-torch {argv[0]}: error: {path}: ") and DOCTORED[case] in captured.err
    assert built == []


def binary_perceptron(ckpt: dict, rows: int) -> dict:
    ckpt["model_config"] = {"kind": "perceptron", "in_features": 192, "num_classes": 2, "backend": "builtin"}
    ckpt["model_state"] = {"layers.0.weight": torch.randn(rows, 192), "layers.0.bias": torch.zeros(rows)}
    ckpt["classes"] = ["cat", "dog"]
    return ckpt


def test_a_binary_perceptron_has_one_output_row_for_two_classes(run, tmp_path, capsys):
    _, _, run_dir = run
    image = write_images(tmp_path)[0]
    for rows, code in ((1, 0), (2, 2)):
        ckpt = binary_perceptron(torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True), rows)
        torch.save(ckpt, tmp_path / "perceptron.pt")
        assert main(["predict", str(tmp_path / "perceptron.pt"), str(image), "--device", "cpu"]) == code
        captured = capsys.readouterr()
        if code == 0:
            assert "cat" in captured.out and "dog" in captured.out
        else:
            assert "describes layer sizes 192-1, its tensors hold 192-2" in captured.err


def test_eval_of_an_empty_split_is_one_line(run, tmp_path, capsys):
    """A run trained with --val-fraction 0 has no validation split to evaluate."""
    _, _, run_dir = run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["config"]["data"]["val_fraction"] = 0.0
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["eval", str(copy), "--split", "val", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the val split of synthetic (seed 0) is empty" in err
    assert main(["eval", str(copy), "--split", "test", "--device", "cpu"]) == 0
