"""Data options read back from a file: a checkpoint, or a run's ``config.json``.

Such a file may come from a stranger, and every string in it loads cleanly with
``torch.load(weights_only=True)``. So a saved run decides *which* images it was trained on
(dataset, classes, image size, split) but never *where anything is fetched from or written to*:
archive URLs and md5 sums come from the official defaults, the environment or the command line,
the cache folder from ``--cache-dir`` or the default, and the caller loads with
``allow_download=False``. Every value is type-checked before it is used, and synthetic data and
2-D points may not ask for more memory than :data:`MAX_SYNTHETIC_BYTES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import DataError, UsageError
from .options import DataOptions

# What a saved run decides, and the types its values must have (bool is not an int here).
SAVED_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "data_root": (str,),
    "classes": (list, type(None)),
    "val_fraction": (float, int),
    "image_size": (int,),
    "cache": (bool,),
    "seed": (int, type(None)),
    "balance": (str,),
    "augment_flip": (bool,),
    "augment_crop": (int,),
    "whiten": (str,),
    "zca_eps": (float, int),
    "synthetic_train_per_class": (int,),
    "synthetic_test_per_class": (int,),
    "samples": (int,),
    "noise": (float, int),
    "arms": (int,),
}
# Where data come from and where caches go: never taken from a saved run.
LOCATION_KEYS = ("cache_dir", "cifar10_url", "cifar10_md5", "cifar100_url", "cifar100_md5", "download_timeout")
MAX_SYNTHETIC_BYTES = 4 << 30  # 4 GiB of generated uint8 images, or of the 2-D points' float64 coordinates


def _check_type(key: str, value: Any, where: str) -> None:
    allowed = SAVED_TYPES[key]
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if key == "classes" and isinstance(value, list):  # folder names: no path of their own
        ok = all(isinstance(name, str) and not set(name) & set("/\\") and name not in (".", "..") for name in value)
    if not ok:
        wanted = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        if key == "classes":
            wanted = "a list of class names (without / or \\) or null"
        raise DataError(f"{where}: data option {key!r} is {value!r} ({type(value).__name__}), expected {wanted}")


def data_options_from_saved(saved: object, where: str, overrides: Mapping[str, Any] | None = None) -> DataOptions:
    """:class:`DataOptions` for the data a saved run was trained on, safe to load from.

    Args:
        saved: the ``data`` dict of a checkpoint's or ``config.json``'s config.
        where: the file it came from, for error messages.
        overrides: options given on the command line now (``data_root``, ``cache_dir``, ``cache``,
            the archive URLs and md5 sums); they win over ``saved``. Location options that are not
            given take their defaults (official archives, environment, default cache folder).

    Raises:
        DataError: ``saved`` is not a dict, names an unknown option, or holds a value of the wrong
            type or out of range; the message names the file and the key.
    """
    if not isinstance(saved, dict):
        raise DataError(f"{where} does not record which data it was trained on (no data options)")
    unknown = sorted(set(saved) - set(SAVED_TYPES) - set(LOCATION_KEYS))
    if unknown:
        raise DataError(f"{where}: unknown data option(s) {', '.join(map(repr, unknown))}")
    values: dict[str, Any] = {}
    for key, value in saved.items():
        if key in SAVED_TYPES:
            _check_type(key, value, where)
            values[key] = value
    values.update(overrides or {})
    known = {f.name for f in dataclasses.fields(DataOptions)}
    try:
        opts = DataOptions(**{k: v for k, v in values.items() if k in known})
    except UsageError as err:
        raise DataError(f"{where}: {err}") from None
    if opts.dataset == "synthetic":
        classes = len(opts.classes) if opts.classes is not None else 3
        images = classes * (opts.synthetic_train_per_class + opts.synthetic_test_per_class)
        if images * 3 * opts.image_size**2 > MAX_SYNTHETIC_BYTES:
            raise DataError(f"{where}: its synthetic data would take over {MAX_SYNTHETIC_BYTES >> 30} GiB; refused")
    if opts.is_planar and 2 * opts.samples * 2 * 8 > MAX_SYNTHETIC_BYTES:  # train and test, 2 float64 coordinates
        raise DataError(f"{where}: its 2-D points would take over {MAX_SYNTHETIC_BYTES >> 30} GiB; refused")
    return opts


def location_overrides(args: object, data_root_given: bool) -> dict[str, Any]:
    """The location options of a parsed command line, for :func:`data_options_from_saved`.

    Args:
        args: an ``argparse.Namespace``; whichever of ``--cache-dir``, ``--no-cache`` and the URL and
            md5 flags it has are taken (their defaults are the official archives and the default cache).
        data_root_given: whether ``args.data_root`` was typed (else the saved data root is kept).
    """
    keys = [*LOCATION_KEYS] + (["data_root"] if data_root_given else [])
    overrides = {key: getattr(args, key) for key in keys if getattr(args, key, None) is not None}
    if getattr(args, "cache", True) is False:  # --no-cache
        overrides["cache"] = False
    return overrides
