"""The search-space grammar of ``mlp-torch sweep``, its refusals, and the train command a sweep prints."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from mlp_torch.cli import build_parser, main
from mlp_torch.commands.sweep import plan_from_args
from mlp_torch.commands.train import config_from_args, train_command
from mlp_torch.data import DataOptions
from mlp_torch.errors import UsageError
from mlp_torch.sweep import Choices, Range, StorageSpec, field_kinds, parse_flag
from mlp_torch.sweep.plan import SweepPlan, differences
from mlp_torch.training import TrainConfig

KINDS = field_kinds()


def plan(*flags: str) -> SweepPlan:
    return plan_from_args(build_parser().parse_args(["sweep", "--dataset", "synthetic", *flags]))


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("lr", "1e-3..1e-1", Range(1e-3, 1e-1)),
        ("lr", "1e-3..1e-1:log", Range(1e-3, 1e-1, log=True)),
        ("momentum", " 0.8..0.99 ", Range(0.8, 0.99)),
        ("batch_size", "32..256:log", Range(32, 256, log=True, integer=True)),
        ("weight_decay", "0,1e-4,5e-4", Choices((0.0, 1e-4, 5e-4))),
        ("activation", "sigmoid,relu", Choices(("sigmoid", "relu"))),
        ("nesterov", "true,false", Choices((True, False))),
        ("hidden", "512|1024|1024 1024", Choices(([512], [1024], [1024, 1024]))),
        ("hidden", "1024 1024", [1024, 1024]),
        ("epochs", "30", 30),
        ("lr", "0.01", 0.01),
        ("augment_crop", "0,2,4", Choices((0, 2, 4))),
    ],
)
def test_the_grammar_reads_ranges_log_ranges_choices_and_hidden_choices(name, text, expected):
    parsed = parse_flag(KINDS[name], text)
    assert parsed == expected
    assert type(parsed) is type(expected)


@pytest.mark.parametrize(
    "name, text, says",
    [
        ("lr", "1e-1..1e-3", "LOW must be below HIGH"),
        ("lr", "0..1e-1:log", "a log range needs LOW > 0"),
        ("lr", "1e-3..abc", "'abc' is not a number"),
        ("lr", "1e-3..1e-1:cube", "unknown range option 'cube'"),
        ("epochs", "1.5..3", "--epochs takes integers"),
        ("activation", "sigmoid,swish", "'swish' is not one of sigmoid, tanh, relu"),
        ("activation", "a..b", "a range needs a numeric flag"),
        ("hidden", "512|", "an empty choice"),
        ("hidden", "512|big", "not a list of layer sizes"),
        ("weight_decay", "0,,1e-4", "an empty choice"),
        ("weight_decay", "0,0", "names a value twice"),
        ("nesterov", "true,maybe", "'maybe' is not true or false"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_flag(name, text, says):
    with pytest.raises(UsageError, match=says) as err:
        parse_flag(KINDS[name], text)
    assert KINDS[name].flag in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--lr", "1..abc"], "'abc' is not a number"),
        (["--momentum", "0.5..1"], "--momentum '0.5..1.0': --momentum must be in [0, 1), got 1.0"),
        (["--lr", "1e-3..1e-1", "--sampler", "grid"], "--sampler grid needs choices"),
        (["--epochs", "3"], "nothing to search"),
        (["--lr", "0.1,0.01", "--val-fraction", "0"], "--val-fraction must be above 0"),
        (["--lr", "0.1,0.01", "--workers", "0"], "--workers must be at least 1"),
        (["--lr", "0.1,0.01", "--trials", "0"], "--trials and --seeds must be at least 1"),
    ],
)
def test_bad_sweep_flags_are_one_line_exit_2_and_nothing_is_written(tmp_path, capsys, flags, says):
    code = main(["sweep", "--dataset", "synthetic", "--sweep-dir", str(tmp_path / "S"), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "S").exists()


def test_argparse_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--lr", "0.1,0.01", "--no-nesterov", "true", "--sweep-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "takes no value" in capsys.readouterr().err


def test_help_documents_the_grammar(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = capsys.readouterr().out
    for piece in ("LOW..HIGH", "LOW..HIGH:log", "A,B,C", '"512|1024|1024 1024"', "--trials", "--storage", "--seeds"):
        assert piece in text


def test_every_train_flag_is_a_sweep_flag_but_the_runs_own():
    train = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    sweep = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["sweep"]._actions}
    assert train - sweep == {"runs_dir", "name", "progress", "resume"}


def test_flags_split_into_fixed_values_and_spaces_and_each_candidate_is_checked():
    p = plan("--lr", "1e-3..1e-1:log", "--hidden", "32|64 64", "--epochs", "2", "--no-augment-flip")
    assert p.spaces == {"lr": Range(1e-3, 1e-1, log=True), "hidden": Choices(([32], [64, 64]))}
    assert p.fixed["epochs"] == 2 and p.fixed["augment_flip"] is False and "lr" not in p.fixed
    config = p.trial_config({"lr": 0.01, "hidden": "64 64"}, 1, Path("S/trials"), "t")
    assert (config.lr, config.hidden, config.seed, config.data.seed) == (0.01, [64, 64], 1, 1)
    assert config.data.augment_flip is False and config.epochs == 2


def test_the_linear_models_keep_their_own_default_learning_rate_when_the_model_is_searched():
    p = plan("--model", "mlp,softmax")
    assert p.trial_config({"model": "softmax"}, 0, Path("t"), "t").lr == 0.001
    assert p.trial_config({"model": "mlp"}, 0, Path("t"), "t").lr == 0.05


def test_a_study_remembers_what_it_trains_and_names_what_changed():
    a, b = plan("--lr", "0.1,0.01", "--epochs", "2"), plan("--lr", "0.1,0.01", "--epochs", "3")
    assert a.definition() != b.definition()
    assert differences(a.definition(), b.definition()) == ["--epochs: 2 -> 3"]
    # where the data are and which device trains do not change what a trial scores
    c = plan("--lr", "0.1,0.01", "--epochs", "2", "--device", "cpu", "--data-root", "/elsewhere")
    assert a.definition() == c.definition()


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(model="softmax", data=DataOptions(dataset="synthetic")),
        TrainConfig(model="softmax", lr=0.05, nesterov=False, momentum=0.0),
        TrainConfig(hidden=[1024, 1024], activation="relu", lr=0.0123456789, epochs=60, seed=3),
        TrainConfig(hidden=[], data=DataOptions(dataset="folder", data_root=Path("x y"), classes=["cat", "dog"])),
        TrainConfig(data=DataOptions(dataset="xor", samples=300, noise=0.2)),
        TrainConfig(data=DataOptions(augment_flip=False, augment_crop=4, image_size=16, cache=False)),
    ],
)
def test_the_printed_train_command_trains_the_same_config(config):
    argv = shlex.split(train_command(config))
    assert argv[:2] == ["mlp-torch", "train"]
    assert config_from_args(build_parser().parse_args(argv[1:])) == config


def test_a_storage_url_is_shown_without_its_password(tmp_path):
    spec = StorageSpec("postgresql://ann:s3cret@db.example/sweeps", tmp_path)
    assert spec.kind == "rdb" and "s3cret" not in spec.display and "ann" in spec.display
    assert StorageSpec(None, tmp_path).path == tmp_path / "study.journal"
    assert StorageSpec("shared/x.journal", tmp_path).kind == "journal"
    assert StorageSpec("redis://ann:s3cret@host:6379", tmp_path).kind == "redis"
    assert "s3cret" not in StorageSpec("redis://ann:s3cret@host:6379", tmp_path).display


def test_a_missing_database_driver_is_one_line(tmp_path):
    pytest.importorskip("sqlalchemy")
    with pytest.raises(UsageError, match=r"--storage .*cannot open it|driver is missing") as err:
        StorageSpec("postgresql://ann:s3cret@127.0.0.1:9/none", tmp_path).open()
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)
