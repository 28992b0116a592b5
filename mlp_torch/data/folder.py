"""Image folders: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``, any size or mode, decoded once.

Every image is converted to RGB (after applying its EXIF orientation, for phone photos) and resized
to ``size x size``. Decoding runs in a thread pool (Pillow releases the GIL while it decodes); this
happens once per dataset, the result is cached as a uint8 tensor by :mod:`mlp_torch.data.cache`.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

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


def list_images(root: Path, classes: list[str]) -> dict[str, list[tuple[str, int, int, int]]]:
    """Every image file per split as ``(path, label, size, mtime_ns)``, by class order then file name.

    Args:
        root: the image folder.
        classes: class folder names, labelled 0..K-1 in this order.
    """
    _check_root(root)
    found: dict[str, list[tuple[str, int, int, int]]] = {}
    for split in SPLITS:
        found[split] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            if not folder.is_dir():
                present = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
                raise DataError(
                    f"class folder {folder} is missing; classes found in {root / split}: {', '.join(present) or 'none'}"
                )
            files = []
            for entry in os.scandir(folder):
                if (
                    not entry.name.startswith(".")
                    and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
                    and entry.is_file()
                ):
                    st = entry.stat()
                    files.append((entry.path, label, st.st_size, st.st_mtime_ns))
            if not files:
                raise DataError(f"{folder} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            found[split] += sorted(files)
    return found


def source_fingerprint(images: dict[str, list[tuple[str, int, int, int]]]) -> list:
    """Each file's name, label, size and mtime: an added, removed or rewritten image changes the cache key."""
    return [
        (split, os.path.basename(path), label, size, mtime)
        for split, items in images.items()
        for path, label, size, mtime in items
    ]


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({err}); delete or replace it") from None


def load_folder(images: dict[str, list[tuple[str, int, int, int]]], size: int):
    """Decode every listed image into ``(train_x, train_y, test_x, test_y)``: uint8 (N, 3, S, S), int64 (N,).

    Args:
        images: from :func:`list_images`.
        size: the side every image is resized to.
    """
    out = []
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for split in SPLITS:
            pixels = list(pool.map(lambda item: _decode(item[0], size), images[split]))
            x = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous()  # N,H,W,3 -> N,3,H,W
            y = torch.tensor([item[1] for item in images[split]], dtype=torch.int64)
            out += [x, y]
    return tuple(out)


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
    pixels = np.array(_decode(str(path), size))  # a writable copy: torch warns on read-only arrays
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # H,W,3 -> 3,H,W
