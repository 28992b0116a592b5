"""The model and data flags shared by ``train``, ``compare``, ``data`` and ``bench``."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ..data.options import BALANCE_CHOICES, DATASETS, ENV_OVERRIDES, DataOptions, _env_default, parse_classes
from ..models import ACTIVATIONS, BACKENDS, MODEL_KINDS


def add_model_arguments(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    """Add ``--model``, ``--hidden``, ``--activation`` (and ``--backend``) in a group "model".

    Args:
        parser: the subcommand's parser.
        backend: also add ``--backend`` (``compare`` runs all three and leaves it out).
    """
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        choices=MODEL_KINDS,
        default="mlp",
        help="softmax: linear softmax classifier; mlp: multi-layer perceptron; "
        "perceptron: Rosenblatt's perceptron (binary for 2 classes, else multi-class)",
    )
    group.add_argument(
        "--hidden",
        type=int,
        nargs="*",
        default=[512],
        metavar="N",
        help="hidden layer sizes of the mlp, any depth (none = linear softmax)",
    )
    group.add_argument(
        "--activation", choices=ACTIVATIONS, default="sigmoid", help="hidden-layer non-linearity of the mlp"
    )
    if backend:
        group.add_argument(
            "--backend",
            choices=BACKENDS,
            default="builtin",
            help="gradient path: builtin = PyTorch ops + autograd, custom = our autograd Functions, "
            "manual = hand-written backward, no autograd",
        )


def model_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """``build_model`` keyword arguments (all but ``in_features``/``num_classes``) from parsed flags."""
    kwargs: dict[str, Any] = {"kind": args.model, "hidden": list(args.hidden), "activation": args.activation}
    if hasattr(args, "backend"):
        kwargs["backend"] = args.backend
    return kwargs


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data flags to a command's parser (``--seed`` is left to the command).

    Args:
        parser: the subcommand's parser; the flags go into an argument group "data".
    """
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        choices=DATASETS,
        default="cifar",
        help="cifar: CIFAR-10/100 classes by name; folder: DATA_ROOT/{train,test}/<class>/*; "
        "synthetic: seeded CIFAR-shaped data, no files needed",
    )
    group.add_argument(
        "--data-root",
        type=Path,
        default=Path("data"),
        help="where the CIFAR archives live (downloaded when missing) or the image folder; ignored by synthetic",
    )
    group.add_argument(
        "--classes",
        type=parse_classes,
        default=None,
        help="comma-separated class names, labelled 0..K-1 in this order "
        "(default: cat,dog,bear for cifar, every class folder for folder, "
        "class0,class1,class2 for synthetic)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of each class of the official train split held out for validation",
    )
    group.add_argument("--image-size", type=int, default=32, help="images are resized to SIZE x SIZE pixels")
    group.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where decoded uint8 tensors are cached (default: $XDG_CACHE_HOME/mlp_torch or ~/.cache/mlp_torch)",
    )
    group.add_argument(
        "--no-cache", dest="cache", action="store_false", help="decode the images afresh and write no cache"
    )
    group.add_argument(
        "--balance",
        choices=BALANCE_CHOICES,
        default="none",
        help="for imbalanced classes: weights = inverse-frequency class weights in the loss, "
        "sample = draw training batches class-balanced",
    )
    group.add_argument(
        "--augment-flip",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random horizontal flips of training images",
    )
    group.add_argument(
        "--augment-crop",
        type=int,
        default=0,
        metavar="PAD",
        help="random crops of training images zero-padded by PAD pixels (0 = off)",
    )
    for key, env in ENV_OVERRIDES.items():
        default = _env_default(key)
        what = "URL" if key.endswith("url") else "md5 sum"
        archive = "CIFAR-10" if key.startswith("cifar10_") else "CIFAR-100"
        group.add_argument(
            f"--{key.replace('_', '-')}",
            default=default,
            metavar=what.split()[0].upper(),
            help=f"{archive} archive {what} (environment: {env})",
        )


def data_options_from_args(args: argparse.Namespace) -> DataOptions:
    """Build :class:`DataOptions` from a namespace parsed with :func:`add_data_arguments`.

    Args:
        args: the parsed arguments; every :class:`DataOptions` field found in them is used
            (``args.seed`` seeds the validation split when the command has ``--seed``).
    """
    present = {f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions) if hasattr(args, f.name)}
    return DataOptions(**present)
