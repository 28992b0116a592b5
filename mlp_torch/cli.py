"""The ``mlp-torch`` command: one subcommand per module in :mod:`mlp_torch.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Heavy imports happen inside ``run`` so that ``mlp-torch --help`` stays quick.

Expected failures (:class:`mlp_torch.errors.MlpTorchError`) and bad flags become one line on
stderr and their exit code (2 for bad input); no traceback is printed for them. A Ctrl-C that
reaches the top (before training installs its own handler, or a second one during training)
exits 130 with one line. Anything else is a bug and keeps its traceback.

A reader that goes away (``mlp-torch eval RUN | head -3``) ends the command quietly with exit code
141 (128 + SIGPIPE, what a shell reports for a program the broken pipe stopped); ``train`` keeps
training instead and writes all its files, only its console lines are lost (see
:func:`mlp_torch.utils.print_line`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import MlpTorchError
from .utils import stdout_to_devnull

# Order here is the order in `mlp-torch --help`. A module is listed once it exists.
COMMANDS: tuple[str, ...] = ("train", "eval", "predict", "compare", "gradcheck", "data", "bench")


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd program
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE


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


def typed_options(argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv`` (a command line :func:`build_parser` accepts).

    Told apart from defaults by argparse itself, not by comparing values with them (which would
    miss ``--epochs 30`` typed where 30 is the default): a fresh parser whose every default is
    ``argparse.SUPPRESS`` parses ``argv`` again, so only what was typed lands in its namespace.
    Abbreviations (``--epoch 4``) and ``--flag=value`` count as argparse counts them.
    """
    parser = build_parser()
    pending = [parser]
    while pending:
        p = pending.pop()
        p._defaults.clear()  # set_defaults(...) values
        for action in p._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return set(vars(parser.parse_args(argv))) - {"command"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = argv  # for commands that must know what was typed (train --resume)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader gone by now is a broken pipe here
        return code
    except BrokenPipeError:
        stdout_to_devnull()  # so that the flush at exit does not fail a second time
        return BROKEN_PIPE_EXIT
    except MlpTorchError as err:
        print(f"mlp-torch {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        # Checkpoints and caches are written atomically, so stopping anywhere leaves no half file.
        print(f"\nmlp-torch {args.command}: aborted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
