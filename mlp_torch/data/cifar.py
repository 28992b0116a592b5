"""CIFAR-10 and CIFAR-100 by class name: the official archives, extracted once, read without running code.

The archives are the official python-pickle ones and are laid out as torchvision lays them out::

    DATA_ROOT/cifar-10-python.tar.gz    DATA_ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    DATA_ROOT/cifar-100-python.tar.gz   DATA_ROOT/cifar-100-python/{train,test,meta}

so a data root that torchvision already filled is reused. Fetching and unpacking is
:mod:`mlp_torch.data.archive`; the batches are read with :func:`~mlp_torch.data.safe_pickle.load_plain_pickle`,
which builds only dicts, lists, strings, numbers and numeric arrays, so a crafted batch (in an
archive or an extracted folder) is refused instead of run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .archive import by_hand
from .options import DataOptions
from .safe_pickle import UnsafePickleError, load_plain_pickle
from .splits import RawSplits, Split

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR100_CLASSES = (
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
)
DEFAULT_CLASSES = ("cat", "dog", "bear")
SIDE = 32  # the archives hold 32x32 RGB images, one row of 3*32*32 bytes each, channel-major


@dataclass(frozen=True)
class ArchiveSpec:
    """One official archive: where it comes from, what it must hash to, what it holds."""

    name: str  # "CIFAR-10"
    url: str
    md5: str
    filename: str  # cifar-10-python.tar.gz
    folder: str  # cifar-10-batches-py
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: str  # key of the class names in meta_file
    labels_key: str  # key of the labels in each batch

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_files, *self.test_files, self.meta_file)


def archive_specs(opts: DataOptions) -> dict[str, ArchiveSpec]:
    """The two archives, with URL and md5 taken from ``opts`` (so tests and mirrors can swap them)."""
    return {
        "cifar10": ArchiveSpec(
            "CIFAR-10",
            opts.cifar10_url,
            opts.cifar10_md5,
            "cifar-10-python.tar.gz",
            "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)),
            ("test_batch",),
            "batches.meta",
            "label_names",
            "labels",
        ),
        "cifar100": ArchiveSpec(
            "CIFAR-100",
            opts.cifar100_url,
            opts.cifar100_md5,
            "cifar-100-python.tar.gz",
            "cifar-100-python",
            ("train",),
            ("test",),
            "meta",
            "fine_label_names",
            "fine_labels",
        ),
    }


def resolve_cifar_classes(classes: list[str] | None) -> list[tuple[str, str]]:
    """Map each requested name to the archive that holds it: ``[("cat", "cifar10"), ("bear", "cifar100")]``.

    Args:
        classes: CIFAR-10 class names and CIFAR-100 fine class names in any mix; ``None`` means cat,dog,bear.
    """
    names = list(classes) if classes is not None else list(DEFAULT_CLASSES)
    unknown = [n for n in names if n not in CIFAR10_CLASSES and n not in CIFAR100_CLASSES]
    if unknown:
        raise DataError(
            f"unknown CIFAR class name(s) {', '.join(unknown)}; valid CIFAR-10 names: {' '.join(CIFAR10_CLASSES)}; "
            f"valid CIFAR-100 fine names: {' '.join(CIFAR100_CLASSES)}"
        )
    return [(n, "cifar10" if n in CIFAR10_CLASSES else "cifar100") for n in names]


def source_fingerprint(spec: ArchiveSpec, folder: Path) -> list:
    """What the cache key needs to notice a changed source: the md5 and every member's size and mtime."""
    stats = [(m, (folder / m).stat().st_size, (folder / m).stat().st_mtime_ns) for m in spec.members]
    return [spec.md5, stats]


# --- load ----------------------------------------------------------------------------------------


def _unpickle(path: Path, spec: ArchiveSpec, root: Path) -> dict:
    """One batch or meta file as a dict with str keys, read without calling anything it names."""
    try:
        entry = load_plain_pickle(path)  # Python 2 pickles: strings are read as latin-1
    except UnsafePickleError as err:
        raise DataError(
            f"{path} is not an official {spec.name} file: it holds {err}, which the official files do not; "
            f"it was refused without running anything. Delete {path.parent} and {by_hand(spec, root)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); delete its folder and rerun") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path} is not an official {spec.name} file (it holds a {type(entry).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _load_split(spec: ArchiveSpec, folder: Path, files: tuple[str, ...], wanted: list[int]) -> Split:
    """Images (N, 3, 32, 32) uint8 and their archive labels, for the wanted archive labels only."""
    xs, ys = [], []
    for name in files:
        path = folder / name
        entry = _unpickle(path, spec, folder.parent)
        data, labels = entry.get("data"), np.asarray(entry.get(spec.labels_key, []))
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.shape[1:] == (3 * SIDE * SIDE,)
            and labels.shape == data.shape[:1]
            and labels.dtype.kind in "iu"
        ):
            raise DataError(
                f"{path} is not an official {spec.name} batch: expected 'data', uint8 of shape (N, {3 * SIDE * SIDE}), "
                f"and N integer '{spec.labels_key}'; delete {folder} and rerun"
            )
        labels = labels.astype(np.int64)
        keep = np.isin(labels, wanted)
        xs.append(data[keep])
        ys.append(labels[keep])
    x = np.concatenate(xs).reshape(-1, 3, SIDE, SIDE)
    return Split(torch.from_numpy(x), torch.from_numpy(np.concatenate(ys)))


def _class_names(spec: ArchiveSpec, folder: Path) -> list[str]:
    path = folder / spec.meta_file
    names = _unpickle(path, spec, folder.parent).get(spec.names_key)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path} is not an official {spec.name} meta file: it lacks the list '{spec.names_key}'")
    return names


def load_cifar(opts: DataOptions, classes: list[tuple[str, str]], folders: dict[str, Path]) -> RawSplits:
    """Load the requested classes from the extracted archives, labelled 0..K-1 in the order given.

    Args:
        opts: the options (for the archive specs).
        classes: from :func:`resolve_cifar_classes`.
        folders: archive key -> extracted folder, from :func:`mlp_torch.data.archive.ensure_extracted`.

    Returns:
        The official train and test splits: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Raises:
        DataError: a file is damaged, or holds anything but what the official files hold.
    """
    specs = archive_specs(opts)
    parts: dict[str, list[Split]] = {"train": [], "test": []}
    for key, folder in folders.items():
        spec = specs[key]
        archive_names = _class_names(spec, folder)
        ours = {name: label for label, (name, k) in enumerate(classes) if k == key}
        missing = [n for n in ours if n not in archive_names]
        if missing:
            raise DataError(f"{folder / spec.meta_file} does not name the class(es) {', '.join(missing)}")
        to_ours = torch.full((len(archive_names),), -1, dtype=torch.int64)
        for name, label in ours.items():
            to_ours[archive_names.index(name)] = label
        wanted = [archive_names.index(n) for n in ours]
        for split, files in (("train", spec.train_files), ("test", spec.test_files)):
            part = _load_split(spec, folder, files, wanted)
            parts[split].append(Split(part.x, to_ours[part.y]))
    train, test = (Split(torch.cat([p.x for p in ps]), torch.cat([p.y for p in ps])) for ps in parts.values())
    return RawSplits(train, test)
