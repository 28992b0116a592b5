"""Image folders: generated PNG/JPEG files of mixed sizes and modes, clear errors, the disk cache,
and (when ../shared/data is there) the real CIFAR-10 JPEG copy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlp_torch.data import DataOptions, load_data
from mlp_torch.errors import DataError

SHARED_JPG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg"


def write_image(path: Path, size: tuple[int, int], mode: str, seed: int) -> np.ndarray:
    """Write a random image; return its RGB pixels as Pillow converts them."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return np.array(img.convert("RGB"))


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict]:
    """train: 3 images per class (mixed formats/sizes/modes), test: 2; returns exact pixels of the 32x32 PNGs."""
    root = tmp_path / "photos"
    exact = {}
    for s, split in enumerate(("train", "test")):
        for c, name in enumerate(("zebra", "apple", "moose")):
            base = root / split / name
            exact[(split, name)] = write_image(base / "a.png", (32, 32), "RGB", 100 * s + 10 * c)
            write_image(base / "b.png", (50, 20), "RGBA", 100 * s + 10 * c + 1)
            if split == "train":
                write_image(base / "c.jpg", (64, 48), "L", 100 * s + 10 * c + 2)
            (base / "notes.txt").write_text("not an image: ignored")
    return root, exact


def opts(root: Path, tmp_path: Path, **kw) -> DataOptions:
    return DataOptions(dataset="folder", data_root=root, cache_dir=tmp_path / "cache", val_fraction=0.0, **kw)


def test_mixed_files_load_as_rgb_uint8_with_labels_by_class_order(folder, tmp_path):
    root, exact = folder
    bundle = load_data(opts(root, tmp_path))
    assert bundle.classes == ["apple", "moose", "zebra"]  # default: every folder, sorted
    assert bundle.counts() == {
        "train": {"apple": 3, "moose": 3, "zebra": 3},
        "val": {"apple": 0, "moose": 0, "zebra": 0},
        "test": {"apple": 2, "moose": 2, "zebra": 2},
    }
    assert bundle.train.x.shape == (9, 3, 32, 32) and bundle.train.x.dtype == torch.uint8
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        for label, name in enumerate(bundle.classes):
            first = data.x[data.y == label][0]  # a.png sorts first: lossless and already 32x32
            assert torch.equal(first, torch.from_numpy(exact[(split, name)]).permute(2, 0, 1))
    gray = bundle.train.x[bundle.train.y == 0][2]  # c.jpg was grayscale: R == G == B after conversion
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_classes_pick_a_subset_in_the_order_given_and_size_is_configurable(folder, tmp_path):
    root, _ = folder
    bundle = load_data(opts(root, tmp_path, classes=["zebra", "apple"], image_size=8))
    assert bundle.classes == ["zebra", "apple"]
    assert bundle.train.x.shape == (6, 3, 8, 8) and bundle.in_features == 192
    assert bundle.counts()["test"] == {"zebra": 2, "apple": 2}


def test_missing_class_folder_is_a_clear_error(folder, tmp_path):
    root, _ = folder
    with pytest.raises(DataError, match=r"class folder .*train/tiger is missing; classes found .*apple, moose, zebra"):
        load_data(opts(root, tmp_path, classes=["apple", "tiger"]))


def test_missing_split_or_root_is_a_clear_error(folder, tmp_path):
    root, _ = folder
    with pytest.raises(DataError, match="does not exist"):
        load_data(opts(tmp_path / "nowhere", tmp_path))
    for path in (root / "test").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(DataError, match="holds no images"):
        load_data(opts(root, tmp_path))


def test_unreadable_image_names_the_file(folder, tmp_path):
    root, _ = folder
    bad = root / "train" / "moose" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.jpg"):
        load_data(opts(root, tmp_path))
    assert not list(tmp_path.glob("cache/*.pt"))


def test_cache_is_reused_then_invalidated_by_a_changed_source(folder, tmp_path):
    root, _ = folder
    first = load_data(opts(root, tmp_path))
    assert not first.cache_hit and first.cache_path.is_file()
    second = load_data(opts(root, tmp_path))
    assert second.cache_hit and second.cache_path == first.cache_path
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert load_data(opts(root, tmp_path, image_size=16)).cache_path != first.cache_path
    assert load_data(opts(root, tmp_path, classes=["apple"])).cache_path != first.cache_path

    changed = root / "train" / "apple" / "a.png"
    write_image(changed, (32, 32), "RGB", seed=999)
    os.utime(changed, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    third = load_data(opts(root, tmp_path))
    assert not third.cache_hit and third.cache_path != first.cache_path
    assert not torch.equal(third.train.x, first.train.x)


def test_a_corrupt_or_foreign_cache_file_is_rebuilt(folder, tmp_path):
    root, _ = folder
    first = load_data(opts(root, tmp_path))
    first.cache_path.write_bytes(first.cache_path.read_bytes()[:100])  # truncated
    again = load_data(opts(root, tmp_path))
    assert not again.cache_hit and torch.equal(again.train.x, first.train.x)
    torch.save({"key": "someone else's", "train_x": torch.zeros(1)}, first.cache_path)
    assert not load_data(opts(root, tmp_path)).cache_hit
    assert load_data(opts(root, tmp_path)).cache_hit
    assert [p.name for p in first.cache_path.parent.iterdir()] == [first.cache_path.name]  # no temp files


def test_no_cache_writes_nothing(folder, tmp_path):
    root, _ = folder
    bundle = load_data(opts(root, tmp_path, cache=False))
    assert bundle.cache_path is None and not (tmp_path / "cache").exists()


@pytest.mark.skipif(not SHARED_JPG.is_dir(), reason="../shared/data/cifar10-jpg is not present")
def test_real_cifar10_jpeg_cat_dog(tmp_path):
    options = DataOptions(dataset="folder", data_root=SHARED_JPG, classes=["cat", "dog"], cache_dir=tmp_path)
    bundle = load_data(options)
    counts = bundle.counts()
    for name in ("cat", "dog"):
        assert counts["train"][name] + counts["val"][name] == 5000 and counts["val"][name] == 500
        assert counts["test"][name] == 1000
    assert bundle.train.x.shape[1:] == (3, 32, 32)
    assert load_data(options).cache_hit
