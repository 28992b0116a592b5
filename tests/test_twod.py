"""2-D problems end to end (issue 13): training with the defaults, pictures, checkpoints, eval, predict, data, plot.

The issue's must-show commands run here as typed (with ``--boundary-every 0`` where the frames are
not the point), except the spiral's 100-unit ReLU MLP, shortened from 200 epochs to 30 (it reaches
99.8 % at 200). The perceptron's limit on the models alone is in ``test_planar.py``; the figures
alone in ``test_figures.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mlp_torch.training.callbacks as callbacks_module
import mlp_torch.training.pictures as pictures
from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.errors import CheckpointError, UsageError
from mlp_torch.models import build_model
from mlp_torch.training import TrainConfig, load_checkpoint, load_run_config, train
from mlp_torch.training.checkpoint import validate_checkpoint
from mlp_torch.training.inference import load_model, predict_images, predict_points

CPU = torch.device("cpu")
XOR_SIGMOID = ["--dataset", "xor", "--output", "sigmoid", "--hidden", "8", "--activation", "tanh", "--epochs", "100"]


def train_cli(runs: Path, *flags: str) -> tuple[dict, Path]:
    """``mlp-torch train FLAGS`` into ``runs``: (metrics.json, the run directory)."""
    before = set(runs.iterdir()) if runs.exists() else set()
    assert main(["train", *flags, "--runs-dir", str(runs), "--device", "cpu", "--no-progress"]) == 0
    (run_dir,) = set(runs.iterdir()) - before
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def read_images(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events


def image_steps(run_dir: Path, tag: str) -> list[int]:
    events = read_images(run_dir)
    return [e.step for e in events.Images(tag)] if tag in events.Tags()["images"] else []


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def xor_run(tmp_path_factory):
    """The issue's ``mlp-torch train --dataset xor --output sigmoid --hidden 8 --activation tanh --epochs 100``."""
    return train_cli(tmp_path_factory.mktemp("xor") / "runs", *XOR_SIGMOID)


# ---------------------------------------------------------------- the must-show runs, with the defaults


def test_eight_tanh_units_and_a_sigmoid_output_solve_xor_and_draw_their_boundary(xor_run):
    metrics, run_dir = xor_run
    assert metrics["status"] == "completed" and metrics["test_accuracy"] >= 0.95
    assert run_dir.name.startswith("mlp8-tanh-sigmoidout-custom-lr0.05-seed0_")
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert config["output"] == "sigmoid" and config["lr"] == 0.05 and config["boundary_every"] is None
    assert png_size(run_dir / "decision_boundary.png") == (720, 560)
    assert image_steps(run_dir, "decision_boundary") == list(range(10, 101, 10))  # a tenth of the epochs: a slider
    assert image_steps(run_dir, "activations") == [0]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert checkpoint["image_size"] == 0 and checkpoint["model_config"]["output"] == "sigmoid"


def test_no_line_solves_xor_the_perceptron_run(tmp_path):
    flags = ["--dataset", "xor", "--model", "perceptron", "--epochs", "50", "--boundary-every", "0"]
    metrics, run_dir = train_cli(tmp_path, *flags)
    assert metrics["test_accuracy"] <= 0.80
    assert png_size(run_dir / "decision_boundary.png") == (720, 560)
    assert image_steps(run_dir, "decision_boundary") == [50]


def test_the_spiral_defeats_the_linear_softmax_and_not_a_relu_layer(tmp_path):
    flags = ["--dataset", "spiral", "--model", "softmax", "--epochs", "100", "--boundary-every", "0"]
    linear, linear_dir = train_cli(tmp_path, *flags)
    assert linear["test_accuracy"] <= 0.60
    assert json.loads((linear_dir / "config.json").read_text())["config"]["lr"] == 0.05  # 2 inputs, not 3072
    flags = [
        "--dataset",
        "spiral",
        "--hidden",
        "100",
        "--activation",
        "relu",
        "--epochs",
        "30",
        "--boundary-every",
        "0",
    ]
    mlp, mlp_dir = train_cli(tmp_path, *flags)
    assert mlp["test_accuracy"] >= 0.95
    assert image_steps(mlp_dir, "decision_boundary") == [30] and (mlp_dir / "decision_boundary.png").is_file()


def test_a_sigmoid_output_needs_two_classes_and_a_softmax_or_mlp_model(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--dataset", "spiral", "--output", "sigmoid", "--runs-dir", str(runs)]) == 2
    assert "a sigmoid output is one unit for two classes; this model has 3 classes" in capsys.readouterr().err
    assert main(["train", "--dataset", "xor", "--model", "perceptron", "--output", "sigmoid"]) == 2
    assert "the perceptron's output is its step" in capsys.readouterr().err
    assert not runs.exists(), "nothing is created for a run that cannot start"
    assert TrainConfig(model="softmax", output="sigmoid").run_name == "logistic-custom-lr0.001-seed0"


# ---------------------------------------------------------------- the decision-boundary frames, through a run


def tiny(runs: Path, **overrides) -> TrainConfig:
    values = dict(hidden=[4], activation="tanh", epochs=5, device="cpu", runs_dir=runs, progress=False)
    values.update(overrides)
    return TrainConfig(data=DataOptions(dataset="xor", samples=200), **values)


@pytest.fixture
def titles(monkeypatch) -> list[str]:
    """The second title line of every decision-boundary picture drawn, in order."""
    drawn: list[str] = []
    original = pictures.decision_boundary_figure

    def recording(*args, title=None, **kwargs):
        drawn.append(title)
        return original(*args, title=title, grid=20, **kwargs)  # a coarse grid: fast

    monkeypatch.setattr(pictures, "decision_boundary_figure", recording)
    return drawn


def test_frames_every_n_epochs_then_the_runs_model_in_the_png(tmp_path, titles):
    metrics = train(tiny(tmp_path, boundary_every=2))
    run_dir = Path(metrics["run_dir"])
    assert image_steps(run_dir, "decision_boundary") == [2, 4, 5]  # every 2 epochs, and after the last
    assert titles[:3] == ["epoch 2 of 5", "epoch 4 of 5", "epoch 5 of 5"]
    accuracy = f"test accuracy {100 * metrics['test_accuracy']:.1f} %"
    assert titles[3:] == [f"the run's model: epoch {metrics['best_epoch']} of 5, the best by validation; {accuracy}"]
    assert png_size(run_dir / "decision_boundary.png") == (720, 560)


def test_only_the_end_with_zero_and_a_stopped_run_draws_where_it_stopped(tmp_path, titles):
    metrics = train(tiny(tmp_path, boundary_every=0, epochs=4))
    assert image_steps(Path(metrics["run_dir"]), "decision_boundary") == [4] and len(titles) == 2
    titles.clear()
    stopped = train(tiny(tmp_path, boundary_every=3, epochs=6), stop_after_epochs=2)
    run_dir = Path(stopped["run_dir"])
    assert stopped["status"] == "interrupted" and titles == ["stopped after epoch 2 of 6"]
    assert (run_dir / "decision_boundary.png").is_file() and image_steps(run_dir, "decision_boundary") == []
    titles.clear()
    train(load_run_config(run_dir), resume=run_dir)
    assert image_steps(run_dir, "decision_boundary") == [3, 6] and titles[:2] == ["epoch 3 of 6", "epoch 6 of 6"]
    assert image_steps(run_dir, "activations") == [0], "logged once per run, not again on resume"


def test_image_runs_log_the_activations_and_draw_no_boundary(tmp_path):
    data = DataOptions(dataset="synthetic", image_size=4, synthetic_train_per_class=20, synthetic_test_per_class=5)
    config = TrainConfig(hidden=[4], epochs=1, device="cpu", runs_dir=tmp_path, progress=False, data=data)
    run_dir = Path(train(config)["run_dir"])
    tags = read_images(run_dir).Tags()["images"]
    assert "activations" in tags and "decision_boundary" not in tags
    assert not (run_dir / "decision_boundary.png").exists()
    (frame,) = read_images(run_dir).Images("activations")
    assert (frame.width, frame.height) == (1300, 600)


# ---------------------------------------------------------------- last.pt for tiny epochs


def saved_names(monkeypatch) -> list[tuple[str, int]]:
    """Every checkpoint the run writes: (file name, the epoch of best.pt it records), in the order written."""
    saved: list[tuple[str, int]] = []
    original = callbacks_module.write_checkpoint_bytes

    def recording(path, data):
        saved.append((Path(path).name, torch.load(io.BytesIO(data), weights_only=True)["best"]["epoch"]))
        original(path, data)

    monkeypatch.setattr(callbacks_module, "write_checkpoint_bytes", recording)
    return saved


def test_last_pt_is_saved_with_each_best_pt_at_the_end_and_every_few_seconds(tmp_path, monkeypatch):
    saved = saved_names(monkeypatch)
    monkeypatch.setattr(callbacks_module, "LAST_EVERY_SECONDS", 1e9)  # no time-based save in this test
    metrics = train(tiny(tmp_path, epochs=12, boundary_every=0))
    improved, best = [], -1.0
    for record in metrics["history"]:
        if record["val_balanced_accuracy"] > best:
            improved.append(record["epoch"])
            best = record["val_balanced_accuracy"]
    expected = [name for _ in improved for name in ("best.pt", "last.pt")]
    assert [name for name, _ in saved] == expected + ([] if improved[-1] == 12 else ["last.pt"])
    assert len(saved) < 2 * 12, "not every epoch"
    # best.pt never gets ahead of last.pt: each last.pt names the best.pt saved just before it
    for (name, best), (next_name, next_best) in zip(saved, saved[1:]):
        assert name != "best.pt" or (next_name, next_best) == ("last.pt", best)
    assert load_checkpoint(Path(metrics["run_dir"]) / "checkpoints" / "last.pt")["epoch"] == 12

    saved.clear()
    monkeypatch.setattr(callbacks_module, "LAST_EVERY_SECONDS", 0.0)
    train(tiny(tmp_path, epochs=3, boundary_every=0))
    assert [name for name, _ in saved].count("last.pt") == 3, "epochs longer than the interval: every epoch"


# ---------------------------------------------------------------- checkpoints, eval and predict of points


def test_eval_of_a_2d_run_reproduces_its_test_accuracy(xor_run, tmp_path, capsys):
    metrics, run_dir = xor_run
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--device", "cpu", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["accuracy"] == metrics["test_accuracy"] and result["classes"] == ["class0", "class1"]


def test_predict_points_shows_both_class_probabilities(xor_run, tmp_path, capsys):
    _, run_dir = xor_run
    out = tmp_path / "predict.json"
    assert main(["predict", str(run_dir), "0.5,-0.5", "0.5,0.5", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("(0.5, -0.5)\n") and "(0.5, 0.5)\n" in printed
    first, second = json.loads(out.read_text())
    assert first["point"] == [0.5, -0.5] and [t["class"] for t in first["top"]] == ["class1", "class0"]  # x₁x₂ < 0
    assert [t["class"] for t in second["top"]] == ["class0", "class1"]  # x₁x₂ > 0
    loaded = load_model(run_dir, CPU)
    with torch.no_grad():
        logits = loaded.model(loaded.standardizer(torch.tensor([[0.5, -0.5]])))
    p = float(logits[0, 1])  # the sigmoid unit: logits [0, p], so the class probabilities are 1 − σ(p), σ(p)
    probability = {t["class"]: t["probability"] for t in first["top"]}
    assert probability["class1"] == pytest.approx(torch.sigmoid(torch.tensor(p)).item(), abs=1e-6)
    assert probability["class0"] + probability["class1"] == pytest.approx(1.0, abs=1e-6)
    assert f"{'class1':<16} {100 * probability['class1']:6.2f} %" in printed


def test_predict_points_bad_input_is_one_line(xor_run, capsys):
    _, run_dir = xor_run
    assert main(["predict", str(run_dir), "--", "-0.5,0.5"]) == 0, "a negative x after --"
    assert "(-0.5, 0.5)" in capsys.readouterr().out
    for forgot in (["-0.5,0.5"], ["0,0", "-0.5,0.5"]):  # argparse reads -0.5,0.5 as an option
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(run_dir), *forgot])
        assert exit_info.value.code == 2 and "goes after --" in capsys.readouterr().err
    for bad in ("1,2,3", "a,b", "nan,0", "cat.jpg"):
        assert main(["predict", str(run_dir), bad, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"{bad!r} is not a point x,y" in err and err.count("\n") == 1, err
    loaded = load_model(run_dir, CPU)
    with pytest.raises(UsageError, match="classifies 2-D points, not images"):
        predict_images(loaded, [Path("cat.jpg")])
    loaded.image_size = 8
    with pytest.raises(UsageError, match="classifies images"):
        predict_points(loaded, [(0.0, 0.0)])


def points_checkpoint(image_size: int = 0, in_features: int = 2, dataset: str | None = "spiral") -> dict:
    model = build_model("mlp", in_features, 3, [4], seed=0)
    checkpoint = {
        "model_config": model.config(),
        "model_state": {k: v.clone() for k, v in model.state_dict().items()},
        "classes": ["arm0", "arm1", "arm2"],
        "image_size": image_size,
        "standardizer": {"mean": torch.zeros(in_features), "std": torch.ones(in_features)},
    }
    if dataset is not None:
        checkpoint["config"] = {"data": {"dataset": dataset}}
    return checkpoint


def test_checkpoint_validation_takes_points_and_stays_strict(tmp_path):
    validate_checkpoint(points_checkpoint(), tmp_path / "ok.pt")
    validate_checkpoint(points_checkpoint(dataset=None), tmp_path / "ok.pt")  # a lone checkpoint: sizes alone
    validate_checkpoint(points_checkpoint(image_size=2, in_features=12, dataset="synthetic"), tmp_path / "ok.pt")
    cases = {
        "its image size 0 means 2-D points, 2 inputs, but its model takes 12": points_checkpoint(in_features=12),
        "its image size -1 is not a number of pixels": points_checkpoint(image_size=-1),
        "it was trained on spiral data, which image size 2 does not describe": points_checkpoint(2, 12),
        "it was trained on synthetic data, which image size 0 does not describe": points_checkpoint(
            dataset="synthetic"
        ),
    }
    for message, checkpoint in cases.items():
        with pytest.raises(CheckpointError, match=message):
            validate_checkpoint(checkpoint, tmp_path / "bad.pt")


# ---------------------------------------------------------------- data, plot, compare


def test_data_describes_points_not_images(capsys):
    assert main(["data", "--dataset", "spiral", "--arms", "4", "--samples", "400"]) == 0
    out = capsys.readouterr().out
    assert "inputs:     2-D points (x₁, x₂), 2 features" in out and "image size" not in out
    assert "arm0, arm1, arm2, arm3 (labels 0..3)" in out and "4 arms, 400 points, noise 0.1" in out


def test_plot_activations_writes_the_slide(tmp_path, capsys):
    out = tmp_path / "activations.png"
    assert main(["plot", "activations", "--out", str(out)]) == 0
    assert png_size(out) == (1300, 600) and f"wrote {out}" in capsys.readouterr().out
    svg = tmp_path / "activations.svg"
    assert main(["plot", "activations", "--out", str(svg)]) == 0 and b"<svg" in svg.read_bytes()[:500]
    assert main(["plot", "activations", "--out", str(tmp_path / "a.jpg")]) == 2
    assert "name a .png, .pdf or .svg file" in capsys.readouterr().err
    assert main(["plot", "activations", "--out", str(tmp_path / "missing" / "a.png")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert Image.open(io.BytesIO(out.read_bytes())).mode in ("RGB", "RGBA")


def test_compare_with_a_sigmoid_output_agrees_on_every_backend(capsys):
    flags = ["--hidden", "8", "--image-size", "4", "--synthetic-train-per-class", "10", "--no-cache"]
    assert main(["compare", "--output", "sigmoid", *flags, "--device", "cpu"]) == 0  # synthetic: two classes then
    out = capsys.readouterr().out
    assert "'output': 'sigmoid'" in out and "layers.1.weight  manual-vs-builtin  1x8" in out
    assert "all pairs within tolerance" in out


def test_the_boundary_strip_script_draws_one_run_at_the_epochs_asked(tmp_path, capsys):
    """scripts/boundary_strip.py, which makes the README's circles picture: one panel per epoch of --at."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "boundary_strip", Path(__file__).parents[1] / "scripts/boundary_strip.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "strip.png"
    run = ["--dataset", "circles", "--samples", "200", "--hidden", "4", "--activation", "tanh", "--epochs", "3"]
    run += ["--boundary-every", "0", "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", "--no-progress"]
    assert script.main(["--at", "3,1", "--out", str(out), "--", *run]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    width, height = png_size(out)
    assert height == 380 and width == 2 * 320 + 160, "two panels, epochs 1 and 3"
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--at", "1,4", "--out", str(out), "--", *run])
    assert exit_info.value.code == 2 and "--at needs epochs within 1..3" in capsys.readouterr().err


def test_a_sigmoid_output_on_images_predicts_both_classes(tmp_path, capsys):
    """Item 4 on images: ``--classes cat,dog --output sigmoid`` trains, and predict shows 1 − σ(p) and σ(p)."""
    data = ["--dataset", "synthetic", "--classes", "cat,dog", "--image-size", "4", "--no-cache"]
    data += ["--synthetic-train-per-class", "20", "--synthetic-test-per-class", "5"]
    metrics, run_dir = train_cli(tmp_path / "runs", *data, "--output", "sigmoid", "--hidden", "4", "--epochs", "1")
    assert metrics["status"] == "completed" and run_dir.name.startswith("mlp4-sigmoid-sigmoidout-custom-lr0.05-seed0_")
    assert not (run_dir / "decision_boundary.png").exists()
    image = tmp_path / "red.png"
    Image.new("RGB", (9, 5), (200, 30, 30)).save(image)
    out = tmp_path / "predict.json"
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(image), "--device", "cpu", "--json", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}\n")
    (record,) = json.loads(out.read_text())
    probability = {t["class"]: t["probability"] for t in record["top"]}
    loaded = load_model(run_dir, CPU)
    assert loaded.model.layers[-1].weight.shape == (1, 4), "one output unit"
    with torch.no_grad():
        pixels = torch.tensor([200, 30, 30], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
        p = float(loaded.model(loaded.standardizer(pixels))[0, 1])
    assert probability["dog"] == pytest.approx(torch.sigmoid(torch.tensor(p)).item(), abs=1e-6)
    assert probability["cat"] == pytest.approx(1 - probability["dog"], abs=1e-6)
