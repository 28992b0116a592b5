"""Image folders: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, any size or mode, decoded once.

Every image is converted to RGB (after applying its EXIF orientation, for phone photos) and resized
to ``size x size``; 16-bit greyscale (PNG ``I;16``, ``I``) is scaled to 8 bits, not clipped. Decoding
runs in a thread pool (Pillow releases the GIL while it decodes); this happens once per dataset, the
result is cached as a uint8 tensor by :mod:`mlp_torch.data.cache`.

Files that are not images (by extension), unreadable files and dangling links are skipped and
counted (:class:`FolderListing`); a link loop, an unreadable class folder, a damaged image or a
decompression bomb (more pixels than Pillow's ``MAX_IMAGE_PIXELS``) is a :class:`DataError`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .splits import RawSplits, Split

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
SPLITS = ("train", "test")
LAYOUT = "expected DATA_ROOT/train/<class>/<image> and DATA_ROOT/test/<class>/<image>"


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; {LAYOUT}")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"{root} has no {split}/ folder; {LAYOUT}")


def folder_classes(root: Path) -> list[str]:
    """The class folders under ``root/train``, sorted by name (the default ``--classes`` for folders).

    Args:
        root: the image folder (``--data-root``).
    """
    _check_root(root)
    names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"{root / 'train'} holds no class folders; {LAYOUT}")
    return names


SKIP_REASONS = ("not_images", "unreadable", "dangling_links")


@dataclass
class FolderListing:
    """The images of each split as ``(path, label, size, mtime_ns)``, and the files passed over."""

    images: dict[str, list[tuple[str, int, int, int]]]
    skipped: dict[str, list[str]] = field(default_factory=lambda: {reason: [] for reason in SKIP_REASONS})

    def skipped_counts(self) -> dict[str, int]:
        return {reason: len(paths) for reason, paths in self.skipped.items()}

    def skipped_note(self) -> str | None:
        """One line such as ``skipped 3 file(s): 2 not images, 1 dangling links (e.g. DIR/train/cat/a.jpg)``."""
        total = sum(self.skipped_counts().values())
        if not total:
            return None
        parts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in self.skipped_counts().items() if n)
        example = next(paths[0] for paths in self.skipped.values() if paths)
        return f"skipped {total} file(s): {parts} (e.g. {example})"


def _scan(folder: Path) -> list[os.DirEntry]:
    if not folder.is_dir():
        if folder.is_symlink():
            raise DataError(f"class folder {folder} is a symbolic link that leads nowhere (dangling or a loop)")
        present = sorted(p.name for p in folder.parent.iterdir() if p.is_dir())
        raise DataError(
            f"class folder {folder} is missing; classes found in {folder.parent}: {', '.join(present) or 'none'}"
        )
    try:
        return sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as err:
        raise DataError(f"cannot read class folder {folder} ({err.strerror or err}); check its permissions") from None


def list_images(root: Path, classes: list[str]) -> FolderListing:
    """Every image file per split, by class order then file name, and what was skipped.

    Args:
        root: the image folder.
        classes: class folder names, labelled 0..K-1 in this order.

    Raises:
        DataError: a missing or unreadable class folder, a link loop, a class without images.
    """
    _check_root(root)
    listing = FolderListing({split: [] for split in SPLITS})
    for split in SPLITS:
        for label, name in enumerate(classes):
            folder = root / split / name
            files = []
            for entry in _scan(folder):
                if entry.name.startswith("."):
                    continue
                try:
                    is_file = entry.is_file()  # follows links
                except OSError as err:  # ELOOP: a link that points, in the end, at itself
                    raise DataError(f"{entry.path} is a symbolic-link loop ({err.strerror}); remove it") from None
                if not is_file:
                    if entry.is_symlink() and not entry.is_dir():
                        listing.skipped["dangling_links"].append(entry.path)
                    continue  # sub-folders are not part of the layout
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                    listing.skipped["not_images"].append(entry.path)
                    continue
                try:
                    st = entry.stat()
                    readable = os.access(entry.path, os.R_OK)
                except OSError:
                    readable = False
                if not readable:
                    listing.skipped["unreadable"].append(entry.path)
                    continue
                files.append((entry.path, label, st.st_size, st.st_mtime_ns))
            if not files:
                raise DataError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            listing.images[split] += files
    return listing


def source_fingerprint(images: dict[str, list[tuple[str, int, int, int]]]) -> list:
    """Each file's name, label, size and mtime: an added, removed or rewritten image changes the cache key."""
    return [
        (split, os.path.basename(path), label, size, mtime)
        for split, items in images.items()
        for path, label, size, mtime in items
    ]


@contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """Make Pillow's DecompressionBombWarning (more than MAX_IMAGE_PIXELS) an exception, for the worker threads too."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in SIXTEEN_BIT_MODES:  # 0..65535 grey: Pillow's convert would clip it at 255
                grey = np.asarray(img).astype(np.float64).clip(0, 65535) / 257  # 65535 / 257 = 255
                img = Image.fromarray(grey.round().astype(np.uint8))
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"image {path} has more pixels than Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
            "(a decompression bomb?); delete or shrink it"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({err}); delete or replace it") from None


def load_folder(images: dict[str, list[tuple[str, int, int, int]]], size: int) -> RawSplits:
    """Decode every listed image: the train and test splits, uint8 images (N, 3, S, S) and int64 labels (N,).

    Args:
        images: from :func:`list_images`.
        size: the side every image is resized to.
    """
    decoded = {}
    workers = min(8, os.cpu_count() or 1)
    with _bombs_are_errors(), ThreadPoolExecutor(max_workers=workers) as pool:
        for split in SPLITS:
            pixels = list(pool.map(lambda item: _decode(item[0], size), images[split]))
            x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()  # N,H,W,3 -> N,3,H,W
            y = torch.tensor([item[1] for item in images[split]], dtype=torch.int64)
            decoded[split] = Split(x, y)
    return RawSplits(decoded["train"], decoded["test"])


def read_image(path: str | Path, size: int) -> torch.Tensor:
    """One image file as uint8 ``(3, size, size)``, decoded exactly as the folder dataset decodes it.

    Args:
        path: any image Pillow reads (converted to RGB, EXIF-rotated, resized bilinearly).
        size: the side of the square output.

    Raises:
        DataError: the file is missing or not a readable image.
    """
    if not Path(path).is_file():
        raise DataError(f"image {path} does not exist")
    with _bombs_are_errors():
        pixels = np.array(_decode(str(path), size))  # a writable copy: torch warns on read-only arrays
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # H,W,3 -> 3,H,W
