"""The model flags shared by ``mlp-torch compare`` and ``mlp-torch train``."""

from __future__ import annotations

import argparse
from typing import Any

from .base import BACKENDS
from .mlp import ACTIVATIONS

MODEL_KINDS: tuple[str, ...] = ("softmax", "mlp", "perceptron")


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
