"""``train --resume``: extending a run really trains, typed flags count, changed data are refused,
a run is trained by one process at a time, and what a killed save left is cleaned up."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from interrupts import signal_during_step
from PIL import Image

from mlp_torch.cli import main, typed_options
from mlp_torch.data import DataOptions
from mlp_torch.errors import DataError, RunInUseError, UsageError
from mlp_torch.training import Callback, TrainConfig, TrainState, load_checkpoint, load_run_config, train
from mlp_torch.training.rundir import LOCK_FILE, RunLock

# 2,700 synthetic 8x8 training images in batches of 256: 11 steps per epoch
CLI = ["--dataset", "synthetic", "--image-size", "8", "--hidden", "8", "--batch-size", "256", "--no-cache"]
CLI += ["--device", "cpu", "--histogram-every", "0", "--no-progress"]


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return run_dir


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["history"]


def saved_epochs(run_dir: Path) -> int:
    return json.loads((run_dir / "config.json").read_text())["config"]["epochs"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model_state"]


# ------------------------------------------------------------------- --resume --epochs N (item 3)


def test_resuming_a_completed_run_with_more_epochs_trains_them_on_the_stretched_schedule(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "2", "--runs-dir", str(runs), "--name", "ext"]) == 0
    run_dir = only_run_dir(runs)
    before = weights(run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"

    assert main(["train", "--resume", str(run_dir), "--epochs", "4"]) == 0
    assert "re-stretched to the new total" in capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 4
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert all(h["lr"] > 0 for h in metrics["history"][2:]), metrics["history"]
    after = weights(run_dir)
    assert all(not torch.equal(before[k], after[k]) for k in before), "the new epochs changed every parameter"
    assert saved_epochs(run_dir) == 4
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 4

    # epochs 3-4 follow the curve of a run planned for 4 epochs from the start (warm-up not repeated)
    planned = train(
        TrainConfig.from_dict({**load_run_config(run_dir).to_dict(), "runs_dir": str(tmp_path / "planned")})
    )
    assert [h["lr"] for h in metrics["history"][2:]] == [h["lr"] for h in planned["history"][2:]]


def test_epochs_typed_on_resume_count_even_when_they_equal_the_default(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "1", "--runs-dir", str(runs)]) == 0
    run_dir = only_run_dir(runs)
    with monkeypatch.context() as patch:  # stop right after the first new step: only config.json matters
        signal_during_step(patch)
        assert main(["train", "--resume", str(run_dir), "--epochs", str(TrainConfig().epochs)]) == 130
    assert saved_epochs(run_dir) == TrainConfig().epochs == 30
    # the interrupted extension resumes to the new total without --epochs
    assert load_run_config(run_dir).epochs == 30


def test_typed_options_come_from_the_command_line_not_from_comparing_with_defaults():
    assert typed_options(["train", "--resume", "r", "--epochs", "30"]) == {"resume", "epochs"}
    assert typed_options(["train", "--resume=r", "--epoch=30", "--no-progress"]) == {"resume", "epochs", "progress"}
    assert typed_options(["train", "--resume", "r"]) == {"resume"}
    assert typed_options(["eval", "run", "--split", "test"]) == {"checkpoint", "split"}


def test_fewer_epochs_than_already_trained_are_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "2", "--runs-dir", str(runs)]) == 0
    run_dir = only_run_dir(runs)
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "1"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "has already trained 2 epochs; --epochs 1 cannot undo them" in line
    assert saved_epochs(run_dir) == 2


# -------------------------------------------------------------- config.json of the wrong type (item 12)


@pytest.mark.parametrize(
    "key, value, phrase",
    [
        ("epochs", "3", "config key 'epochs' must be an integer, got \"3\" (a string)"),
        ("lr", [0.1], "config key 'lr' must be a number or null, got [0.1] (a list)"),
        ("nesterov", 1, "config key 'nesterov' must be true or false, got 1 (an integer)"),
        ("hidden", [8, "x"], "config key 'hidden' must be a list of integers"),
        ("data", "synthetic", "config key 'data' must be an object"),
        ("data.val_fraction", "0.1", "config data key 'val_fraction' must be a number"),
        ("data.classes", "a,b", "config data key 'classes' must be a list of strings or null"),
        ("epochs", -3, "--epochs must be a positive number, got -3"),
    ],
)
def test_a_hand_edited_config_json_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, capsys, key, value, phrase):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "1", "--runs-dir", str(runs)]) == 0
    run_dir = only_run_dir(runs)
    path = run_dir / "config.json"
    info = json.loads(path.read_text())
    *parents, last = ["config", *key.split(".")]
    target = info
    for part in parents:
        target = target[part]
    target[last] = value
    path.write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mlp-torch train: error: {path}: ") and phrase in line, line
    with pytest.raises(UsageError, match="config"):
        load_run_config(run_dir)


# ------------------------------------------------------------------- changed data (item 6)


def write_folder(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, per_split in (("train", counts), ("test", {name: 2 for name in counts})):
        for name, n in per_split.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def folder_config(root: Path, runs: Path, **overrides) -> TrainConfig:
    data = DataOptions(dataset="folder", data_root=root, image_size=8, cache=False, val_fraction=0.25)
    values = dict(hidden=[8], epochs=2, batch_size=8, device="cpu", histogram_every=0, progress=False)
    return TrainConfig(**{**values, "runs_dir": runs, "data": data, **overrides})


@pytest.fixture
def half_done_folder_run(tmp_path) -> tuple[Path, Path]:
    """An image folder (classes a, b) and a run on it stopped after 1 of 2 epochs."""
    root = tmp_path / "photos"
    write_folder(root, {"a": 8, "b": 8})
    run_dir = Path(train(folder_config(root, tmp_path / "runs"), stop_after_epochs=1)["run_dir"])
    return root, run_dir


def resume_error(run_dir: Path) -> str:
    with pytest.raises(DataError) as info:
        train(load_run_config(run_dir), resume=run_dir)
    return str(info.value)


def test_resume_refuses_an_added_class_folder(half_done_folder_run):
    root, run_dir = half_done_folder_run
    write_folder(root, {"c": 4}, seed=1)
    message = resume_error(run_dir)
    assert message.startswith(f"cannot resume {run_dir}: the data changed since it was saved")
    assert "the classes were a, b and are now a, b, c" in message


def test_resume_refuses_removed_or_added_images(half_done_folder_run):
    root, run_dir = half_done_folder_run
    (root / "train" / "b" / "0.png").unlink()
    assert "the number of images changed (train b 6 → 5)" in resume_error(run_dir)
    write_folder(root, {"b": 12}, seed=2)  # rewrites 0..7, adds 8..11
    assert "the number of images changed (train b 6 → 9, val b 2 → 3)" in resume_error(run_dir)


def test_resume_refuses_replaced_images_with_the_same_counts(half_done_folder_run):
    root, run_dir = half_done_folder_run
    Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "train" / "a" / "3.png")
    assert "the image files changed (same classes and counts" in resume_error(run_dir)


def test_resume_of_unchanged_data_continues_and_a_checkpoint_without_fingerprint_gets_a_note(
    half_done_folder_run, capsys
):
    root, run_dir = half_done_folder_run
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    assert set(ckpt["data_fingerprint"]) == {"classes", "counts", "digest"}
    del ckpt["data_fingerprint"]  # as an mlp_torch before fingerprints wrote it
    torch.save(ckpt, last)
    capsys.readouterr()
    metrics = train(load_run_config(run_dir), resume=run_dir)
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert "predates data fingerprints" in capsys.readouterr().err


def test_the_digest_is_content_not_dates(tmp_path):
    root = tmp_path / "photos"
    write_folder(root, {"a": 4, "b": 4})
    from mlp_torch.data import load_data

    opts = DataOptions(dataset="folder", data_root=root, image_size=8, cache=False)
    first = load_data(opts).fingerprint()
    os.utime(root / "train" / "a" / "0.png", (1, 1))
    assert load_data(opts).fingerprint() == first, "a touched file holds the same images"


# -------------------------------------------------- one process per run; leftovers (item 10)


def test_a_run_held_by_another_process_is_refused_and_a_dead_holder_does_not_block(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "1", "--runs-dir", str(runs)]) == 0
    run_dir = only_run_dir(runs)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    holder = subprocess.Popen(  # stands in for a training process: holds the lock, then dies by SIGKILL
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)",
            str(run_dir / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        capsys.readouterr()
        assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == (
            f"mlp-torch train: error: {run_dir} is being trained by another process (pid {holder.pid}); wait for it "
            "to end, or stop it (Ctrl-C or kill PID saves last.pt) and resume then"
        )
        assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before, "nothing was written"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0, "a killed holder's lock is gone"
    assert len(history(run_dir)) == 2


class LockIsHeld(Callback):
    """Checks, during every step, that another process could not take the run's lock."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, state: TrainState) -> None:
        with pytest.raises(RunInUseError):
            RunLock(state.run_dir)
        self.steps += 1


def test_the_lock_is_held_while_training_and_released_after(tmp_path):
    data = DataOptions(dataset="synthetic", image_size=8, cache=False, synthetic_train_per_class=40)
    config = TrainConfig(hidden=[8], epochs=1, device="cpu", progress=False, runs_dir=tmp_path, data=data)
    probe = LockIsHeld()
    run_dir = Path(train(config, callbacks=[probe])["run_dir"])
    assert probe.steps > 0
    RunLock(run_dir).release()  # free again once the run ended

    probe = LockIsHeld()
    train(dataclasses.replace(load_run_config(run_dir), epochs=2), resume=run_dir, callbacks=[probe])
    assert probe.steps > 0
    RunLock(run_dir).release()


def test_temporary_files_of_a_killed_save_are_removed_when_the_run_is_resumed(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", *CLI, "--epochs", "1", "--runs-dir", str(runs)]) == 0
    run_dir = only_run_dir(runs)
    leftovers = [run_dir / "checkpoints" / ".last.pt.k3j4h5.tmp", run_dir / ".metrics.json.a8b7c6.tmp"]
    for path in leftovers:
        path.write_bytes(b"PK\x03\x04 half a file")
    keep = run_dir / "notes.tmp"  # not one of atomic_write's names
    keep.write_text("mine")
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "--epochs", "2"]) == 0
    assert "removed 2 temporary file(s) left by an interrupted save" in capsys.readouterr().err
    assert not any(path.exists() for path in leftovers)
    assert keep.read_text() == "mine"
    assert not list(run_dir.rglob(".*.tmp"))
