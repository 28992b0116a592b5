"""Image folders: generated PNG/JPEG files of mixed sizes and modes, clear errors, the disk cache,
and (when ../shared/data is there) the real CIFAR-10 JPEG copy."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
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


# ---------------------------------------------------------------- off the happy path


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    from mlp_torch.data.folder import read_image

    grey = np.full((6, 6), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    grey[0, 0], grey[0, 1] = 0, 65535
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    pixels = read_image(tmp_path / "grey16.png", 6)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 6, 6)
    assert pixels[:, 0, 0].tolist() == [0] * 3 and pixels[:, 0, 1].tolist() == [255] * 3
    assert pixels[:, 3, 3].tolist() == [128] * 3  # 32768 / 257 = 127.5: mid-grey, not white


@pytest.mark.parametrize("side", [70, 100], ids=["over the warning limit", "over the error limit"])
def test_a_decompression_bomb_is_one_line(folder, tmp_path, monkeypatch, capsys, side):
    from PIL import Image as PILImage

    from mlp_torch.cli import main

    root, _ = folder
    write_image(root / "train" / "moose" / "bomb.png", (side, side), "RGB", 0)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 4000)  # the others have ≤ 3072; 70² warns, 100² > 2 x 4000 raises
    assert main(["data", "--dataset", "folder", "--data-root", str(root), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mlp-torch data: error: image ") and "bomb.png has more pixels than" in err[-1]
    assert not any("Warning" in line for line in err)


def test_a_symlink_loop_is_one_line(folder, tmp_path):
    root, _ = folder
    os.symlink("loop.jpg", root / "train" / "apple" / "loop.jpg")
    with pytest.raises(DataError, match=r"loop\.jpg is a symbolic-link loop"):
        load_data(opts(root, tmp_path))
    (root / "train" / "apple" / "loop.jpg").unlink()
    shutil.rmtree(root / "test" / "zebra")
    os.symlink("zebra", root / "test" / "zebra")  # a class folder that is a loop
    with pytest.raises(DataError, match=r"class folder .*test/zebra is a symbolic link that leads nowhere"):
        load_data(opts(root, tmp_path))


def test_an_unreadable_class_folder_is_one_line(folder, tmp_path, monkeypatch):
    root, _ = folder
    blocked = root / "train" / "moose"
    real_scandir = os.scandir

    def scandir(path):
        if Path(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read class folder .*train/moose \(Permission denied\)"):
        load_data(opts(root, tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder anyway (the test above covers it)")
def test_an_unreadable_class_folder_is_one_line_for_real(folder, tmp_path):
    root, _ = folder
    blocked = root / "train" / "moose"
    blocked.chmod(0)
    try:
        with pytest.raises(DataError, match=r"cannot read class folder .*train/moose"):
            load_data(opts(root, tmp_path))
    finally:
        blocked.chmod(0o755)


def test_dangling_links_unreadable_and_non_image_files_are_skipped_and_counted(folder, tmp_path, monkeypatch, capsys):
    import json

    from mlp_torch.cli import main

    root, _ = folder
    os.symlink(tmp_path / "gone.png", root / "train" / "apple" / "gone.png")
    os.symlink(tmp_path / "gone.jpg", root / "test" / "zebra" / "gone.jpg")
    secret = root / "train" / "zebra" / "secret.png"
    write_image(secret, (8, 8), "RGB", 7)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != secret and real_access(path, mode))
    bundle = load_data(opts(root, tmp_path))
    assert bundle.counts()["train"] == {"apple": 3, "moose": 3, "zebra": 3}  # none of them among the images
    assert bundle.skipped == {"not_images": 6, "unreadable": 1, "dangling_links": 2}  # notes.txt x 6
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"note: image folder {root}: skipped 9 file(s): 6 not images, 1 unreadable, 2 dangling links" in err
    out = tmp_path / "data.json"
    argv = ["data", "--dataset", "folder", "--data-root", str(root), "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--json", str(out)]) == 0
    assert "skipped:    6 not images, 1 unreadable, 2 dangling links" in capsys.readouterr().out
    assert json.loads(out.read_text())["skipped"] == {"not_images": 6, "unreadable": 1, "dangling_links": 2}


def test_class_names_too_long_for_a_file_name_get_a_short_cache_file(tmp_path):
    root = tmp_path / "photos"
    names = [c * 200 for c in "abcd"]  # each folder name fits; joined they would not
    for split in ("train", "test"):
        for i, name in enumerate(names):
            for j in range(2):
                write_image(root / split / name / f"{j}.png", (8, 8), "RGB", 10 * i + j)
    first = load_data(opts(root, tmp_path))
    assert first.classes == names and first.cache_path is not None and first.cache_path.is_file()
    assert len(first.cache_path.name) < 64 and first.cache_path.name.startswith("folder-4classes-32px-")
    assert load_data(opts(root, tmp_path)).cache_hit


def test_a_full_disk_while_writing_the_cache_warns_and_goes_on(folder, tmp_path):
    """torch.save reports a file-size limit (or a full disk) as RuntimeError, not OSError."""
    root, _ = folder
    cache = tmp_path / "cache"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # the cache needs ~46 KB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed

    proc = subprocess.run(
        [sys.executable, "-m", "mlp_torch", "data", "--dataset", "folder", "--data-root", str(root)]
        + ["--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_file_size,
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not write the data cache" in proc.stderr and "Traceback" not in proc.stderr
    assert "cache:      none" in proc.stdout and "total" in proc.stdout
    assert list(cache.iterdir()) == []  # no cache, no half-written temporary file
