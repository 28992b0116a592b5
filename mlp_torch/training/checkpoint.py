"""Checkpoints that can neither run code nor be half-written.

* **Safe to load.** A checkpoint holds only tensors and plain Python types (dicts, lists, str,
  int, float, bool, None) and is read with ``torch.load(weights_only=True)``: opening a file
  from a stranger cannot execute anything.
* **Atomic.** It is serialised in memory, written to a temporary file in the same folder, flushed
  and fsynced, then renamed over the old one; a crash or a full disk mid-save leaves the previous
  checkpoint intact.
* **Self-describing.** ``format``/``version`` tell an mlp_torch checkpoint from any other file;
  it carries the model config, class names, image size and normalisation, so ``predict`` needs
  nothing else.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..utils import atomic_write

FORMAT = "mlp_torch.checkpoint"
VERSION = 1
REQUIRED = ("model_config", "model_state", "classes", "image_size", "standardizer")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (tensors and plain types) to ``path`` atomically.

    Args:
        path: the destination; its folder must exist.
        payload: the checkpoint contents; ``format`` and ``version`` are added.

    Raises:
        TypeError: ``payload`` holds something other than tensors and plain types (a bug in the
            caller: ``weights_only=True`` would refuse to load it).
        OSError: the file could not be written (full disk, file-size limit, permissions), with
            the system's reason; any previous ``path`` is intact.
    """
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
    _check_plain(data, "checkpoint")  # before touching the disk: never write a file that cannot be loaded
    # In memory first: torch.save writing to a full disk raises a RuntimeError that does not say why
    # ("unexpected pos 704 vs 598"); a plain write raises OSError with the reason (ENOSPC, EFBIG).
    buffer = io.BytesIO()
    torch.save(data, buffer)
    with atomic_write(path, mode=0o600) as f:  # private, as mkstemp made checkpoints before
        f.write(buffer.getbuffer())


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
        raise CheckpointError(
            f"{path} is not a file; pass a run directory or a checkpoint such as RUN_DIR/checkpoints/best.pt"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # the weights-only unpickler refused to import something
            raise CheckpointError(
                f"{path} holds Python objects other than tensors and plain types, which a checkpoint "
                "may not; it was refused without running anything, and mlp-torch train did not "
                "write it"
            ) from None
        raise CheckpointError(f"{path} is not a readable mlp_torch checkpoint: {_what_went_wrong(head, err)}") from None
    except Exception as err:  # torch.load on damaged bytes raises almost anything (KeyError, OSError, RuntimeError...)
        raise CheckpointError(f"{path} is not a readable mlp_torch checkpoint: {_what_went_wrong(head, err)}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an mlp_torch checkpoint (no '{FORMAT}' marker); was it written by another program?"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this mlp_torch reads ({VERSION}); "
            "upgrade mlp_torch"
        )
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged or was not written by mlp-torch train")
    return data


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: Any, where: str) -> None:
    """Raise ``TypeError`` naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, torch.Tensor) or isinstance(value, _PLAIN):
        return
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; use str or int")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}; a checkpoint holds only tensors and plain types")


def _what_went_wrong(head: bytes, err: Exception) -> str:
    """Why ``torch.load`` failed, judged from the file's first bytes."""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        return "it is truncated or damaged (an interrupted copy?); use another checkpoint, e.g. last.pt or best.pt"
    return f"it is not a PyTorch checkpoint file ({type(err).__name__})"
