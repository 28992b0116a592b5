"""Errors that the command line turns into one clear line on stderr instead of a traceback.

Library code raises these (or plain ``ValueError``/``TypeError`` for programming errors in the
tensor API); ``mlp_torch.cli`` catches :class:`MlpTorchError` and exits with its ``exit_code``.
"""

from __future__ import annotations


class MlpTorchError(Exception):
    """Base class: an expected failure with a message written for the user."""

    exit_code: int = 1


class UsageError(MlpTorchError, ValueError):
    """Bad input from the user (a flag, a path, a name): exit code 2, like argparse."""

    exit_code = 2


class DataError(MlpTorchError):
    """A dataset that is missing, empty, unreadable or inconsistent (exit code 2: fix the input)."""

    exit_code = 2


class DownloadError(DataError):
    """An archive could not be fetched or verified; the message says what to place where by hand."""

    exit_code = 1


class CheckpointError(MlpTorchError):
    """A file that is not a readable mlp_torch checkpoint (truncated, foreign or newer format)."""

    exit_code = 2


class DivergenceError(MlpTorchError):
    """Training produced a non-finite loss or gradient."""

    exit_code = 1


class WriteError(MlpTorchError):
    """A file of a run could not be written (full disk, file-size limit, permissions): the message names it."""

    exit_code = 1


class RunInUseError(MlpTorchError):
    """Another process is training the run directory that was asked for."""

    exit_code = 1


class LostContactError(MlpTorchError):
    """One of the processes training a run together (``torchrun``) stopped answering: it died, hung or was stopped.

    Every other process says so itself (rank 0 speaks for the run on every other error).
    """

    exit_code = 1
