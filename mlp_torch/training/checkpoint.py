"""Checkpoints that can neither run code nor be half-written.

* **Safe to load.** A checkpoint holds only tensors and plain Python types (dicts, lists, str,
  int, float, bool, None) and is read with ``torch.load(weights_only=True)``: opening a file
  from a stranger cannot execute anything.
* **Atomic.** It is written to a temporary file in the same folder, flushed and fsynced, then
  renamed over the old one; a crash mid-save leaves the previous checkpoint intact.
* **Self-describing.** ``format``/``version`` tell an mlp_torch checkpoint from any other file;
  it carries the model config, class names, image size and normalisation, so ``predict`` needs
  nothing else.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

FORMAT = "mlp_torch.checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model_state", "classes", "image_size", "standardizer")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and plain types) to ``path`` atomically.

    Args:
        path: the destination; its folder must exist.
        payload: the checkpoint contents; ``format`` and ``version`` are added.
    """
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Args:
        path: a ``.pt`` file.
        map_location: where tensors are loaded.

    Raises:
        CheckpointError: missing, truncated, foreign or newer-format file, with what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; pass a run directory or a checkpoint such as RUN_DIR/checkpoints/best.pt")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable mlp_torch checkpoint (truncated or not a checkpoint: {first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mlp_torch checkpoint (no '{FORMAT}' marker); was it written by another program?")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this mlp_torch reads ({VERSION}); upgrade mlp_torch"
        )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged or was not written by mlp-torch train")
    return data


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
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
