"""``mlp-torch train``: train a model, log to TensorBoard, save checkpoints and metrics in a run directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..data.saved import LOCATION_KEYS, data_options_from_saved, location_overrides
from ..training.config import TrainConfig
from ._common import HelpFormatter, signal_exit
from ._flags import (
    DATA_FIELDS,
    MODEL_FIELDS,
    add_data_arguments,
    add_fields,
    add_model_arguments,
    data_options_from_args,
    format_flag,
    values,
)

# Only these may change when a run is resumed; everything else comes from its config.json.
RESUMABLE = ("epochs", "device", "cuda_graphs", "progress", "dist_timeout")
# Where the data are and come from: never taken from config.json on --resume (a resume never downloads).
DATA_LOCATIONS = ("data_root", "cache_dir", "cache", *LOCATION_KEYS)


# The groups of `mlp-torch train --help`; every other TrainConfig field goes under "run".
OPTIMISATION_FIELDS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "step_size",
    "gamma",
    "label_smoothing",
    "mixup",
)
RUN_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*MODEL_FIELDS, *OPTIMISATION_FIELDS, "data")
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a classifier; runs go to runs/<date-time>_<name>/",
        description=(
            "Train the lecture's classifiers. With no flags: the two-layer sigmoid MLP (3072-512-C)\n"
            "on CIFAR cat/dog/bear with our hand-written autograd Functions (--backend custom), on the\n"
            "best device available. Each run writes config.json, metrics.json, TensorBoard event files\n"
            "and checkpoints/{best,last}.pt into a new run directory.\n\n"
            "--resume RUN_DIR --epochs N continues a run (interrupted or completed) to N epochs in all.\n"
            "The learning-rate curve is rebuilt for the new total: the cosine is re-stretched to end at\n"
            "epoch N, and the run continues from its current step on that curve (warm-up is not repeated),\n"
            "so a completed run's learning rate, which had decayed to 0, rises again to the curve's value\n"
            "there. config.json records the new total."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser)
    add_data_arguments(parser)
    add_fields(parser.add_argument_group("optimisation"), TrainConfig, OPTIMISATION_FIELDS)
    run = parser.add_argument_group("run")
    add_fields(run, TrainConfig, RUN_FIELDS)
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from checkpoints/last.pt with its own config.json "
        f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE)} may change; --data-root and "
        "--cache-dir say where the data are now; nothing is downloaded)",
    )
    parser.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` the parsed flags describe (``--seed`` seeds the data too)."""
    return TrainConfig(
        **values(args, (*MODEL_FIELDS, *OPTIMISATION_FIELDS, *RUN_FIELDS)), data=data_options_from_args(args)
    )


def run_train(args: argparse.Namespace) -> int:
    from ..training import load_run_config, train
    from ..utils import launched_rank, print_line

    speaks = launched_rank() == 0  # under torchrun, rank 0 speaks for the run

    if args.resume is None:
        config = config_from_args(args)
        metrics = train(config)
    else:
        config = load_run_config(args.resume)
        ignored = sorted(args.typed - set(RESUMABLE) - set(DATA_LOCATIONS) - {"resume"})
        if ignored and speaks:
            print(
                "mlp-torch train: note: with --resume the run's config.json decides; ignoring "
                + ", ".join("--" + k.replace("_", "-") for k in ignored),
                file=sys.stderr,
            )
        for key in set(RESUMABLE) & args.typed:
            setattr(config, key, getattr(args, key))
        # which data from config.json; where they are and any URL, md5 or cache folder from the command line
        overrides = location_overrides(args, data_root_given="data_root" in args.typed)
        config.data = data_options_from_saved(config.to_dict()["data"], str(args.resume / "config.json"), overrides)
        config.validate()
        metrics = train(config, resume=args.resume)
    if metrics["status"] == "interrupted":
        run_dir = Path(metrics["run_dir"])
        if speaks:
            print_line(
                f"\nstopped after {metrics['epochs']} complete epoch(s); the exact position is saved in "
                f"{run_dir / 'checkpoints' / 'last.pt'}. Continue with:\n  mlp-torch train --resume {run_dir}"
            )
        return signal_exit(metrics.get("signal"))
    return 0


def train_flags(config: TrainConfig) -> list[str]:
    """The flags of ``mlp-torch train`` that build ``config`` (``config_from_args`` of them gives it back).

    A field at its default is left out; so are ``--lr`` at the model's default rate, augmentation at
    the dataset's default, and what a command line cannot say (``--runs-dir``, ``--name``, ``--progress``
    are left to the reader).
    """
    from ..data import DataOptions
    from ..training.config import default_lr

    flags: list[str] = []
    plain, plain_data, dataset_default = TrainConfig(), DataOptions(), DataOptions(dataset=config.data.dataset)
    for name in MODEL_FIELDS:
        if getattr(config, name) != getattr(plain, name):
            flags += format_flag(name, getattr(config, name))
    for name in DATA_FIELDS:
        value = getattr(config.data, name)
        if value != getattr(dataset_default if name.startswith("augment_") else plain_data, name):
            flags += format_flag(name, value)
    for name in (*OPTIMISATION_FIELDS, *RUN_FIELDS):
        value = getattr(config, name)
        default = default_lr(config.model, config.hidden) if name == "lr" else getattr(plain, name)
        if name not in ("runs_dir", "name", "progress") and value != default:
            flags += format_flag(name, value)
    return flags


def train_command(config: TrainConfig) -> str:
    """``mlp-torch train …`` for ``config``, quoted for a POSIX shell."""
    import shlex

    return shlex.join(["mlp-torch", "train", *train_flags(config)])
