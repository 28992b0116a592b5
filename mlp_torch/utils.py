"""Small helpers shared by every layer: config fields that are also flags, choosing the device once,
seeding once, writing files whole, printing to a reader that may go away."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"float32": torch.float32, "float64": torch.float64}  # --dtype of train and compare


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | None = None,
    choices: Sequence[str] | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A config dataclass field that is also a command-line flag (``batch_size`` -> ``--batch-size``).

    The default is written here and nowhere else: the command line takes it, and its help text,
    choices and metavar, from the field (:mod:`mlp_torch.commands._flags`), so a config built in
    Python and one built from flags cannot drift apart.

    Args:
        default: the field's default (or give ``default_factory``).
        help: the flag's help text; ``--help`` adds the default unless the text says it.
        default_factory: makes the default, for lists and values read from the environment.
        choices: the allowed values.
        metavar: the value's name in ``--help``.
        parse: turns the flag's text into the value, where the annotation alone cannot
            (``--classes cat,dog`` -> ``["cat", "dog"]``).
    """
    flag = {"help": help, "choices": choices, "metavar": metavar, "parse": parse}
    metadata = {key: value for key, value in flag.items() if value is not None}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


SEED_LIMIT = 2**64  # torch.manual_seed takes a 64-bit seed


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``auto`` to cuda, then mps, then cpu; refuse a device that is not there.

    PyTorch has one CPU device: ``cpu:N`` is accepted and means ``cpu`` (``torch.load`` cannot map
    tensors to ``cpu:1``, so the index must not travel any further).

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    elif device.type == "cpu":
        return torch.device("cpu")
    elif device.type not in ("cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return device


def check_seed(seed: object, flag: str = "--seed") -> None:
    """Raise :class:`UsageError` unless ``seed`` is an integer that PyTorch's generators accept.

    Args:
        seed: the value to check.
        flag: how the message names it.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{flag} must be an integer from 0 to 2**64 - 1, got {seed!r}")


def set_seed(seed: int) -> None:
    """Seed Python's and PyTorch's generators (CPU and every CUDA device) in one place.

    Raises:
        UsageError: ``seed`` is negative or does not fit in 64 bits.
    """
    check_seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def launched_rank() -> int:
    """This process's rank among those ``torchrun`` started (its ``RANK``); 0 when it runs alone.

    With several processes, rank 0 speaks for the run: the others keep quiet on the console. A
    ``RANK`` that is no rank of ``WORLD_SIZE`` also gives 0: that process must say what is wrong.
    """
    rank, size = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return int(rank) if rank.isdigit() and size.isdigit() and int(rank) < int(size) else 0


def print_line(text: str) -> None:
    """Print ``text`` to standard output, flushed, and carry on if nobody reads it any more.

    When the reader has gone (``mlp-torch train | head -1``: a broken pipe; a closed terminal after
    SIGHUP: an I/O error), the lost line is dropped and standard output is pointed at
    :data:`os.devnull`, as command-line tools do, so that the work (training, writing its files)
    finishes and the exit flush raises nothing.
    """
    try:
        print(text, flush=True)
    except OSError:  # BrokenPipeError, or EIO from a terminal that hung up
        stdout_to_devnull()


def stdout_to_devnull() -> None:
    """Send whatever standard output still holds, and everything after, to :data:`os.devnull`."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture): nothing to redirect
        pass
    finally:
        os.close(devnull)


TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write ``path`` all or nothing: into a temporary file beside it, flushed, fsynced, renamed over it.

    An exception (or Ctrl-C) while writing leaves any previous ``path`` untouched and removes the
    temporary file. ``mkstemp`` creates it private; ``mode`` sets the final permissions.

    Args:
        path: the destination; its folder must exist.
        mode: permission bits of the finished file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def leftover_temp_files(folder: Path) -> list[Path]:
    """Temporary files of :func:`atomic_write` in ``folder`` (``.<name>.<random>.tmp``).

    A process killed while saving (SIGKILL, a power cut) leaves one behind; while no writer is
    running in ``folder`` they are garbage.
    """
    return sorted(p for p in Path(folder).glob(f".*{TEMP_SUFFIX}") if p.is_file())


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
