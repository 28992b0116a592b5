"""What every command shares: the parser classes, the exit codes, and which flags were typed.

Commands import these from here, never from :mod:`mlp_torch.cli` (which imports the commands).
"""

from __future__ import annotations

import argparse
import re
import signal
from collections.abc import Sequence
from typing import NoReturn

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd program
BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE


def signal_exit(name: str | None) -> int:
    """The exit code of a run a signal stopped: 128 + its number, as a shell reports it (SIGTERM: 143);
    :data:`INTERRUPTED_EXIT` for a stop no signal asked for."""
    return 128 + signal.Signals[name].value if name else INTERRUPTED_EXIT


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every default in --help and keep the descriptions' line breaks.

    A default of ``None`` or ``""`` ("not given") is left out, and so is one the help text already
    states: the help says what happens then.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == "" or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (what is wrong, what is allowed), exit 2.

    argparse's own messages already name the allowed choices; the full usage block it would print
    first buries them, and ``--help`` is one flag away. Subparsers inherit this class.
    """

    def error(self, message: str) -> NoReturn:
        # argparse takes "-0.5,1.2" for an unknown option: then a value was missing, or was left over
        if re.search(r"arguments are required: .*X,Y|unrecognized arguments: (.* )?-\.?\d", message):
            message += "; a value that begins with '-', such as the point -0.5,1.2, goes after --"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def typed_options(fresh_parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option typed in ``argv``, a command line ``fresh_parser`` accepts.

    Told apart from defaults by argparse itself, not by comparing values with them (which would
    miss ``--epochs 30`` typed where 30 is the default): every default of ``fresh_parser`` (and of
    its subparsers) becomes ``argparse.SUPPRESS`` and ``argv`` is parsed again, so only what was
    typed lands in the namespace. Abbreviations (``--epoch 4``) and ``--flag=value`` count as
    argparse counts them.

    Args:
        fresh_parser: a parser built for this call alone: its defaults are overwritten.
        argv: the command line, without the program name.
    """
    pending = [fresh_parser]
    while pending:
        p = pending.pop()
        p._defaults.clear()  # set_defaults(...) values
        for action in p._actions:
            action.default = argparse.SUPPRESS
            if isinstance(action, argparse._SubParsersAction):
                pending.extend(action.choices.values())
    return set(vars(fresh_parser.parse_args(argv))) - {"command"}
