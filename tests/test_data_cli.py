"""``mlp-torch data``: the summary, --json, the shared data flags, and one-line errors."""

from __future__ import annotations

import argparse
import json

import pytest

from mlp_torch.cli import main
from mlp_torch.commands._flags import add_data_arguments, data_options_from_args


def test_data_command_prints_counts_and_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert (
        main(["data", "--dataset", "synthetic", "--classes", "x, y", "--val-fraction", "0.2", "--json", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert "synthetic (seed 0)" in printed and "cache:      none" in printed
    assert json.loads(out.read_text()) == {
        "classes": ["x", "y"],
        "splits": {"train": {"x": 800, "y": 800}, "val": {"x": 200, "y": 200}, "test": {"x": 200, "y": 200}},
    }


def test_bad_input_is_one_line_on_stderr_with_exit_2(tmp_path, capsys):
    assert main(["data", "--classes", "cat,kitten", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kitten" in err and "airplane" in err and "Traceback" not in err
    assert main(["data", "--dataset", "folder", "--data-root", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["data", "--dataset", "synthetic", "--val-fraction", "1.5"]) == 2


def test_shared_flags_build_options_and_env_overrides_the_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("MLP_TORCH_CIFAR100_URL", "http://127.0.0.1:1/x.tar.gz")
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(
        [
            "--classes",
            "cat,bear",
            "--cache-dir",
            str(tmp_path),
            "--balance",
            "sample",
            "--augment-flip",
            "--augment-crop",
            "4",
            "--seed",
            "3",
            "--cifar10-md5",
            "0" * 32,
        ]
    )
    opts = data_options_from_args(args, seed=args.seed)
    assert opts.classes == ["cat", "bear"] and opts.cache_dir == tmp_path and opts.seed == 3
    assert opts.balance == "sample" and opts.augment_flip and opts.augment_crop == 4
    assert opts.cifar100_url == "http://127.0.0.1:1/x.tar.gz" and opts.cifar10_md5 == "0" * 32
    defaults = data_options_from_args(parser.parse_args([]))
    assert defaults.dataset == "cifar" and defaults.classes is None and defaults.val_fraction == 0.1


def test_help_shows_the_data_flags_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--dataset",
        "--data-root",
        "--classes",
        "--val-fraction",
        "--image-size",
        "--cache-dir",
        "--balance",
        "--augment-flip",
        "--augment-crop",
        "--cifar10-url",
        "--json",
    ):
        assert flag in text
    assert "(default: 0.1)" in text
