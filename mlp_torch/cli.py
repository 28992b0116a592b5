"""The ``mlp-torch`` command: one subcommand per module in :mod:`mlp_torch.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Heavy imports happen inside ``run`` so that ``mlp-torch --help`` stays quick.

Expected failures (:class:`mlp_torch.errors.MlpTorchError`) become one line on stderr and
their exit code (2 for bad input, as argparse does); no traceback is printed for them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__
from .errors import MlpTorchError

# Order here is the order in `mlp-torch --help`. A module is listed once it exists.
COMMANDS: tuple[str, ...] = ("train", "eval", "predict", "compare", "gradcheck", "data")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default in --help and keep the descriptions' line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlp-torch",
        description="Linear softmax classifiers and MLPs with hand-written gradients, checked against autograd.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlp-torch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mlp_torch.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MlpTorchError as err:
        print(f"mlp-torch {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
