"""``--json PATH``, shared by every command that reports numbers: the same numbers as JSON.

``PATH`` is checked as the command line is parsed, so a folder that does not exist (or a folder
given where a file belongs) is one line and exit 2 before any data are loaded. ``--json -``
writes the JSON to standard output and moves the human-readable report to standard error, so
that ``mlp-torch eval RUN --json - | jq .accuracy`` reads clean JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from ..errors import WriteError

STDOUT = "-"


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--json PATH`` to a command's parser.

    Args:
        parser: the subcommand's parser.
        what: what the JSON holds, for the help text.
    """
    parser.add_argument(
        "--json",
        type=json_path,
        default=None,
        metavar="PATH",
        help=f"also write {what} to PATH, whose folder must exist (- = standard output; the report then goes to "
        "standard error)",
    )


def json_path(text: str) -> Path:
    """The ``type`` of ``--json``: refuse at once a path that cannot become a file."""
    if text == STDOUT:
        return Path(STDOUT)
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file in it, e.g. {path / 'out.json'}")
    folder = path.parent
    if not folder.exists():
        raise argparse.ArgumentTypeError(f"the folder {folder} of {text} does not exist; create it first")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{folder} in {text} is a file, not a folder")
    return path


def report_stream(path: Path | None) -> TextIO:
    """Where the human-readable report goes: standard error when the JSON takes standard output."""
    return sys.stderr if path is not None and str(path) == STDOUT else sys.stdout


def write_json(path: Path | None, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path`` (``-``: standard output); nothing if ``path`` is None.

    Raises:
        WriteError: the file could not be written (a full disk, permissions).
    """
    if path is None:
        return
    text = json.dumps(value, indent=2) + "\n"
    if str(path) == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        path.write_text(text)
    except OSError as err:
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None
