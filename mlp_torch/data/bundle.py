"""``load_data(opts) -> DataBundle``: pick the source, decode it once (or read the cache), split it.

The official train/test split is kept; validation is carved from train, per class (stratified),
with a seeded permutation, so every class keeps its share and a seed always gives the same split.
The split is cheap and is redone on every load, so it is not part of the cache key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from . import archive, cache, cifar, folder, planar, synthetic
from .loader import class_weights
from .options import DataOptions
from .splits import RawSplits, Split


@dataclass
class DataBundle:
    """What a run trains on: the three splits (CPU uint8 images or float32 points) and where they came from."""

    classes: list[str]
    image_size: int  # pixels a side; 0 for the 2-D datasets, whose samples are points, not images
    source: str  # human readable, e.g. "CIFAR-10 + CIFAR-100 from data/"
    train: Split
    val: Split
    test: Split
    cache_path: Path | None = None
    cache_hit: bool = False
    load_seconds: float = field(default=0.0, compare=False)
    skipped: dict[str, int] = field(default_factory=dict)  # image folders: files passed over, by reason

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_images(self) -> bool:
        """Images (N, 3, H, W), rather than the 2-D datasets' points (N, 2)."""
        return self.image_size > 0

    @property
    def in_features(self) -> int:
        """Inputs per sample: 3·H·W for images, 2 for points."""
        return 3 * self.image_size * self.image_size if self.has_images else math.prod(self.train.x.shape[1:])

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def counts(self) -> dict[str, dict[str, int]]:
        """Per split, per class: how many images (the ``splits`` of ``mlp-torch data --json``)."""
        return {name: dict(zip(self.classes, s.counts(self.num_classes))) for name, s in self.splits().items()}

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the class names and of every image and label of the three splits, in order.

        Content, not file names or dates: a copied or moved data folder keeps its digest; an image
        added, removed, replaced or relabelled changes it. (About 0.15 s for all of CIFAR-10.)
        """
        h = hashlib.sha256(json.dumps([self.classes, self.image_size]).encode())
        for split in self.splits().values():
            for t in (split.y, split.x):
                h.update(t.contiguous().numpy().data)
        return h.hexdigest()

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint records about its data, for :func:`describe_data_change` on resume."""
        return {"classes": list(self.classes), "counts": self.counts(), "digest": self.digest}


def describe_data_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints (:meth:`DataBundle.fingerprint`), in words; ``None`` if nothing does.

    Args:
        saved: the fingerprint stored in a checkpoint.
        now: the fingerprint of the data as they are now.
    """
    if saved.get("classes") != now["classes"]:
        return f"the classes were {', '.join(saved.get('classes') or [])} and are now {', '.join(now['classes'])}"
    if saved.get("counts") != now["counts"]:
        old = saved.get("counts") or {}
        changes = [
            f"{split} {name} {old.get(split, {}).get(name, 0)} → {n}"
            for split, per_class in now["counts"].items()
            for name, n in per_class.items()
            if old.get(split, {}).get(name, 0) != n
        ]
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        return f"the number of images changed ({', '.join(changes[:3])}{more})"
    if saved.get("digest") != now["digest"]:
        return "the image files changed (same classes and counts, different pixels or labels)"
    return None


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train_idx, val_idx)``: ``round(val_fraction * n_c)`` of each class go to validation.

    Args:
        y: int64 labels of the official train split.
        val_fraction: in [0, 1).
        seed: seeds the per-class permutations; the same seed gives the same split.
    """
    g = torch.Generator().manual_seed(seed)
    # A random order, then sorted by (label, position): each class's members in a seeded random order.
    # (A unique key instead of stable=True, which is far slower on CPU with several threads.)
    shuffled = torch.randperm(len(y), generator=g)
    grouped = shuffled[torch.argsort(y[shuffled] * len(y) + torch.arange(len(y)))]
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    n_val = torch.round(val_fraction * counts.double()).long()  # round half to even
    rank = torch.arange(len(y)) - starts.repeat_interleave(counts)  # position within its class
    to_val = rank < n_val.repeat_interleave(counts)
    return grouped[~to_val].sort().values, grouped[to_val].sort().values


@dataclass
class Loaded:
    """What a dataset's loader returns: its classes, where the images came from, the official splits."""

    classes: list[str]
    source: str  # human readable, e.g. "CIFAR-10 + CIFAR-100 from data/"
    splits: RawSplits
    cache_path: Path | None = None  # the cache file read or written, if any
    cache_hit: bool = False
    skipped: dict[str, int] = field(default_factory=dict)  # image folders: files passed over, by reason


def _decode_cached(
    opts: DataOptions,
    kind: str,
    root: Path,
    classes: list[str],
    source: str,
    fingerprint: object,
    decode: Callable[[], RawSplits],
) -> Loaded:
    """Run ``decode()`` unless the cache holds its result, and cache what it returns."""
    if not opts.cache:
        return Loaded(classes, source, decode())
    key = cache.cache_key(kind, root, classes, opts.image_size, fingerprint)
    path = cache.cache_file(opts.resolved_cache_dir, kind, classes, opts.image_size, key)
    cached = cache.load_cached(path, key)
    if cached is not None:
        return Loaded(classes, source, cached, path, cache_hit=True)
    splits = decode()
    return Loaded(classes, source, splits, path if cache.save_cached(path, key, splits) else None)


def _resize(split: Split, size: int) -> Split:
    x = split.x
    if x.shape[-1] == size and x.shape[-2] == size:
        return split
    resized = torch.nn.functional.interpolate(
        x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return Split(resized.round().clamp(0, 255).to(torch.uint8), split.y)


def _load_cifar(opts: DataOptions, allow_download: bool) -> Loaded:
    wanted = cifar.resolve_cifar_classes(opts.classes)
    classes = [name for name, _ in wanted]
    specs = cifar.archive_specs(opts)
    keys = [k for k in specs if any(archive == k for _, archive in wanted)]
    root = opts.data_root
    folders, failures = {}, []
    for k in keys:  # try every archive, so one message names everything to place by hand
        try:
            folders[k] = archive.ensure_extracted(specs[k], root, opts.download_timeout, allow_download)
        except DataError as err:
            failures.append(err)
    if failures:
        raise type(failures[0])(" — and: ".join(map(str, failures)))
    fingerprint = [cifar.source_fingerprint(specs[k], folders[k]) for k in keys]

    def decode() -> RawSplits:
        splits = cifar.load_cifar(opts, wanted, folders)
        return RawSplits(_resize(splits.train, opts.image_size), _resize(splits.test, opts.image_size))

    source = f"{' + '.join(specs[k].name for k in keys)} from {root}"
    return _decode_cached(opts, "cifar", root, classes, source, fingerprint, decode)


def _load_folder(opts: DataOptions, allow_download: bool) -> Loaded:
    root = opts.data_root
    classes = list(opts.classes) if opts.classes is not None else folder.folder_classes(root)
    listing = folder.list_images(root, classes)
    note = listing.skipped_note()
    if note:
        print(f"note: image folder {root}: {note}", file=sys.stderr)
    fingerprint = folder.source_fingerprint(listing.images)
    loaded = _decode_cached(
        opts,
        "folder",
        root,
        classes,
        f"image folder {root}",
        fingerprint,
        lambda: folder.load_folder(listing.images, opts.image_size),
    )
    loaded.skipped = listing.skipped_counts()
    return loaded


def _load_synthetic(opts: DataOptions, allow_download: bool) -> Loaded:
    classes = list(opts.classes) if opts.classes is not None else synthetic.synthetic_classes()
    if len(classes) < 2:
        raise DataError("synthetic data need at least 2 classes")
    splits = synthetic.make_synthetic(
        len(classes), opts.synthetic_train_per_class, opts.synthetic_test_per_class, opts.image_size, opts.resolved_seed
    )
    return Loaded(classes, f"synthetic (seed {opts.resolved_seed})", splits)


def _load_planar(opts: DataOptions, allow_download: bool) -> Loaded:
    classes = list(opts.classes) if opts.classes is not None else planar.planar_classes(opts.dataset, opts.arms)
    seed = opts.resolved_seed
    splits = planar.make_planar(opts.dataset, opts.samples, opts.noise, opts.arms, seed)
    arms = f"{opts.arms} arms, " if opts.dataset == "spiral" else ""
    source = f"2-D {opts.dataset} ({arms}{opts.samples} points, noise {opts.noise:g}, seed {seed})"
    return Loaded(classes, source, splits)


# One loader per --dataset: (options, whether it may download) -> the official splits.
LOADERS: dict[str, Callable[[DataOptions, bool], Loaded]] = {
    "cifar": _load_cifar,
    "folder": _load_folder,
    "synthetic": _load_synthetic,
    **{name: _load_planar for name in planar.PLANAR_DATASETS},
}


def load_data(opts: DataOptions, allow_download: bool = True) -> DataBundle:
    """Load the dataset ``opts`` describes: CPU uint8 splits (float32 points), validation carved from train.

    Args:
        opts: which dataset, classes, image size, cache and split.
        allow_download: ``False`` where the options came from a file (``eval``, ``--resume``):
            a CIFAR archive that is not in ``opts.data_root`` is an error saying where to place it.
    """
    start = time.perf_counter()
    loaded = LOADERS[opts.dataset](opts, allow_download)
    classes, source, train = loaded.classes, loaded.source, loaded.splits.train
    if len(train) == 0:
        raise DataError(f"{source} has no training images for classes {', '.join(classes)}")
    train_idx, val_idx = stratified_split(train.y, opts.val_fraction, opts.resolved_seed)
    left = torch.bincount(train.y[train_idx], minlength=len(classes)).tolist()
    empty = [name for name, n in zip(classes, left) if n == 0]
    if empty:
        total = torch.bincount(train.y, minlength=len(classes)).tolist()
        held_out = any(total[classes.index(name)] for name in empty)
        hint = f"; lower --val-fraction ({opts.val_fraction:g} now)" if held_out else ""
        raise DataError(f"{source}: no training images left for class(es) {', '.join(empty)}{hint}")
    if len(train_idx) < 2:
        raise DataError(f"{source} has {len(train_idx)} training image(s) after the split; training needs at least 2")
    return DataBundle(
        classes=classes,
        image_size=0 if opts.is_planar else opts.image_size,
        source=source,
        train=Split(train.x[train_idx], train.y[train_idx]),
        val=Split(train.x[val_idx], train.y[val_idx]),
        test=loaded.splits.test,
        cache_path=loaded.cache_path,
        cache_hit=loaded.cache_hit,
        load_seconds=time.perf_counter() - start,
        skipped=loaded.skipped,
    )


def balance_weights(opts: DataOptions, y: torch.Tensor, num_classes: int):
    """``(loss_weights, sample_weights)`` for ``opts.balance``: at most one is not ``None``.

    Args:
        opts: ``balance`` is ``none``, ``weights`` (class-weighted loss) or ``sample`` (balanced batches).
        y: training labels.
        num_classes: C.
    """
    if opts.balance == "none":
        return None, None
    weights = class_weights(y, num_classes)
    return (weights, None) if opts.balance == "weights" else (None, weights)
