"""What a run shows in TensorBoard, read through a real ``tensorboard`` server's HTTP API.

Two tiny runs (an MLP with two hidden layers and gradient checks, and a softmax classifier) in one
folder, one server for the module (127.0.0.1, a free port), and every view read back as the
browser reads it: the scalars, the custom-scalars layout, the images and the HPARAMS tab.
Resumes and the console lines need no server: they read the event files directly.
"""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import mlp_torch.training.callbacks as callbacks_module
from mlp_torch.compare import layer_error_tolerance
from mlp_torch.data import DataOptions
from mlp_torch.training import Callback, TrainConfig, load_checkpoint, load_run_config, train
from mlp_torch.training.callbacks import initial_first_layer
from mlp_torch.training.hparams import DATA_HPARAMS, NOT_HPARAMS, TRAIN_HPARAMS, config_fields
from mlp_torch.training.run_figures import templates_image
from mlp_torch.training.tensorboard import HPARAM_METRICS, RunLogger

EPOCHS = 2
STEPS_PER_EPOCH = 21  # 162 training images in batches of 8
LOG_EVERY = 2
CHECK_EVERY = 5
LAYERS = 3  # 192 inputs -> 16 -> 8 -> 3
BOOKKEEPING = {"device", "runs_dir", "name", "progress", "check_grads_every", "histogram_every", "log_every"}
BOOKKEEPING |= {"data_root", "cache_dir", "cache", "cifar10_url", "cifar100_url", "download_timeout"}


def tiny_config(runs_dir: Path, **overrides: Any) -> TrainConfig:
    data = DataOptions(
        dataset="synthetic", synthetic_train_per_class=60, synthetic_test_per_class=20, image_size=8, cache=False
    )
    values: dict[str, Any] = dict(
        hidden=[16, 8], epochs=EPOCHS, batch_size=8, lr=0.05, device="cpu", runs_dir=runs_dir, progress=False
    )
    values.update(data=data, log_every=LOG_EVERY, histogram_every=1)  # figures every epoch: each is checked
    values.update(overrides)
    return TrainConfig(**values)


# ---------------------------------------------------------------- the runs and the server


class StepRecorder(Callback):
    """What every step measured: ``(epoch, step in the epoch, global step, StepStats, lr)``."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int, Any, float]] = []

    def on_step_end(self, state) -> None:
        self.steps.append((state.epoch, state.progress.step, state.global_step, state.step_stats, state.lr))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs in one folder: ``{"mlp": (config, metrics), "softmax": (config, metrics)}``, and the
    MLP's steps as a :class:`StepRecorder` saw them."""
    folder = tmp_path_factory.mktemp("tb") / "runs"
    mlp = tiny_config(folder, check_grads_every=CHECK_EVERY)
    softmax = tiny_config(folder, model="softmax", hidden=[], epochs=1, lr=0.001)
    recorder = StepRecorder()
    done = {"mlp": (mlp, train(mlp, callbacks=[recorder])), "softmax": (softmax, train(softmax))}
    return done, recorder.steps


@pytest.fixture(scope="module")
def steps(runs):
    return runs[1]


class TensorBoard:
    """A ``tensorboard`` server on a folder of runs, read as the browser reads it."""

    def __init__(self, logdir: Path, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        self.log = log.open("wb")
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
        command += ["--port", str(port), "--load_fast", "false", "--reload_interval", "0"]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **query: str) -> bytes:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with self.opener.open(url, timeout=30) as response:
            return response.read()

    def json(self, path: str, **query: str) -> Any:
        return json.loads(self.get(path, **query))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with self.opener.open(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for(self, runs: set[str], deadline_s: float = 90) -> None:
        """Until the server answers and has loaded every run's scalars."""
        deadline = time.monotonic() + deadline_s
        while True:
            assert self.process.poll() is None, "tensorboard exited; see its log"
            try:
                if set(self.json("/data/plugin/scalars/tags")) >= runs:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"tensorboard did not load {sorted(runs)} in {deadline_s} s"
            time.sleep(0.25)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    # the views

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        return [(step, value) for _, step, value in self.json("/data/plugin/scalars/scalars", run=run, tag=tag)]

    def images(self, run: str, tag: str) -> list[tuple[int, np.ndarray]]:
        """Every image of the tag, by step, as an (H, W, 3) array."""
        shown = []
        for entry in self.json("/data/plugin/images/images", run=run, tag=tag):
            png = self.get("/data/plugin/images/individualImage?" + entry["query"])
            shown.append((entry["step"], np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))))
        return shown


@pytest.fixture(scope="module")
def board(runs, tmp_path_factory):
    config, _ = runs[0]["mlp"]
    server = TensorBoard(config.runs_dir, tmp_path_factory.mktemp("tb-server") / "tensorboard.log")
    try:
        server.wait_for({run_name(metrics) for _, metrics in runs[0].values()})
        yield server
    finally:
        server.close()


def run_name(metrics: dict[str, Any]) -> str:
    return Path(metrics["run_dir"]).name


def read_events(run_dir: Path) -> EventAccumulator:
    kinds = ("compressedHistograms", "images", "audio", "scalars", "histograms", "tensors")
    events = EventAccumulator(str(run_dir), size_guidance={kind: 0 for kind in kinds})
    events.Reload()
    return events


# ---------------------------------------------------------------- curves


def windows(steps: list[tuple[int, int, int, Any, float]]) -> list[list[tuple[int, int, int, Any, float]]]:
    """The steps each point of the training curves averages: LOG_EVERY at a time, and the rest of each epoch."""
    out: list[list[Any]] = [[]]
    for record in steps:
        out[-1].append(record)
        if record[1] % LOG_EVERY == 0 or record[1] == STEPS_PER_EPOCH:
            out.append([])
    return out[:-1]


def test_training_curves_have_a_point_every_log_every_steps(runs, steps, board):
    _, metrics = runs[0]["mlp"]
    run = run_name(metrics)
    loss = board.scalars(run, "loss/train")
    expected = windows(steps)
    assert [step for step, _ in loss] == [w[-1][2] for w in expected]
    for epoch in range(EPOCHS):
        assert len([w for w in expected if w[0][0] == epoch]) >= 10, epoch
    means = {
        "loss/train": [sum(s.loss * s.samples for *_, s, _ in w) / sum(s.samples for *_, s, _ in w) for w in expected],
        "accuracy/train": [sum(s.correct for *_, s, _ in w) / sum(s.samples for *_, s, _ in w) for w in expected],
        "lr": [w[-1][4] for w in expected],
    }
    for i in range(LAYERS):
        means[f"grad_norm/layer{i}"] = [sum(math.sqrt(s.grad_sq[i]) for *_, s, _ in w) / len(w) for w in expected]
    for tag, values in means.items():
        shown = board.scalars(run, tag)
        assert [s for s, _ in shown] == [s for s, _ in loss], tag
        assert [v for _, v in shown] == pytest.approx(values, rel=1e-6), tag  # TensorBoard keeps float32
    # the validation curves sit at the steps where the epochs end, on the same axis
    epoch_ends = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    val_loss = board.scalars(run, "loss/val")
    assert [s for s, _ in val_loss] == epoch_ends
    assert [v for _, v in val_loss] == pytest.approx([h["val_loss"] for h in metrics["history"]])
    assert board.scalars(run, "epoch") == [(s, float(e + 1)) for e, s in enumerate(epoch_ends)]


def test_default_log_every_gives_ten_points_per_epoch_of_the_default_run():
    config = TrainConfig()
    steps_per_epoch = math.ceil(9000 / config.batch_size)  # cat/dog: 9,000 training images after validation
    assert steps_per_epoch // config.log_every >= 10


def test_one_chart_holds_every_layers_gradient_norm(runs, board):
    _, metrics = runs[0]["mlp"]
    run = run_name(metrics)
    layout = board.json("/data/plugin/custom_scalars/layout")
    charts = {chart["title"]: chart for category in layout["category"] for chart in category["chart"]}
    (gradients,) = [c for c in charts.values() if any("grad_norm/layer" in t for t in c["multiline"]["tag"])]
    (regex,) = gradients["multiline"]["tag"]
    shown = board.json("/data/plugin/custom_scalars/scalars", run=run, tag=regex)
    assert shown["regex_valid"] and sorted(shown["tag_to_events"]) == [f"grad_norm/layer{i}" for i in range(LAYERS)]
    norms = {tag: [value for _, _, value in events] for tag, events in shown["tag_to_events"].items()}
    ratio = [v for _, v in board.scalars(run, "grad_norm/first_over_last")]
    assert ratio == pytest.approx([a / b for a, b in zip(norms["grad_norm/layer0"], norms["grad_norm/layer2"])])
    # and a log-scale figure of the same, one line per epoch so far
    figures = board.images(run, "gradients/norm_by_layer")
    assert [step for step, _ in figures] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    assert min(figures[-1][1].shape[:2]) >= 300
    assert [len(h["grad_norm"]) for h in metrics["history"]] == [LAYERS] * EPOCHS


# ---------------------------------------------------------------- images


def test_confusion_matrices_are_large_figures(runs, board):
    for config, metrics in runs[0].values():
        run = run_name(metrics)
        val = board.images(run, "confusion/val")
        assert [step for step, _ in val] == [STEPS_PER_EPOCH * (e + 1) for e in range(config.epochs)]
        (test,) = board.images(run, "confusion/test")
        for _, pixels in [*val, test]:
            assert min(pixels.shape[:2]) >= 300, pixels.shape
            assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, "text and shading, not a flat block"


def test_templates_show_the_learned_change_not_the_initialisation(runs, board):
    config, metrics = runs[0]["mlp"]
    run_dir = Path(metrics["run_dir"])
    images = board.images(run_dir.name, "templates")
    assert [step for step, _ in images] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    shown = images[-1][1]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    weight = ckpt["model_state"]["layers.0.weight"]
    from mlp_torch.models import build_model

    initial = build_model(**ckpt["model_config"]).layers[0].weight.detach()
    classes = metrics["classes"]
    learned = templates_image(weight, initial, config.data.image_size, classes).permute(1, 2, 0).numpy()
    assert np.array_equal(shown, learned)
    as_it_was = templates_image(initial, torch.zeros_like(initial), 8, classes).permute(1, 2, 0).numpy()
    as_it_is = templates_image(weight, torch.zeros_like(weight), 8, classes).permute(1, 2, 0).numpy()
    assert np.abs(shown.astype(int) - as_it_was).mean() > 20, "an image of W_init looks different"
    assert np.abs(shown.astype(int) - as_it_is).mean() > 20, "an image of W (≈ W_init) looks different too"


def test_a_linear_model_shows_one_labelled_tile_per_class(runs, board):
    config, metrics = runs[0]["softmax"]
    run_dir = Path(metrics["run_dir"])
    ((_, shown),) = board.images(run_dir.name, "templates")
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    from mlp_torch.models import build_model

    initial = build_model(**ckpt["model_config"]).layers[0].weight.detach()
    expected = templates_image(ckpt["model_state"]["layers.0.weight"], initial, 8, metrics["classes"])
    assert np.array_equal(shown, expected.permute(1, 2, 0).numpy())
    assert shown.shape[1] > 3 * shown.shape[0] / 2, "three tiles side by side, with their names above"


# ---------------------------------------------------------------- gradient check


def test_gradient_check_is_a_verdict_per_layer(runs, board):
    _, metrics = runs[0]["mlp"]
    run = run_name(metrics)
    tags = board.json("/data/plugin/scalars/tags")[run]
    tolerance = layer_error_tolerance(torch.float32)
    checks = list(range(0, EPOCHS * STEPS_PER_EPOCH, CHECK_EVERY))
    per_layer = []
    for tag in [*(f"grad_check/layer{i}" for i in range(LAYERS)), "grad_check/worst_layer"]:
        assert f"Passes below {tolerance:.0e}" in tags[tag]["description"], tag
        values = board.scalars(run, tag)
        assert [s for s, _ in values] == checks, tag
        assert all(0 <= v < 1e-5 for _, v in values), (tag, values)  # float32 rounding: ~1e-7
        per_layer.append([v for _, v in values])
    assert per_layer[-1] == [max(column) for column in zip(*per_layer[:-1])]
    assert not any(tag.startswith("grad_check/") and "rel" in tag for tag in tags), "no elementwise relative error"


@pytest.mark.parametrize("backend", ["manual", "builtin"])
def test_gradient_check_prints_a_line_per_check(tmp_path, capsys, backend):
    config = tiny_config(tmp_path, epochs=1, check_grads_every=10, histogram_every=0, log_every=0, backend=backend)
    train(config)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("grad check")]
    other = backend if backend != "builtin" else "custom"
    assert [line.split(":")[0] for line in lines] == ["grad check step 0", "grad check step 10", "grad check step 20"]
    for line in lines:
        assert f", {other} vs builtin)" in line and line.endswith("pass < 1e-04: ok"), line
        error = float(line.split("worst layer error ")[1].split(" ")[0])
        assert 0 <= error < 1e-5, line


def test_gradient_check_fails_a_wrong_gradient(tmp_path, monkeypatch, capsys):
    backend_gradients = callbacks_module.backend_gradients

    def one_percent_off(model, x, y, backend, class_weight=None):
        loss, grads = backend_gradients(model, x, y, backend, class_weight)
        return loss, grads if backend == "builtin" else {k: 1.01 * g for k, g in grads.items()}

    monkeypatch.setattr(callbacks_module, "backend_gradients", one_percent_off)
    config = tiny_config(tmp_path, epochs=1, check_grads_every=10, histogram_every=0)
    events = read_events(Path(train(config)["run_dir"]))
    for i in range(LAYERS):
        assert all(e.value == pytest.approx(0.01, rel=1e-3) for e in events.Scalars(f"grad_check/layer{i}"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("grad check")]
    assert len(lines) == 3 and all("worst layer error 1.0e-02" in line and "FAILED" in line for line in lines)


# ---------------------------------------------------------------- HPARAMS


def test_hparams_list_the_metrics_and_only_applicable_hyperparameters(runs, board):
    experiment = board.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAM_METRICS)
    types = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    assert types["nesterov"] == types["augment_flip"] == "DATA_TYPE_BOOL"
    assert types["lr"] == types["epochs"] == "DATA_TYPE_FLOAT64"
    assert types["hidden"] == types["model"] == types["classes"] == "DATA_TYPE_STRING"
    shown_first = [h["name"] for h in experiment["hparamInfos"][:5]]
    assert shown_first == ["activation", "backend", "hidden", "lr", "model"], (
        "the five columns shown until others are ticked"
    )
    assert not BOOKKEEPING & set(types)

    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    request = {"experimentName": "", "allowedStatuses": statuses, "colParams": [], "startIndex": 0, "sliceSize": 100}
    groups = {g["name"]: g for g in board.post("/data/plugin/hparams/session_groups", request)["sessionGroups"]}
    assert sorted(groups) == sorted(run_name(metrics) for _, metrics in runs[0].values())
    common = {"model", "output", "backend", "dtype", "epochs", "batch_size", "optimizer", "lr", "momentum", "nesterov"}
    common |= {"weight_decay", "label_smoothing", "mixup"}  # soft targets: for every softmax model
    common |= {"schedule", "warmup_epochs", "seed", "dataset", "classes", "val_fraction", "image_size", "balance"}
    common |= {"augment_flip", "augment_crop", "whiten", "synthetic_train_per_class", "synthetic_test_per_class"}
    for kind, (config, metrics) in runs[0].items():
        group = groups[run_name(metrics)]
        hparams = group["hparams"]
        assert set(hparams) == (common | {"hidden", "activation"} if kind == "mlp" else common), kind
        assert hparams["model"] == config.model and hparams["lr"] == pytest.approx(config.lr)
        assert hparams["nesterov"] is True and hparams["augment_flip"] is True, "booleans as booleans"
        assert hparams["classes"] == "class0,class1,class2"
        if kind == "mlp":
            assert hparams["hidden"] == "16-8" and hparams["activation"] == "sigmoid"
        (session,) = group["sessions"]
        assert session["status"] == "STATUS_SUCCESS"
        values = {m["name"]["tag"]: m["value"] for m in session["metricValues"]}
        assert set(values) == set(HPARAM_METRICS), kind
        for tag, value in values.items():
            assert value == pytest.approx(metrics[tag.split("/", 1)[1]]), (kind, tag)


def test_every_config_field_is_a_hyperparameter_or_bookkeeping():
    hyper = set(TRAIN_HPARAMS) | {f"data.{name}" for name in DATA_HPARAMS}
    assert not hyper & NOT_HPARAMS
    assert hyper | NOT_HPARAMS == config_fields(), "classify the new field in mlp_torch/training/hparams.py"


def test_run_names_tell_runs_apart(tmp_path):
    assert TrainConfig(hidden=[64, 64]).run_name == "mlp64x64-sigmoid-custom-lr0.05-seed0"
    assert TrainConfig(model="softmax", backend="manual", seed=3).run_name == "softmax-manual-lr0.001-seed3"
    assert TrainConfig(activation="relu", lr=0.01).run_name == "mlp512-relu-custom-lr0.01-seed0"
    assert TrainConfig(hidden=[]).run_name == "mlp0-custom-lr0.001-seed0"
    config = tiny_config(tmp_path, epochs=1, histogram_every=0)
    first, second = (Path(train(config)["run_dir"]).name for _ in range(2))
    assert first != second and first.startswith("mlp16x8-sigmoid-custom-lr0.05-seed0_")


# ---------------------------------------------------------------- resume


class KeepInitialWeight(Callback):
    def __init__(self) -> None:
        self.weight: torch.Tensor | None = None

    def on_train_start(self, state) -> None:
        self.weight = state.model.layers[0].weight.detach().clone()


def test_initial_weights_are_rebuilt_from_the_seed_bit_for_bit(tmp_path):
    kept = KeepInitialWeight()
    train(tiny_config(tmp_path, epochs=1, histogram_every=0, log_every=0), callbacks=[kept])
    config = tiny_config(tmp_path)
    from mlp_torch.models import build_model

    model = build_model("mlp", 192, 3, hidden=[16, 8], backend="custom", seed=config.seed)
    assert kept.weight is not None and torch.equal(initial_first_layer(model), kept.weight)


def test_a_resumed_run_continues_the_same_curves_and_templates(tmp_path):
    config = tiny_config(tmp_path / "whole", epochs=3, check_grads_every=CHECK_EVERY)
    whole = read_events(Path(train(config)["run_dir"]))
    config = tiny_config(tmp_path / "parts", epochs=3, check_grads_every=CHECK_EVERY)
    run_dir = Path(train(config, stop_after_epochs=1)["run_dir"])
    assert train(load_run_config(run_dir), resume=run_dir)["status"] == "completed"
    parts = read_events(run_dir)
    for tag in ("loss/val", "grad_norm/layer0", "grad_check/layer0", "epoch", "hparam/test_accuracy"):
        assert [(e.step, e.value) for e in parts.Scalars(tag)] == [(e.step, e.value) for e in whole.Scalars(tag)], tag
    # the window under way when the run stopped restarts: the points are the same steps, all but one the same means
    assert [e.step for e in parts.Scalars("loss/train")] == [e.step for e in whole.Scalars("loss/train")]
    for tag in ("templates", "confusion/val", "gradients/norm_by_layer"):
        assert [(e.step, e.encoded_image_string) for e in parts.Images(tag)] == [
            (e.step, e.encoded_image_string) for e in whole.Images(tag)
        ], tag
    hparams = parts.PluginTagToContent("hparams")
    assert set(hparams) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert len(parts.Tensors("config/text_summary")) == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.is_dir()) == ["checkpoints"], "no stray sub-run"


def test_a_resumed_runs_event_file_is_read_after_the_first(tmp_path):
    """TensorBoard reads event files in name order, and the name's clock is whole seconds."""
    last = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.~"
    last.touch()  # made this second, sorting after any counter
    log = RunLogger(tmp_path)
    log.close()
    (new,) = [p.name for p in tmp_path.glob("events.out.tfevents.*") if p != last]
    assert new > last.name
