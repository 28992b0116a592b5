"""CIFAR-10 and CIFAR-100 by class name: download when missing -> verify md5 -> extract once -> load.

The archives are the official python-pickle ones and are laid out as torchvision lays them out::

    DATA_ROOT/cifar-10-python.tar.gz    DATA_ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    DATA_ROOT/cifar-100-python.tar.gz   DATA_ROOT/cifar-100-python/{train,test,meta}

so a data root that torchvision already filled is reused. Nothing is ever left half-done: a download
goes to ``*.part`` and is renamed only once its md5 matches, and an archive is extracted into a
temporary folder that is renamed into place only once every expected file is out.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DownloadError
from .options import DataOptions

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


# --- download, verify, extract -------------------------------------------------------------------


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(spec: ArchiveSpec, root: Path) -> str:
    return (
        f"download {spec.url} by hand and place it at {root / spec.filename} (md5 {spec.md5}), "
        f"or extract it so that {root / spec.folder}/ holds {', '.join(spec.members)}; then rerun"
    )


def _download(spec: ArchiveSpec, root: Path, timeout: float) -> Path:
    """Fetch ``spec.url`` into ``root/filename.part``, check its md5, then rename it into place."""
    target = root / spec.filename
    part = root / (spec.filename + ".part")
    try:
        root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        print(f"downloading {spec.name} from {spec.url} to {target}", file=sys.stderr)
        with urllib.request.urlopen(spec.url, timeout=timeout) as response, open(part, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise DownloadError(f"could not download {spec.name} ({reason}); {_by_hand(spec, root)}") from None
    if digest.hexdigest() != spec.md5:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{spec.name} download from {spec.url} has md5 {digest.hexdigest()}, expected "
            f"{spec.md5} (truncated or wrong file, deleted); {_by_hand(spec, root)}"
        )
    os.replace(part, target)
    return target


def _extract(spec: ArchiveSpec, archive: Path, root: Path) -> None:
    """Extract the expected members into a temporary folder, then rename it to ``root/spec.folder``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=root))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            wanted = {f"{spec.folder}/{m}" for m in spec.members}
            members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
            missing = wanted - {m.name for m in members}
            if missing:
                raise DataError(
                    f"{archive} is not the {spec.name} archive: it lacks {', '.join(sorted(missing))}; "
                    f"{_by_hand(spec, root)}"
                )
            tar.extractall(tmp, members=members, filter="data")
        os.replace(tmp / spec.folder, root / spec.folder)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive} is corrupt ({err}); delete it and {_by_hand(spec, root)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_extracted(spec: ArchiveSpec, root: Path, timeout: float = 10.0) -> Path:
    """Return ``root/spec.folder`` with every member present, downloading and extracting only if needed.

    Args:
        spec: which archive, from :func:`archive_specs`.
        root: the data root (``--data-root``).
        timeout: seconds to wait on the network before giving up with instructions.
    """
    folder = root / spec.folder
    if all((folder / m).is_file() for m in spec.members):
        return folder
    if folder.exists():
        raise DataError(f"{folder} exists but lacks some of {', '.join(spec.members)}; delete it and rerun")
    archive = root / spec.filename
    if archive.is_file():
        actual = file_md5(archive)
        if actual != spec.md5:
            raise DownloadError(
                f"{archive} has md5 {actual}, expected {spec.md5}; delete it (it will be downloaded "
                f"again) or {_by_hand(spec, root)}"
            )
        _extract(spec, archive, root)
        return folder
    archive = _download(spec, root, timeout)
    try:
        _extract(spec, archive, root)
    except DataError:
        archive.unlink(missing_ok=True)  # we fetched it, it is useless: do not make the user delete it
        raise
    return folder


def source_fingerprint(spec: ArchiveSpec, folder: Path) -> list:
    """What the cache key needs to notice a changed source: the md5 and every member's size and mtime."""
    stats = [(m, (folder / m).stat().st_size, (folder / m).stat().st_mtime_ns) for m in spec.members]
    return [spec.md5, stats]


# --- load ----------------------------------------------------------------------------------------


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); delete its folder and rerun") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _load_split(spec: ArchiveSpec, folder: Path, files: tuple[str, ...], wanted: list[int]):
    """Images (N, 3, 32, 32) uint8 and their archive labels, for the wanted archive labels only."""
    xs, ys = [], []
    for name in files:
        entry = _unpickle(folder / name)
        labels = np.asarray(entry[spec.labels_key], dtype=np.int64)
        keep = np.isin(labels, wanted)
        xs.append(np.asarray(entry["data"], dtype=np.uint8)[keep])
        ys.append(labels[keep])
    x = np.concatenate(xs).reshape(-1, 3, SIDE, SIDE)
    return torch.from_numpy(x), torch.from_numpy(np.concatenate(ys))


def load_cifar(opts: DataOptions, classes: list[tuple[str, str]], folders: dict[str, Path]):
    """Load the requested classes from the extracted archives, labelled 0..K-1 in the order given.

    Args:
        opts: the options (for the archive specs).
        classes: from :func:`resolve_cifar_classes`.
        folders: archive key -> extracted folder, from :func:`ensure_extracted`.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 (N, 3, 32, 32) and int64 (N,), official splits.
    """
    specs = archive_specs(opts)
    parts: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for key, folder in folders.items():
        spec = specs[key]
        archive_names = list(_unpickle(folder / spec.meta_file)[spec.names_key])
        ours = {name: label for label, (name, k) in enumerate(classes) if k == key}
        missing = [n for n in ours if n not in archive_names]
        if missing:
            raise DataError(f"{folder / spec.meta_file} does not name the class(es) {', '.join(missing)}")
        to_ours = torch.full((len(archive_names),), -1, dtype=torch.int64)
        for name, label in ours.items():
            to_ours[archive_names.index(name)] = label
        wanted = [archive_names.index(n) for n in ours]
        for split, files in (("train", spec.train_files), ("test", spec.test_files)):
            x, y = _load_split(spec, folder, files, wanted)
            parts[f"{split}_x"].append(x)
            parts[f"{split}_y"].append(to_ours[y])
    return tuple(torch.cat(parts[k]) for k in ("train_x", "train_y", "test_x", "test_y"))
