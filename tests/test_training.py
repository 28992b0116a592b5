"""``train(config)`` and ``mlp-torch train``: run directories, metrics, checkpoints, exact resume, every model.

Everything runs on tiny synthetic data (8×8 images, 162 training images, 6 steps per epoch) so the
whole file stays fast on two shared CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from interrupts import SignalDuringStep, signal_during_step

from mlp_torch.cli import main
from mlp_torch.data import DataOptions, load_data
from mlp_torch.errors import UsageError
from mlp_torch.training import TrainConfig, evaluate, load_checkpoint, load_run_config, train
from mlp_torch.training.inference import load_model
from mlp_torch.training.trainer import make_run_dir

TEST_SIZE = 3 * 20  # 3 classes × synthetic_test_per_class
STEPS_PER_EPOCH = 6  # 3 × 54 training images (6 per class go to validation) in batches of 32
METRIC_KEYS = {
    "test_accuracy",
    "test_balanced_accuracy",
    "best_val_accuracy",
    "best_val_balanced_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "epochs",
    "train_seconds",
    "status",
    "history",
    "classes",
    "best_epoch",
    "run_dir",
    "test_loss",
}


def tiny_data(**overrides) -> DataOptions:
    return DataOptions(
        dataset="synthetic",
        synthetic_train_per_class=60,
        synthetic_test_per_class=20,
        image_size=8,
        cache=False,
        **overrides,
    )


def tiny_config(runs_dir: Path, data: DataOptions | None = None, **overrides) -> TrainConfig:
    values = dict(
        hidden=[16],
        epochs=3,
        batch_size=32,
        lr=0.05,
        device="cpu",
        runs_dir=runs_dir,
        progress=False,
        data=data or tiny_data(),
    )
    values.update(overrides)
    return TrainConfig(**values)


def only_run_dir(runs_dir: Path) -> Path:
    (run_dir,) = [p for p in runs_dir.iterdir() if p.is_dir()]
    return run_dir


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """One finished 3-epoch run through the API: (config, returned metrics, run directory)."""
    config = tiny_config(tmp_path_factory.mktemp("api") / "runs", name="api")
    metrics = train(config)
    return config, metrics, Path(metrics["run_dir"])


# ---------------------------------------------------------------- the API end to end


def test_api_run_writes_the_run_directory(api_run):
    config, metrics, run_dir = api_run
    assert run_dir.parent == config.runs_dir and run_dir.name.startswith("api_")
    assert (run_dir / "config.json").is_file() and (run_dir / "metrics.json").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"


def test_metrics_json_schema_and_values(api_run):
    config, metrics, run_dir = api_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics)), "train() returns what metrics.json holds"
    assert METRIC_KEYS <= set(saved)
    assert saved["status"] == "completed" and saved["epochs"] == config.epochs == len(saved["history"])
    assert saved["classes"] == ["class0", "class1", "class2"]
    assert list(saved["per_class_accuracy"]) == saved["classes"]
    for key in ("test_accuracy", "test_balanced_accuracy", "best_val_accuracy", "best_val_balanced_accuracy"):
        assert 0.0 <= saved[key] <= 1.0, key
    assert all(0.0 <= a <= 1.0 for a in saved["per_class_accuracy"].values())
    assert saved["train_seconds"] > 0 and math.isfinite(saved["test_loss"])

    cm = torch.tensor(saved["confusion_matrix"])
    assert cm.shape == (3, 3) and int(cm.sum()) == TEST_SIZE
    assert cm.sum(1).tolist() == [20, 20, 20], "rows are true classes"
    assert saved["test_accuracy"] == pytest.approx(float(cm.trace()) / TEST_SIZE)
    recalls = (cm.diag().double() / cm.sum(1).double()).tolist()
    assert list(saved["per_class_accuracy"].values()) == pytest.approx(recalls)
    assert saved["test_balanced_accuracy"] == pytest.approx(sum(recalls) / 3)

    history = saved["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    best = max(history, key=lambda h: h["val_balanced_accuracy"])  # max() keeps the first of ties
    assert saved["best_epoch"] == best["epoch"]
    assert saved["best_val_balanced_accuracy"] == best["val_balanced_accuracy"]
    assert saved["best_val_accuracy"] == best["val_accuracy"]


def test_test_split_is_scored_with_the_best_checkpoint(api_run):
    config, metrics, run_dir = api_run
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert best["epoch"] == metrics["best_epoch"] and last["epoch"] == config.epochs
    loaded = load_model(run_dir / "checkpoints" / "best.pt", torch.device("cpu"))
    test = load_data(config.data).test
    result = evaluate(loaded.model, test.x, test.y, loaded.standardizer)
    assert result.accuracy == metrics["test_accuracy"]
    assert result.balanced_accuracy == metrics["test_balanced_accuracy"]
    assert result.confusion_matrix == metrics["confusion_matrix"]


def test_config_json_records_everything_and_round_trips(api_run):
    config, _, run_dir = api_run
    saved = json.loads((run_dir / "config.json").read_text())
    assert {"config", "versions", "device", "data"} <= set(saved)
    assert saved["device"] == "cpu"
    assert saved["versions"]["torch"] == torch.__version__
    assert {"mlp_torch", "torchvision", "tensorboard", "python"} <= set(saved["versions"])
    assert saved["data"]["classes"] == ["class0", "class1", "class2"]
    rebuilt = TrainConfig.from_dict(saved["config"])
    assert rebuilt == config.with_absolute_paths()  # so that the run means the same from any folder
    assert rebuilt.data.data_root.is_absolute() and rebuilt.runs_dir.is_absolute()
    assert rebuilt.to_dict() == saved["config"]
    assert load_run_config(run_dir) == rebuilt


def test_from_dict_rejects_unknown_keys(api_run):
    _, _, run_dir = api_run
    values = json.loads((run_dir / "config.json").read_text())["config"]
    with pytest.raises(UsageError, match="learning_rate"):
        TrainConfig.from_dict({**values, "learning_rate": 0.1})
    with pytest.raises(UsageError, match="colour"):
        TrainConfig.from_dict({**values, "data": {**values["data"], "colour": True}})


def test_load_run_config_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="not a run directory"):
        load_run_config(tmp_path)


def test_checkpoints_load_with_weights_only(api_run):
    _, _, run_dir = api_run
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert ckpt["format"] == "mlp_torch.checkpoint"
        assert ckpt["classes"] == ["class0", "class1", "class2"] and ckpt["image_size"] == 8
        assert {"model_config", "model_state", "standardizer", "optimizer", "scheduler", "rng", "config"} <= set(ckpt)
        assert ckpt["model_config"]["hidden"] == [16]


def test_runs_with_the_same_name_never_share_a_directory(tmp_path):
    runs = tmp_path / "runs"
    made = [make_run_dir(runs, "same") for _ in range(3)]  # within one second: the same time stamp
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    config = tiny_config(runs, name="same", epochs=1, histogram_every=0)
    first, second = Path(train(config)["run_dir"]), Path(train(config)["run_dir"])
    assert first != second
    assert (first / "metrics.json").is_file() and (second / "metrics.json").is_file()
    assert len([p for p in runs.iterdir() if p.name.startswith("same_")]) == 5


# ---------------------------------------------------------------- every model and backend


MODELS = [
    dict(model="softmax"),
    dict(model="mlp", hidden=[16], activation="sigmoid"),
    dict(model="mlp", hidden=[12, 8], activation="relu"),
    dict(model="mlp", hidden=[12], activation="tanh"),
    dict(model="perceptron", lr=0.01),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: "-".join(str(v) for v in m.values()))
def test_every_backend_trains_through_the_loop_to_the_same_parameters(tmp_path, model):
    finals = {}
    for backend in ("builtin", "custom", "manual"):
        config = tiny_config(tmp_path / backend, epochs=2, backend=backend, check_grads_every=5, **model)
        metrics = train(config)
        assert metrics["status"] == "completed" and metrics["epochs"] == 2
        assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in metrics["history"])
        finals[backend] = load_checkpoint(Path(metrics["run_dir"]) / "checkpoints" / "last.pt")["model_state"]
    assert finals["builtin"].keys() == finals["custom"].keys() == finals["manual"].keys()
    for backend in ("custom", "manual"):
        for name, reference in finals["builtin"].items():
            # the same arithmetic in another order: 12 SGD steps apart only by float32 rounding
            torch.testing.assert_close(
                finals[backend][name], reference, rtol=1e-4, atol=1e-5, msg=lambda m, b=backend, n=name: f"{b} {n}: {m}"
            )


@pytest.mark.parametrize("balance", ["weights", "sample"])
def test_balance_and_augmentation_train(tmp_path, balance):
    data = tiny_data(balance=balance, augment_flip=True, augment_crop=2)
    metrics = train(tiny_config(tmp_path, data=data, epochs=2, histogram_every=0))
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    assert all(math.isfinite(h["train_loss"]) for h in metrics["history"])


def test_adam_and_step_schedule_train(tmp_path):
    metrics = train(
        tiny_config(
            tmp_path,
            epochs=2,
            optimizer="adam",
            lr=0.01,
            schedule="step",
            step_size=1,
            gamma=0.5,
            warmup_epochs=0,
            histogram_every=0,
        )
    )
    lrs = [h["lr"] for h in metrics["history"]]  # the rate each epoch's steps used (its last step's)
    assert lrs == pytest.approx([0.01, 0.005]), "step decay halves η after each epoch"


# ---------------------------------------------------------------- resume, bit for bit


def assert_same_final_state(a: Path, b: Path) -> None:
    """last.pt of two runs: every parameter, optimizer buffer, scheduler step and RNG state equal."""
    ca, cb = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (a, b))
    assert ca["epoch"] == cb["epoch"] and ca["global_step"] == cb["global_step"]
    assert ca["model_state"].keys() == cb["model_state"].keys()
    for name in ca["model_state"]:
        assert torch.equal(ca["model_state"][name], cb["model_state"][name]), name
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for index in sa:
        assert sa[index].keys() == sb[index].keys()
        for key in sa[index]:
            assert torch.equal(torch.as_tensor(sa[index][key]), torch.as_tensor(sb[index][key])), (index, key)
    assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
    assert ca["scheduler"]["last_epoch"] == cb["scheduler"]["last_epoch"]
    assert torch.equal(ca["rng"]["data"], cb["rng"]["data"])
    drop = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert drop(ca["history"]) == drop(cb["history"])
    assert ca["best"] == cb["best"]


@pytest.mark.parametrize(
    "data",
    [tiny_data(), tiny_data(balance="sample", augment_flip=True, augment_crop=2)],
    ids=["plain", "sample-augment"],
)
def test_resume_at_an_epoch_boundary_is_bitwise_exact(tmp_path, data):
    config = tiny_config(tmp_path / "whole", data=data, epochs=4, histogram_every=0)
    whole = Path(train(config)["run_dir"])

    config = dataclasses.replace(config, runs_dir=tmp_path / "split")
    half = train(config, stop_after_epochs=2)
    run_dir = Path(half["run_dir"])
    assert half["status"] == "interrupted" and half["epochs"] == 2
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    metrics = train(load_run_config(run_dir), resume=run_dir)
    assert metrics["status"] == "completed" and metrics["epochs"] == 4 and Path(metrics["run_dir"]) == run_dir
    assert len(list((tmp_path / "split").iterdir())) == 1, "resuming creates no new run directory"
    assert_same_final_state(whole, run_dir)
    reference = json.loads((whole / "metrics.json").read_text())
    for key in ("test_accuracy", "test_balanced_accuracy", "confusion_matrix", "best_epoch", "best_val_accuracy"):
        assert metrics[key] == reference[key], key


def test_resume_in_the_middle_of_an_epoch_is_bitwise_exact(tmp_path):
    config = tiny_config(tmp_path / "whole", epochs=3, data=tiny_data(augment_flip=True), histogram_every=0)
    whole = Path(train(config)["run_dir"])

    third_step_of_epoch_2 = SignalDuringStep(STEPS_PER_EPOCH + 2)
    stopped = train(dataclasses.replace(config, runs_dir=tmp_path / "split"), callbacks=[third_step_of_epoch_2])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is put back"
    run_dir = Path(stopped["run_dir"])
    assert stopped["status"] == "interrupted" and stopped["epochs"] == 1
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["global_step"] == STEPS_PER_EPOCH + 3 and ckpt["epoch_progress"]["step"] == 3

    metrics = train(load_run_config(run_dir), resume=run_dir)
    assert metrics["status"] == "completed" and metrics["epochs"] == 3
    assert_same_final_state(whole, run_dir)


def test_cli_interrupt_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    args = cli_args(runs, "--histogram-every", "0", "--name", "cli-resume")
    with monkeypatch.context() as patch:
        signal_during_step(patch, 13)  # 2,700 training images in batches of 256: 11 steps per epoch
        assert main(args) == 130
    out = capsys.readouterr().out
    run_dir = only_run_dir(runs)
    assert f"mlp-torch train --resume {run_dir}" in out

    assert main(["train", "--resume", str(run_dir), "--lr", "9"]) == 0
    captured = capsys.readouterr()
    assert "ignoring --lr" in captured.err and "test split, best checkpoint" in captured.out
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert len(list(runs.iterdir())) == 1

    reference = train(dataclasses.replace(load_run_config(run_dir), runs_dir=tmp_path / "reference"))
    assert_same_final_state(Path(reference["run_dir"]), run_dir)


# ---------------------------------------------------------------- the command line


def cli_args(runs: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--dataset",
        "synthetic",
        "--image-size",
        "8",
        "--no-cache",
        "--hidden",
        "8",
        "--epochs",
        "2",
        "--batch-size",
        "256",
        "--device",
        "cpu",
        "--no-progress",
        "--runs-dir",
        str(runs),
        *extra,
    ]


def test_cli_train_prints_epochs_table_and_tensorboard_command(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(cli_args(runs, "--name", "twice", "--model", "softmax", "--backend", "manual")) == 0
    out = capsys.readouterr().out
    run_dir = only_run_dir(runs)
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert "true \\ predicted" in out and "balanced accuracy" in out
    assert f"tensorboard --logdir {runs}" in out and str(run_dir) in out
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["model"] == "softmax" and saved["backend"] == "manual" and saved["epochs"] == 2
    assert saved["data"]["dataset"] == "synthetic" and saved["data"]["image_size"] == 8
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and sum(map(sum, metrics["confusion_matrix"])) == 600

    assert main(cli_args(runs, "--name", "twice", "--model", "softmax", "--epochs", "1")) == 0
    dirs = sorted(p for p in runs.iterdir())
    assert len(dirs) == 2 and all(p.name.startswith("twice_") for p in dirs)
    assert json.loads((run_dir / "config.json").read_text())["config"]["epochs"] == 2, "first run untouched"


def test_cli_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert main(cli_args(tmp_path, "--lr", "-1")) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and err.count("\n") == 1
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "a refused run leaves nothing behind"


def test_help_shows_every_default(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # one line per flag, so a default sits beside its flag
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    entries: dict[str, str] = {}  # first flag -> its whole help entry, wrapped lines joined
    flag = ""
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = ""
    d = TrainConfig()
    expected = {
        "--model": d.model,
        "--hidden": d.hidden,
        "--activation": d.activation,
        "--output": d.output,
        "--backend": d.backend,
        "--epochs": d.epochs,
        "--batch-size": d.batch_size,
        "--optimizer": d.optimizer,
        "--lr": "mlp 0.05, linear models 0.001 on 32x32 images, 0.05 on 2-D points",
        "--momentum": d.momentum,
        "--nesterov": d.nesterov,
        "--weight-decay": d.weight_decay,
        "--schedule": d.schedule,
        "--warmup-epochs": d.warmup_epochs,
        "--step-size": d.step_size,
        "--gamma": d.gamma,
        "--seed": d.seed,
        "--device": d.device,
        "--runs-dir": d.runs_dir,
        "--name": "e.g. mlp512-sigmoid-custom-lr0.05-seed0",
        "--check-grads-every": d.check_grads_every,
        "--histogram-every": d.histogram_every,
        "--boundary-every": "a tenth of --epochs, so ten frames; 0 = only at the end",
        "--log-every": d.log_every,
        "--progress": "only when stderr is a terminal",
        "--dataset": "cifar",
        "--balance": "none",
    }
    for flag, default in expected.items():
        assert f"(default: {default})" in entries[flag], entries[flag]
    for flag, entry in entries.items():
        assert entry.count("(default:") <= 1, f"{flag} states its default twice: {entry}"
    assert d.backend == "custom" and d.model == "mlp" and d.activation == "sigmoid", "the lecture's defaults"
    assert "--resume" in entries


def test_console_script_trains_in_a_subprocess(tmp_path):
    exe = Path(sys.executable).with_name("mlp-torch")
    assert exe.is_file(), "the package is installed with its console entry point"
    runs = tmp_path / "runs"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [str(exe), *cli_args(runs, "--epochs", "1", "--histogram-every", "0")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    run_dir = only_run_dir(runs)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 1
    assert "tensorboard --logdir" in done.stdout
    # (matplotlib, which draws the run's figures, keeps its font cache in $XDG_CACHE_HOME/matplotlib)
    assert not (tmp_path / "cache" / "mlp_torch").exists(), "--no-cache writes nothing"


def test_trains_on_each_device(tmp_path, device):
    config = tiny_config(tmp_path, epochs=2, device=device.type, check_grads_every=5)
    metrics = train(config)
    run_dir = Path(metrics["run_dir"])
    assert (
        metrics["status"] == "completed" and json.loads((run_dir / "config.json").read_text())["device"] == device.type
    )
    resumed_from = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location="cpu")
    assert all(t.device.type == "cpu" for t in resumed_from["model_state"].values()), "checkpoints load anywhere"
    loaded = load_model(run_dir, device)
    assert next(loaded.model.parameters()).device.type == device.type


def test_default_learning_rate_depends_on_the_model_and_its_inputs():
    """A linear model on 3072 inputs diverges at the MLP's rate; an explicit --lr always wins.

    A linear model's default keeps η·D at 0.001·3072 for D inputs, up to the MLP's rate.
    """
    assert TrainConfig().lr == 0.05
    assert TrainConfig(model="softmax").lr == 0.001
    assert TrainConfig(model="perceptron").lr == 0.001
    assert TrainConfig(model="mlp", hidden=[]).lr == 0.001
    assert TrainConfig(model="softmax", lr=0.3).lr == 0.3
    saved = TrainConfig(model="softmax").to_dict()
    assert saved["lr"] == 0.001 and TrainConfig.from_dict(saved).lr == 0.001
    assert TrainConfig(model="softmax", data=DataOptions(dataset="synthetic", image_size=16)).lr == 0.004
    assert TrainConfig(model="softmax", data=DataOptions(dataset="synthetic", image_size=4)).lr == 0.05  # capped
    for kind in ("softmax", "perceptron"):
        assert TrainConfig(model=kind, data=DataOptions(dataset="spiral")).lr == 0.05
    assert TrainConfig(hidden=[8], data=DataOptions(dataset="xor")).lr == 0.05


# ---------------------------------------------------------------- without a validation split (item 4)


def test_without_a_validation_split_the_last_epoch_is_kept_and_eval_of_val_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(cli_args(runs, "--val-fraction", "0", "--histogram-every", "1")) == 0
    captured = capsys.readouterr()
    assert "no validation split (--val-fraction 0 holds out no image): the last epoch's model is kept" in captured.err
    assert "no val split" in captured.out and "last checkpoint (epoch 2; no validation split" in captured.out
    run_dir = only_run_dir(runs)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["selected_by"] == "last_epoch"
    assert metrics["best_epoch"] == 2 and metrics["best_val_accuracy"] is None
    assert all(h["val_loss"] is None and h["val_accuracy"] is None for h in metrics["history"])
    best, last = (load_checkpoint(run_dir / "checkpoints" / n) for n in ("best.pt", "last.pt"))
    assert best["epoch"] == last["epoch"] == 2
    for name in best["model_state"]:
        assert torch.equal(best["model_state"][name], last["model_state"][name])

    assert main(["eval", str(run_dir), "--split", "val", "--device", "cpu"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mlp-torch eval: error: the val split of ") and "--val-fraction 0" in line
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0


def test_a_class_too_small_for_validation_trains_and_says_so(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "photos"
    for split, counts in (("train", {"big": 20, "small": 4}), ("test", {"big": 2, "small": 2})):
        for name, n in counts.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (10 * i, 200 if name == "big" else 0, 0)).save(
                    root / split / name / f"{i}.png"
                )
    data = DataOptions(dataset="folder", data_root=root, image_size=8, cache=False)
    metrics = train(tiny_config(tmp_path / "runs", data=data, epochs=1, histogram_every=0))
    assert metrics["status"] == "completed" and metrics["selected_by"] == "val_balanced_accuracy"
    assert "class(es) small have no validation images" in capsys.readouterr().err
    assert 0 <= metrics["best_val_balanced_accuracy"] <= 1


# ---------------------------------------------------------------- devices and paths (items 5, 11)


def test_cpu_with_an_index_trains_and_reads_its_own_checkpoints(tmp_path, capsys):
    from mlp_torch.utils import select_device

    assert select_device("cpu:1") == torch.device("cpu")  # PyTorch has one CPU device
    runs = tmp_path / "runs"
    assert main([*cli_args(runs, "--epochs", "1"), "--device", "cpu:1"]) == 0
    run_dir = only_run_dir(runs)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--device", "cpu:1"]) == 0
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--device", "cpu:1"]) == 0


def test_a_run_made_with_relative_paths_is_evaluated_from_another_folder(tmp_path, monkeypatch):
    from PIL import Image

    work = tmp_path / "project"
    for split in ("train", "test"):
        for name in ("a", "b"):
            (work / "data" / split / name).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (40 * i, 0, 255 if name == "b" else 0)).save(
                    work / "data" / split / name / f"{i}.png"
                )
    monkeypatch.chdir(work)
    args = ["train", "--dataset", "folder", "--data-root", "data", "--runs-dir", "runs", "--no-cache"]
    assert main([*args, "--image-size", "8", "--hidden", "4", "--epochs", "1", "--device", "cpu", "--no-progress"]) == 0
    run_dir = only_run_dir(work / "runs")
    saved = json.loads((run_dir / "config.json").read_text())["config"]
    assert saved["runs_dir"] == str(work / "runs") and saved["data"]["data_root"] == str(work / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0


def test_float64_trains_saves_evaluates_and_predicts_in_float64(tmp_path):
    metrics = train(tiny_config(tmp_path, epochs=1, dtype="float64", histogram_every=0, check_grads_every=2))
    run_dir = Path(metrics["run_dir"])
    saved = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert all(t.dtype == torch.float64 for t in saved.values())  # float32 inputs would not even multiply
    loaded = load_model(run_dir, torch.device("cpu"))
    assert next(loaded.model.parameters()).dtype == torch.float64
    test = load_data(tiny_data(seed=0)).test
    result = evaluate(loaded.model, test.x, test.y, loaded.standardizer)
    assert result.accuracy == metrics["test_accuracy"] and result.loss == metrics["test_loss"]
