"""``mlp-torch plot activations --out FILE``: the lecture's activation-function slide, drawn by our own code."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import HelpFormatter

FIGURES = ("activations",)
FORMATS = ("png", "pdf", "svg")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw a figure of the lecture: the activation functions and their derivatives",
        description=(
            "activations: step, sigmoid, tanh and ReLU over a ∈ [−5, 5] (top row) and their derivatives\n"
            "(bottom row), computed with mlp_torch.functional's Functions and their backward, so each\n"
            "derivative drawn is the one the code trains with. Every run logs the same figure to\n"
            "TensorBoard (image activations). The format follows the file's extension: " + ", ".join(FORMATS) + "."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("figure", choices=FIGURES, help="which figure")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write it, e.g. act.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError, WriteError
    from ..training.figures import activation_figure

    out: Path = args.out
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"--out {out}: name a .png, .pdf or .svg file (the format follows the extension)")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    try:
        activation_figure().savefig(out, format=suffix)
    except OSError as err:
        raise WriteError(f"cannot write {out}: {err.strerror or err}") from None
    print(f"wrote {out}")
    return 0
