"""One source of truth for defaults: the config dataclasses. The flags are made from their fields,
so ``mlp-torch train`` and ``train(TrainConfig(...))`` with the same arguments run the same thing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from interrupts import signal_during_step

from mlp_torch.cli import build_parser, main
from mlp_torch.commands.train import config_from_args
from mlp_torch.data import DataOptions
from mlp_torch.training import TrainConfig, train


def saved_run(runs: Path) -> dict:
    """config.json of the one run in ``runs``, without what differs between any two runs."""
    (run_dir,) = runs.iterdir()
    info = json.loads((run_dir / "config.json").read_text())
    del info["command"], info["created"], info["config"]["runs_dir"]
    return info


@pytest.mark.parametrize(
    "flags, config",
    [
        (["--dataset", "synthetic"], TrainConfig(data=DataOptions(dataset="synthetic"))),
        (["--dataset", "synthetic", "--seed", "3"], TrainConfig(seed=3, data=DataOptions(dataset="synthetic"))),
        (["--dataset", "xor"], TrainConfig(data=DataOptions(dataset="xor"))),
    ],
    ids=["defaults", "seed", "2-D points"],
)
def test_the_command_line_and_python_write_the_same_config_json(tmp_path, monkeypatch, flags, config):
    monkeypatch.chdir(tmp_path)  # the default data root, ./data, means the same folder for both
    signal_during_step(monkeypatch)  # a Ctrl-C in the first step: config.json is written, the rest is quick
    assert main(["train", *flags, "--runs-dir", "cli", "--no-progress"]) == 130
    metrics = train(dataclasses.replace(config, runs_dir=Path("api"), progress=False))
    assert metrics["status"] == "interrupted"
    cli, api = saved_run(tmp_path / "cli"), saved_run(tmp_path / "api")
    assert cli == api
    images = config.data.dataset == "synthetic"  # flipped and cropped by default; points are not
    assert cli["config"]["data"]["augment_flip"] is images and cli["config"]["data"]["augment_crop"] == 2 * images
    assert cli["config"]["data"]["seed"] == cli["config"]["seed"] == config.seed


def parse_train(*flags: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_every_flag_default_is_the_dataclass_default():
    assert parse_train() == TrainConfig()
    assert parse_train().data == DataOptions(seed=0)


def test_every_config_field_is_a_train_flag():
    args = vars(build_parser().parse_args(["train"]))
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"data"}
    data_fields = {f.name for f in dataclasses.fields(DataOptions)} - {"seed"}  # --seed seeds the data too
    assert fields | data_fields <= set(args)


def test_flags_reach_the_config_with_their_types():
    config = parse_train(
        "--hidden",
        "64",
        "32",
        "--no-nesterov",
        "--lr",
        "0.2",
        "--classes",
        "cat, dog",
        "--no-augment-flip",
        "--augment-crop",
        "0",
        "--cache-dir",
        "somewhere",
        "--no-cache",
        "--seed",
        "7",
        "--synthetic-train-per-class",
        "5",
    )
    assert config.hidden == [64, 32] and config.nesterov is False and config.lr == 0.2
    assert config.data.classes == ["cat", "dog"] and config.data.cache_dir == Path("somewhere")
    assert config.data.augment_flip is False and config.data.augment_crop == 0 and config.data.cache is False
    assert config.seed == config.data.seed == 7 and config.data.synthetic_train_per_class == 5
    assert parse_train("--hidden").hidden == [], "no sizes: the linear softmax classifier"


def test_a_data_seed_given_in_python_is_kept_and_the_callers_options_are_not_changed():
    data = DataOptions(dataset="synthetic")
    assert TrainConfig(seed=5, data=data).data.seed == 5 and data.seed is None
    assert TrainConfig(seed=5, data=DataOptions(dataset="synthetic", seed=1)).data.seed == 1


def test_commands_with_a_subset_take_the_same_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per flag
    compare = vars(build_parser().parse_args(["compare"]))
    d = TrainConfig()
    assert (compare["model"], compare["hidden"], compare["activation"]) == (d.model, d.hidden, d.activation)
    assert "backend" not in compare, "compare runs every backend"
    assert compare["dataset"] == "synthetic", "compare's own default"
    data = vars(build_parser().parse_args(["data"]))
    assert data["dataset"] == "cifar" and data["val_fraction"] == DataOptions().val_fraction
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "(default: synthetic)" in capsys.readouterr().out


def test_bad_values_of_new_data_flags_are_one_line(capsys):
    for flags in (["--download-timeout", "0"], ["--synthetic-test-per-class", "0"]):
        assert main(["data", "--dataset", "synthetic", *flags]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("mlp-torch data: error: --"), line
