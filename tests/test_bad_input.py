"""Bad command-line input: one line on stderr saying what is wrong and what is allowed, exit 2, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mlp_torch.cli import main
from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, train

SYNTH = [
    "--dataset",
    "synthetic",
    "--image-size",
    "8",
    "--hidden",
    "16",
    "--epochs",
    "1",
    "--no-progress",
    "--no-cache",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """An existing run, an image folder with classes a and b, an empty folder and a broken image."""
    root = tmp_path_factory.mktemp("world")
    runs = root / "runs"
    run = Path(
        train(
            TrainConfig(
                hidden=[16],
                epochs=1,
                batch_size=32,
                progress=False,
                device="cpu",
                histogram_every=0,
                runs_dir=runs,
                data=DataOptions(
                    dataset="synthetic",
                    synthetic_train_per_class=60,
                    synthetic_test_per_class=20,
                    image_size=8,
                    cache=False,
                ),
            )
        )["run_dir"]
    )
    for split in ("train", "test"):
        for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
            (root / "images" / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), colour).save(root / "images" / split / name / f"{i}.png")
    (root / "empty").mkdir()
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"root": root, "runs": runs, "run": run}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


CASES = {
    # name: (argv with {root}/{run} placeholders, phrase the message must contain)
    "zero lr": (["train", *SYNTH, "--lr", "0"], "--lr must be a positive number, got 0.0"),
    "negative lr": (["train", *SYNTH, "--lr", "-0.1"], "--lr must be a positive number"),
    "zero batch size": (["train", *SYNTH, "--batch-size", "0"], "--batch-size must be a positive number, got 0"),
    "text batch size": (["train", *SYNTH, "--batch-size", "many"], "invalid int value: 'many'"),
    "unknown CIFAR class": (
        ["train", "--dataset", "cifar", "--classes", "cat,zebra", "--data-root", "{root}/empty"],
        "unknown CIFAR class name(s) zebra; valid CIFAR-10 names: airplane",
    ),
    "unknown model": (["train", *SYNTH, "--model", "resnet"], "invalid choice: 'resnet' (choose from 'softmax'"),
    "unknown activation": (["train", *SYNTH, "--activation", "gelu"], "invalid choice: 'gelu' (choose from"),
    "unknown backend": (["train", *SYNTH, "--backend", "jax"], "invalid choice: 'jax' (choose from 'builtin'"),
    "unknown dataset": (["train", "--dataset", "mnist"], "invalid choice: 'mnist'"),
    "missing data root": (
        ["train", "--dataset", "folder", "--data-root", "{root}/nowhere", "--no-progress"],
        "image folder {root}/nowhere does not exist; expected DATA_ROOT/train/<class>",
    ),
    "empty data root": (
        ["train", "--dataset", "folder", "--data-root", "{root}/empty", "--no-progress"],
        "{root}/empty has no train/ folder",
    ),
    "class not in the folder": (
        [
            "train",
            "--dataset",
            "folder",
            "--data-root",
            "{root}/images",
            "--classes",
            "a,c",
            "--no-cache",
            "--no-progress",
        ],
        "classes found in",
    ),
    "unreadable image in predict": (
        ["predict", "{run}", "{root}/broken.png", "--device", "cpu"],
        "cannot read image {root}/broken.png",
    ),
    "missing image in predict": (
        ["predict", "{run}", "{root}/nowhere.png", "--device", "cpu"],
        "image {root}/nowhere.png does not exist",
    ),
    "cuda without a GPU": (["train", *SYNTH, "--device", "cuda"], "no CUDA GPU is available; use --device cpu"),
    "unknown device": (["train", *SYNTH, "--device", "tpu"], "unknown device 'tpu'; use one of auto, cpu"),
    "resume of a folder that is not a run": (
        ["train", "--resume", "{root}/images"],
        "{root}/images is not a run directory",
    ),
    "resume of a missing folder": (["train", "--resume", "{root}/nowhere"], "is not a run directory"),
    "eval of a folder that is not a run": (
        ["eval", "{root}/empty", "--device", "cpu"],
        "is a folder without checkpoints/best.pt",
    ),
    "unknown split": (["eval", "{run}", "--split", "holdout"], "invalid choice: 'holdout'"),
    # numbers PyTorch or the schedule cannot take
    "seed beyond 64 bits": (["train", *SYNTH, "--seed", str(2**70)], "--seed must be an integer from 0 to 2**64 - 1"),
    "negative seed": (["train", *SYNTH, "--seed", "-1"], "--seed must be an integer from 0 to 2**64 - 1, got -1"),
    "seed beyond 64 bits for data": (["data", "--dataset", "synthetic", "--seed", str(2**64)], "--seed must be"),
    "seed beyond 64 bits for gradcheck": (["gradcheck", "--seed", str(2**70)], "--seed must be an integer"),
    "nan warm-up": (
        ["train", *SYNTH, "--warmup-epochs", "nan"],
        "--warmup-epochs must be a finite number ≥ 0, got nan",
    ),
    "val fraction leaving no training image": (
        ["train", *SYNTH, "--val-fraction", "0.9999"],
        "no training images left for class(es) class0, class1, class2; lower --val-fraction (0.9999 now)",
    ),
    "300-character name": (["train", *SYNTH, "--name", "n" * 300], "--name is 300 bytes long; a run directory"),
    # --json: checked as the command line is parsed, before any data are loaded
    "json into a missing folder (eval)": (
        ["eval", "{run}", "--json", "{root}/nowhere/out.json"],
        "argument --json: the folder {root}/nowhere of {root}/nowhere/out.json does not exist",
    ),
    "json into a missing folder (predict)": (
        ["predict", "{run}", "{root}/broken.png", "--json", "{root}/nowhere/p.json"],
        "argument --json: the folder {root}/nowhere of",
    ),
    "json into a missing folder (compare)": (["compare", "--json", "{root}/nowhere/c.json"], "does not exist"),
    "json into a missing folder (bench)": (["bench", "--json", "{root}/nowhere/b.json"], "does not exist"),
    "json path is a folder (data)": (
        ["data", "--dataset", "synthetic", "--json", "{root}/empty"],
        "argument --json: {root}/empty is a folder; name a file in it",
    ),
    "json under a file (eval)": (["eval", "{run}", "--json", "{root}/broken.png/x.json"], "is a file, not a folder"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, capsys, name):
    if name == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    argv, phrase = CASES[name]
    fill = {"root": str(world["root"]), "run": str(world["run"])}
    argv = [arg.format(**fill) for arg in argv]
    before = snapshot(world["runs"])
    code, out, err = run_cli(argv + ["--runs-dir", str(world["runs"])] if argv[0] == "train" else argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mlp-torch {argv[0]}: error: "), lines[0]
    assert phrase.format(**fill) in lines[0]
    assert "Traceback" not in out + err
    assert snapshot(world["runs"]) == before  # no new run directory, no file of the old run changed


def test_bad_flags_exit_2_without_a_traceback_as_a_process(world):
    """The same path through ``python -m mlp_torch``: one line, no usage block, no traceback."""
    for argv, phrase in (
        (["train", "--dataset", "synthetic", "--lr", "-1", "--runs-dir", str(world["runs"])], "--lr must be"),
        (["train", "--model", "resnet"], "argument --model: invalid choice"),
    ):
        proc = subprocess.run([sys.executable, "-m", "mlp_torch", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("mlp-torch train: error: ") and phrase in line


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_an_unusable_runs_dir_is_one_line_exit_2_before_any_data_are_loaded(world, tmp_path, capsys, where):
    blocker = tmp_path / "runs.txt"
    blocker.write_text("a file where the runs should go")
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder")
        runs = tmp_path / "ro"
        runs.mkdir(mode=0o555)
        phrase = f"no permission to create folders in {runs}"
    else:
        runs = blocker if where == "a file" else blocker / "runs"
        phrase = f"{blocker} is a file, not a folder"
    # data that do not exist: refusing the runs dir first proves no data were looked at
    argv = ["train", "--dataset", "folder", "--data-root", str(world["root"] / "nowhere"), "--runs-dir", str(runs)]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"mlp-torch train: error: --runs-dir {runs}: ") and phrase in line, line
    assert blocker.read_text() == "a file where the runs should go"
