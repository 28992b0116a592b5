"""What a run writes for TensorBoard, read back with TensorBoard's own EventAccumulator.

Tags and step counts per epoch, histograms, weight templates, the confusion matrix, the config as
text, hparams in the run's own directory (not a stray sub-run), the gradient check, and resume.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import mlp_torch.training.callbacks as callbacks_module
from mlp_torch.compare import TOL_BACKENDS_FLOAT32
from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, load_checkpoint, load_run_config, train

EPOCHS = 3
STEPS_PER_EPOCH = 6  # 162 training images in batches of 32
PER_EPOCH_SCALARS = [
    "loss/train",
    "loss/val",
    "accuracy/train",
    "accuracy/val",
    "accuracy/val_balanced",
    "lr",
    "grad_norm/layer0",
    "grad_norm/layer1",
    "weight_norm/layer0",
    "weight_norm/layer1",
]
HISTOGRAMS = ["weights/layer0", "weights/layer1", "gradients/layer0", "gradients/layer1", "activations/hidden0"]
HPARAM_METRICS = [
    "hparam/test_accuracy",
    "hparam/test_balanced_accuracy",
    "hparam/best_val_accuracy",
    "hparam/best_val_balanced_accuracy",
]


def tiny_config(runs_dir: Path, **overrides) -> TrainConfig:
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=60, synthetic_test_per_class=20, image_size=8, cache=False
    )
    values = dict(
        hidden=[16], epochs=EPOCHS, batch_size=32, lr=0.05, device="cpu", runs_dir=runs_dir, progress=False, data=data
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_events(run_dir: Path) -> EventAccumulator:
    kinds = ("compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")
    events = EventAccumulator(str(run_dir), size_guidance={kind: 0 for kind in kinds})
    events.Reload()
    return events


def steps(events: EventAccumulator, kind: str, tag: str) -> list[int]:
    return [e.step for e in getattr(events, kind)(tag)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 3-epoch run: (config, metrics, run directory, its events)."""
    config = tiny_config(tmp_path_factory.mktemp("tb") / "runs")
    metrics = train(config)
    run_dir = Path(metrics["run_dir"])
    return config, metrics, run_dir, read_events(run_dir)


def test_scalars_once_per_epoch(run):
    _, metrics, _, events = run
    tags = events.Tags()["scalars"]
    for tag in PER_EPOCH_SCALARS:
        assert tag in tags, tag
        assert steps(events, "Scalars", tag) == [1, 2, 3], tag
    logged = [e.value for e in events.Scalars("accuracy/val_balanced")]
    assert logged == pytest.approx([h["val_balanced_accuracy"] for h in metrics["history"]])
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx(
        [h["train_loss"] for h in metrics["history"]]
    )
    assert not any(tag.startswith("grad_check/") for tag in tags), "the gradient check is off by default"


def test_histograms_images_and_text(run):
    config, _, _, events = run
    tags = events.Tags()
    for tag in HISTOGRAMS:
        assert steps(events, "Histograms", tag) == [1, 2, 3], tag
    assert steps(events, "Images", "weights/templates") == [1, 2, 3]
    assert steps(events, "Images", "confusion/val") == [1, 2, 3]
    assert steps(events, "Images", "confusion/test") == [EPOCHS]
    assert "config/text_summary" in tags["tensors"]
    (text,) = events.Tensors("config/text_summary")
    body = text.tensor_proto.string_val[0].decode()
    assert body.startswith("```json\n") and body.endswith("\n```")
    assert json.loads(body[len("```json\n") : -len("\n```")]) == config.with_absolute_paths().to_dict()


def test_weight_templates_are_the_min_max_scaled_first_layer_rows(run):
    _, _, run_dir, events = run
    image = events.Images("weights/templates")[-1]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")).astype(np.int64)
    weight = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model_state"]["layers.0.weight"]  # 16, 3·8·8
    assert pixels.shape == (16, 64, 3), "16 templates of 8×8 pixels, 8 per row"
    for k, row in enumerate(weight):
        template = row.reshape(3, 8, 8).permute(1, 2, 0)  # H,W,3
        expected = ((template - template.min()) / (template.max() - template.min()) * 255).numpy()
        tile = pixels[8 * (k // 8) : 8 * (k // 8 + 1), 8 * (k % 8) : 8 * (k % 8 + 1)]
        assert tile.min() == 0 and tile.max() == 255, k
        assert np.abs(tile - expected).max() <= 1.0, k


def test_hparams_sit_in_the_runs_own_event_file(run):
    config, metrics, run_dir, events = run
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["checkpoints"], "no stray sub-run"
    event_files = list(run_dir.rglob("events.out.tfevents.*"))
    assert len(event_files) == 1 and event_files[0].parent == run_dir
    content = events.PluginTagToContent("hparams")
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["lr"].number_value == pytest.approx(config.lr)
    assert start.hparams["backend"].string_value == "custom"
    assert start.hparams["dataset"].string_value == "synthetic"
    assert start.hparams["hidden"].string_value == "16"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(m.name.tag for m in experiment.metric_infos) == sorted(HPARAM_METRICS)
    for tag in HPARAM_METRICS:
        (value,) = events.Scalars(tag)
        assert value.value == pytest.approx(metrics[tag.split("/", 1)[1]]), tag


@pytest.mark.parametrize("backend", ["custom", "manual", "builtin"])
def test_gradient_check_is_logged_and_small(tmp_path, backend):
    config = tiny_config(tmp_path, epochs=2, check_grads_every=4, histogram_every=0, backend=backend)
    events = read_events(Path(train(config)["run_dir"]))
    expected = list(range(0, 2 * STEPS_PER_EPOCH, 4))  # global steps 0, 4, 8
    for tag in ("grad_check/max_rel_error", "grad_check/max_abs_error", "grad_check/scaled_error"):
        assert steps(events, "Scalars", tag) == expected, tag
    assert all(0 <= e.value < 1 for e in events.Scalars("grad_check/max_rel_error"))
    assert all(e.value <= TOL_BACKENDS_FLOAT32 for e in events.Scalars("grad_check/scaled_error"))
    assert all(e.value < 1e-6 for e in events.Scalars("grad_check/max_abs_error"))
    assert not events.Tags()["histograms"] and "weights/templates" not in events.Tags()["images"]


def test_gradient_check_catches_a_wrong_gradient(tmp_path, monkeypatch):
    backend_gradients = callbacks_module.backend_gradients

    def one_percent_off(model, x, y, backend, class_weight=None):
        loss, grads = backend_gradients(model, x, y, backend, class_weight)
        return loss, grads if backend == "builtin" else {k: 1.01 * g for k, g in grads.items()}

    monkeypatch.setattr(callbacks_module, "backend_gradients", one_percent_off)
    config = tiny_config(tmp_path, epochs=1, check_grads_every=2, histogram_every=0)
    events = read_events(Path(train(config)["run_dir"]))
    # elementwise max_rel is at least 0.01 / 2.01, more where float32 noise already dominates an entry
    assert all(e.value > 0.0049 for e in events.Scalars("grad_check/max_rel_error"))
    assert all(e.value == pytest.approx(0.01, rel=1e-3) for e in events.Scalars("grad_check/scaled_error"))


def test_resumed_run_continues_the_same_curves(tmp_path):
    config = tiny_config(tmp_path, epochs=4, check_grads_every=3)
    run_dir = Path(train(config, stop_after_epochs=2)["run_dir"])
    metrics = train(load_run_config(run_dir), resume=run_dir)
    assert metrics["status"] == "completed"
    events = read_events(run_dir)
    for tag in PER_EPOCH_SCALARS:
        assert steps(events, "Scalars", tag) == [1, 2, 3, 4], tag
    for tag in HISTOGRAMS:
        assert steps(events, "Histograms", tag) == [1, 2, 3, 4], tag
    assert steps(events, "Scalars", "grad_check/max_rel_error") == list(range(0, 4 * STEPS_PER_EPOCH, 3))
    assert len(events.Tensors("config/text_summary")) == 1
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["checkpoints"]
    assert all(p.parent == run_dir for p in run_dir.rglob("events.out.tfevents.*"))
    assert [e.value for e in events.Scalars("loss/train")] == pytest.approx(
        [h["train_loss"] for h in metrics["history"]]
    )
