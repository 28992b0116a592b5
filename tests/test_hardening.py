"""Divergence stops training cleanly; checkpoints are atomic, weights-only, and refuse bad files clearly."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.errors import CheckpointError, DivergenceError
from mlp_torch.models.base import Classifier
from mlp_torch.training import TrainConfig, train
from mlp_torch.training import checkpoint as checkpoint_module
from mlp_torch.training.checkpoint import load_checkpoint, save_checkpoint

TINY_DATA = dict(
    dataset="synthetic", synthetic_train_per_class=60, synthetic_test_per_class=20, image_size=8, cache=False
)


def tiny_config(runs_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        hidden=[16],
        epochs=2,
        batch_size=32,
        progress=False,
        device="cpu",
        histogram_every=0,
        runs_dir=runs_dir,
        data=DataOptions(**TINY_DATA),
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A finished tiny run: its directory, with checkpoints/{best,last}.pt."""
    runs = tmp_path_factory.mktemp("runs")
    return Path(train(tiny_config(runs, epochs=1))["run_dir"])


# ----------------------------------------------------------------------------------------- divergence


def test_huge_learning_rate_stops_with_one_line_naming_the_non_finite_value(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlp_torch",
            "train",
            "--dataset",
            "synthetic",
            "--lr",
            "1e12",
            "--epochs",
            "3",
            "--image-size",
            "8",
            "--hidden",
            "16",
            "--no-progress",
            "--no-cache",
            "--device",
            "cpu",
            "--runs-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("mlp-torch train: error: training diverged at epoch ")
    assert ", step " in line and ("nan" in line or "inf" in line)
    assert "Lower the learning rate" in line
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["error"] in line


def test_a_non_finite_gradient_keeps_the_last_good_checkpoint_and_writes_metrics(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=3)
    run_dir = Path(train(config, stop_after_epochs=1)["run_dir"])
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()

    original = Classifier.compute_gradients

    def poisoned(self, *args, **kwargs):  # a finite loss, but one gradient entry overflows
        result = original(self, *args, **kwargs)
        self.layers[1].weight.grad[0, 0] = float("inf")
        return result

    monkeypatch.setattr(Classifier, "compute_gradients", poisoned)
    with pytest.raises(DivergenceError) as info:
        train(config, resume=run_dir)
    message = str(info.value)
    assert "epoch 2, step 1" in message
    assert "gradient of layer1 has norm inf" in message and "the loss" not in message
    assert "Lower the learning rate" in message and "is unchanged" in message
    assert last.read_bytes() == before  # the optimizer never stepped, nothing was saved
    load_checkpoint(last)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and [h["epoch"] for h in metrics["history"]] == [1]


# ------------------------------------------------------------------------------------- atomic saves


def fault(exc: BaseException):
    def raise_it(*args, **kwargs):
        raise exc

    return raise_it


def half_written_then_crash(data, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half of a checkpoint")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    "target, replacement",
    [
        (torch, ("save", half_written_then_crash)),
        (os, ("fsync", fault(OSError(5, "Input/output error")))),
        (os, ("replace", fault(OSError(18, "Invalid cross-device link")))),
        (torch, ("save", fault(KeyboardInterrupt()))),  # a second Ctrl-C mid-save
    ],
    ids=["torch.save", "fsync", "rename", "ctrl-c"],
)
def test_a_failed_save_leaves_the_previous_checkpoint_intact_and_no_temp_file(
    tmp_path, monkeypatch, target, replacement
):
    path = tmp_path / "last.pt"
    payload = {
        "model_config": {"kind": "mlp"},
        "model_state": {"w": torch.arange(6.0)},
        "classes": ["a", "b"],
        "image_size": 8,
        "standardizer": {},
    }
    save_checkpoint(path, payload)
    before = path.read_bytes()
    name, fake = replacement
    monkeypatch.setattr(target, name, fake)
    with pytest.raises((OSError, KeyboardInterrupt)):
        save_checkpoint(path, {**payload, "model_state": {"w": torch.zeros(6)}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.arange(6.0))


def test_save_refuses_a_payload_that_weights_only_could_not_load(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['runs_dir'\] is a PosixPath"):
        save_checkpoint(tmp_path / "x.pt", {"config": {"runs_dir": Path("runs")}})
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------ what a checkpoint is


def assert_plain(value, where="checkpoint"):
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            assert isinstance(key, (str, int)), where
            assert_plain(item, f"{where}[{key!r}]")
        return
    assert isinstance(value, (list, tuple)), f"{where} is a {type(value).__name__}"
    for i, item in enumerate(value):
        assert_plain(item, f"{where}[{i}]")


@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_training_checkpoints_hold_only_tensors_and_plain_types(good_run, name):
    data = torch.load(good_run / "checkpoints" / name, weights_only=True)
    assert data["format"] == checkpoint_module.FORMAT and data["version"] == checkpoint_module.VERSION
    assert_plain(data)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_files(tmp_path: Path, good_run: Path) -> dict[str, tuple[Path, str]]:
    """Each bad file and a phrase its error must contain."""
    good = (good_run / "checkpoints" / "last.pt").read_bytes()
    files = {
        "empty": (b"", "the file is empty"),
        "truncated": (good[: len(good) // 2], "truncated or damaged"),
        "text": (b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
        "random": (bytes(range(256)) * 4, "not a PyTorch checkpoint"),
    }
    out = {}
    for name, (content, phrase) in files.items():
        (tmp_path / f"{name}.pt").write_bytes(content)
        out[name] = (tmp_path / f"{name}.pt", phrase)
    torch.save({"weight": torch.ones(2)}, tmp_path / "foreign.pt")
    out["foreign"] = (tmp_path / "foreign.pt", "no 'mlp_torch.checkpoint' marker")
    newer = torch.load(good_run / "checkpoints" / "last.pt", weights_only=True)
    newer["version"] = checkpoint_module.VERSION + 1
    torch.save(newer, tmp_path / "newer.pt")
    out["newer"] = (tmp_path / "newer.pt", "newer than this mlp_torch reads")
    torch.save({"format": checkpoint_module.FORMAT, "payload": RunsCode(tmp_path / "code-ran")}, tmp_path / "code.pt")
    out["code"] = (tmp_path / "code.pt", "refused without running anything")
    with open(tmp_path / "pickle.pt", "wb") as f:
        pickle.dump({"format": checkpoint_module.FORMAT}, f, protocol=4)
    out["pickle"] = (tmp_path / "pickle.pt", "not a PyTorch checkpoint")
    return out


def test_bad_files_give_a_clear_checkpoint_error_and_never_run_code(tmp_path, good_run):
    for name, (path, phrase) in bad_files(tmp_path, good_run).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert phrase in str(info.value), (name, str(info.value))
        assert "weights_only=False" not in str(info.value), name  # never advise the unsafe load
    assert not (tmp_path / "code-ran").exists()


@pytest.mark.parametrize("name", ["empty", "truncated", "text", "foreign", "newer", "code"])
def test_eval_and_predict_of_a_bad_file_fail_with_one_line_and_exit_2(tmp_path, good_run, capsys, name):
    path, phrase = bad_files(tmp_path, good_run)[name]
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    for argv in (["eval", str(path), "--device", "cpu"], ["predict", str(path), str(image), "--device", "cpu"]):
        capsys.readouterr()
        assert main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"mlp-torch {argv[0]}: error: ") and phrase in lines[0]
        assert captured.out == ""
    assert not (tmp_path / "code-ran").exists()


def test_eval_of_a_file_that_is_not_a_checkpoint_fails_cleanly_as_a_process(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mlp_torch", "eval", str(text), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        f"mlp-torch eval: error: {text} is not a readable mlp_torch checkpoint: it is not a PyTorch checkpoint file ("
    )  # then the exception torch raised


# ------------------------------------------------------------- full disk, file-size limits (item 8)


def file_size_limit(limit: int):
    """A ``preexec_fn``: every file the child writes may grow to ``limit`` bytes, then write() fails with EFBIG."""

    def apply() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the default action kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_a_checkpoint_that_does_not_fit_is_one_line_exit_1_and_earlier_checkpoints_stay(tmp_path):
    # an MLP 192-256-3 and its momentum: checkpoints of about 400 KB; config.json and metrics.json: 3 KB
    run_dir = Path(train(tiny_config(tmp_path, hidden=[256]), stop_after_epochs=1)["run_dir"])
    saved = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    assert min(map(len, saved.values())) > 300_000
    proc = subprocess.run(
        [sys.executable, "-m", "mlp_torch", "train", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(100_000),
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # no traceback, no thread report
    assert re.fullmatch(
        rf"mlp-torch train: error: cannot write {re.escape(str(run_dir))}/checkpoints/(best|last)\.pt: "
        r"File too large; the checkpoints saved before are intact",
        line,
    ), line
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == saved
    assert not list(run_dir.rglob("*.tmp"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == line.removeprefix("mlp-torch train: error: ")
    load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_a_failing_tensorboard_write_is_one_line_exit_1_with_metrics_failed(tmp_path, monkeypatch, capsys):
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SummaryWriter, "add_histogram", full)
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "synthetic", "--image-size", "8", "--hidden", "8", "--epochs", "2"]
    assert main([*argv, "--no-cache", "--device", "cpu", "--no-progress", "--runs-dir", str(runs)]) == 1
    (run_dir,) = runs.iterdir()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"mlp-torch train: error: cannot write the TensorBoard log in {run_dir}: No space left on device"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "TensorBoard" in metrics["error"]


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE")
def test_tensorboards_writer_thread_failing_is_reported_once_without_its_traceback(tmp_path):
    script = (
        "import sys\n"
        "from mlp_torch.errors import WriteError\n"
        "from mlp_torch.training.tensorboard import RunLogger\n"
        "log = RunLogger(sys.argv[1])\n"
        "try:\n"
        "    for i in range(5000):\n"
        "        log.scalars({'loss/train': float(i)}, i)\n"
        "    log.close()\n"
        "except WriteError as err:\n"
        "    print(err)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(20_000),
    )
    assert proc.returncode == 0
    assert proc.stdout == f"cannot write the TensorBoard log in {tmp_path}: File too large\n"
    assert proc.stderr == "", "the writer thread's own traceback is not printed"


# -------------------------------------------------------------------------- an lr beyond float32 (item 12)


def test_adam_with_an_lr_beyond_float32_stops_with_the_divergence_message(tmp_path, capsys):
    argv = ["train", "--dataset", "synthetic", "--image-size", "8", "--hidden", "8", "--no-cache", "--device", "cpu"]
    assert main([*argv, "--no-progress", "--optimizer", "adam", "--lr", "1e39", "--runs-dir", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mlp-torch train: error: training diverged at epoch 1, step 1 (global step 1): ")
    assert "the update overflows float32" in line and "Lower the learning rate" in line
    (run_dir,) = tmp_path.iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


# --------------------------------------------------------------------------- pipes and logs (item 9)

SMALL_TRAIN = (
    "--dataset synthetic --image-size 8 --hidden 8 --batch-size 512 --no-cache --device cpu --histogram-every 0"
)


def test_train_piped_into_head_trains_to_the_end_and_writes_every_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    command = f"{shlex.quote(sys.executable)} -m mlp_torch train {SMALL_TRAIN} --epochs 2 --runs-dir {runs}"
    proc = subprocess.run(
        ["bash", "-c", f"{command} --name piped | head -1"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("epoch 1/2 ") and proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr, proc.stderr
    assert "\r" not in proc.stderr, "stderr is not a terminal: no progress-bar frames"
    (run_dir,) = runs.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["history"]) == 2
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "_hparams_/session_end_info" in events.PluginTagToContent("hparams")


def test_eval_whose_reader_is_gone_exits_141_quietly(good_run):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlp_torch", "eval", str(good_run), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader: the first write gets EPIPE
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, stderr
    assert stderr == ""


def test_a_progress_bar_only_on_a_terminal_unless_asked_for(tmp_path, capsys):
    default = TrainConfig().progress
    train(tiny_config(tmp_path / "auto", epochs=1, progress=default))  # capsys' stderr is not a terminal
    assert "\r" not in capsys.readouterr().err
    train(tiny_config(tmp_path / "forced", epochs=1, progress=True))
    assert "epoch 1/1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "data", "compare"])
def test_json_dash_writes_clean_json_to_stdout_and_the_report_to_stderr(good_run, capsys, command):
    argv = {
        "eval": ["eval", str(good_run), "--device", "cpu"],
        "data": ["data", "--dataset", "synthetic", "--image-size", "8", "--no-cache"],
        "compare": ["compare", "--dataset", "synthetic", "--image-size", "4", "--hidden", "4", "--fd-samples", "1"],
    }[command]
    assert main([*argv, "--json", "-"]) == 0
    captured = capsys.readouterr()
    value = json.loads(captured.out)
    assert {"eval": "accuracy", "data": "splits", "compare": "rows"}[command] in value
    assert captured.err.strip(), "the human-readable report went to stderr"
