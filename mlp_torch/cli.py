"""The ``mlp-torch`` command: one subcommand per module in :mod:`mlp_torch.commands`.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func=run`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
Commands import the heavy parts of the package (models, data, training) inside ``run``.

Expected failures (:class:`mlp_torch.errors.MlpTorchError`) and bad flags become one line on
stderr and their exit code (2 for bad input); no traceback is printed for them. A Ctrl-C that
reaches the top (before training installs its own handler, or a second one during training)
exits 130 with one line. Anything else is a bug and keeps its traceback.

Under ``torchrun`` rank 0 speaks for the run: the other processes print an error only when it is
theirs alone, that they lost contact with the others (:class:`mlp_torch.errors.LostContactError`).

A reader that goes away (``mlp-torch eval RUN | head -3``) ends the command quietly with exit code
141 (128 + SIGPIPE, what a shell reports for a program the broken pipe stopped); ``train`` keeps
training instead and writes all its files, only its console lines are lost (see
:func:`mlp_torch.utils.print_line`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__
from .commands import _common, bench, compare, data, gradcheck, plot, predict, sweep, train
from .commands import eval as eval_command  # `eval` alone would hide the builtin
from .commands._common import BROKEN_PIPE_EXIT, INTERRUPTED_EXIT, ArgumentParser, HelpFormatter
from .errors import LostContactError, MlpTorchError
from .utils import launched_rank, stdout_to_devnull

# The order of `mlp-torch --help`.
COMMANDS = (train, sweep, eval_command, predict, compare, gradcheck, data, plot, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="mlp-torch",
        description="Linear softmax classifiers and MLPs with hand-written gradients, checked against autograd.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mlp-torch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def typed_options(argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv`` (``["train", "--epochs", "30"]`` -> ``{"epochs"}``).

    See :func:`mlp_torch.commands._common.typed_options`; a fresh parser is built for it.
    """
    return _common.typed_options(build_parser(), argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.typed = typed_options(argv)  # what was typed, not defaulted (train --resume must tell them apart)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader gone by now is a broken pipe here
        return code
    except BrokenPipeError:
        stdout_to_devnull()  # so that the flush at exit does not fail a second time
        return BROKEN_PIPE_EXIT
    except MlpTorchError as err:
        if launched_rank() == 0 or isinstance(err, LostContactError):
            print(f"mlp-torch {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        # Checkpoints and caches are written atomically, so stopping anywhere leaves no half file.
        if launched_rank() == 0:
            print(f"\nmlp-torch {args.command}: aborted", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
