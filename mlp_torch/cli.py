"""The ``mlp-torch`` command: one subcommand per module in :mod:`mlp_torch.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Heavy imports happen inside ``run`` so that ``mlp-torch --help`` stays quick.

Expected failures (:class:`mlp_torch.errors.MlpTorchError`) and bad flags become one line on
stderr and their exit code (2 for bad input); no traceback is printed for them. A Ctrl-C that
reaches the top (before training installs its own handler, or a second one during training)
exits 130 with one line. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import MlpTorchError

# Order here is the order in `mlp-torch --help`. A module is listed once it exists.
COMMANDS: tuple[str, ...] = ("train", "eval", "predict", "compare", "gradcheck", "data", "bench")


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd program


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default in --help and keep the descriptions' line breaks.

    A default of ``None`` ("not given") is left out: the help text says what happens then.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (what is wrong, what is allowed), exit 2.

    argparse's own messages already name the allowed choices; the full usage block it would print
    first buries them, and ``--help`` is one flag away. Subparsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    except KeyboardInterrupt:
        # Checkpoints and caches are written atomically, so stopping anywhere leaves no half file.
        print(f"\nmlp-torch {args.command}: aborted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
