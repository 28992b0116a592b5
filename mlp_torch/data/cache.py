"""Decoded datasets cached on disk as uint8 tensors, keyed by everything that decides their content.

The key hashes the source kind, the resolved root, the classes, the image size and a fingerprint of
the source (the archive md5 and file stats for CIFAR; every file's name, size and mtime for image
folders), so a changed source gets a new key. A file that cannot be read back, or that carries a
different key, is rebuilt rather than trusted. Writes go to a temporary file and are renamed into
place, so a crash never leaves half a cache.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import torch

from ..utils import atomic_write
from .splits import RawSplits, Split

CACHE_FORMAT = 1


def cache_key(kind: str, root: Path | None, classes: list[str], image_size: int, fingerprint: object) -> str:
    """A hex digest of everything that decides the decoded tensors.

    Args:
        kind: ``cifar`` or ``folder``.
        root: the data root (resolved to an absolute path here).
        classes: class names in label order.
        image_size: the side images are resized to.
        fingerprint: anything JSON-serialisable that changes when the source files change.
    """
    blob = json.dumps(
        [CACHE_FORMAT, kind, str(root.resolve()) if root else None, classes, image_size, fingerprint],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


MAX_LABEL = 48  # characters of class names in a cache file name; a file name may have 255 bytes


def cache_file(cache_dir: Path, kind: str, classes: list[str], image_size: int, key: str) -> Path:
    """``cache_dir/folder-cat-dog-32px-<key>.pt``: class names while they are few and short, else a count.

    The key (which hashes the class names among everything else) is what tells files apart; the
    names are for people, so long or odd folder names never make the file name too long (or a path).
    """
    label = "-".join(classes)
    if len(classes) > 4 or len(label) > MAX_LABEL or not re.fullmatch(r"[\w-]+", label):
        label = f"{len(classes)}classes"
    return cache_dir / f"{kind}-{label}-{image_size}px-{key[:16]}.pt"


def load_cached(path: Path, key: str) -> RawSplits | None:
    """The cached train and test splits, or ``None`` if absent, unreadable or stale.

    Args:
        path: from :func:`cache_file`.
        key: from :func:`cache_key`; the file must carry the same one.
    """
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            return None
        splits = RawSplits(Split(blob["train_x"], blob["train_y"]), Split(blob["test_x"], blob["test_y"]))
    except Exception:  # noqa: BLE001 - truncated, foreign or corrupt: rebuild it
        return None
    return splits if _well_formed(splits.train) and _well_formed(splits.test) else None


def _well_formed(split: Split) -> bool:
    """uint8 images (N, C, H, W) and as many int64 labels."""
    x, y = split.x, split.y
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        return False
    return x.dtype == torch.uint8 and x.dim() == 4 and y.dtype == torch.int64 and y.dim() == 1 and len(x) == len(y)


def save_cached(path: Path, key: str, splits: RawSplits) -> bool:
    """Write the splits atomically; warn and go on (returning False) if that fails (read-only, full disk...).

    Args:
        path: from :func:`cache_file`.
        key: from :func:`cache_key`.
        splits: the decoded train and test splits.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode=0o644) as f:  # readable like the public dataset it decodes
            train, test = splits.train, splits.test
            torch.save({"key": key, "train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}, f)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk or a file-size limit as RuntimeError
        warnings.warn(
            f"could not write the data cache {path} ({err}); pass --cache-dir DIR to put it elsewhere", stacklevel=2
        )
        return False
    return True
