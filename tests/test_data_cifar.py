"""CIFAR: the real download -> md5 -> extract -> load path, run against tiny official-format archives
served from 127.0.0.1, and every way it can fail leaving nothing half-done behind."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_archives import ArchiveServer, build_tiny_cifar, leftovers

from mlp_torch.data import DataOptions, load_data
from mlp_torch.errors import DataError, DownloadError


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_cifar()


@pytest.fixture
def server(tiny):
    srv = ArchiveServer({"c10.tar.gz": tiny.cifar10, "c100.tar.gz": tiny.cifar100})
    yield srv
    srv.close()


def options(tmp_path: Path, server: ArchiveServer, tiny, **overrides) -> DataOptions:
    kwargs = dict(
        dataset="cifar",
        data_root=tmp_path / "data",
        cache_dir=tmp_path / "cache",
        val_fraction=0.0,
        cifar10_url=server.url("c10.tar.gz"),
        cifar10_md5=tiny.md5_10,
        cifar100_url=server.url("c100.tar.gz"),
        cifar100_md5=tiny.md5_100,
    )
    kwargs.update(overrides)
    return DataOptions(**kwargs)


def test_cat_dog_bear_across_both_archives_round_trips_exactly(tmp_path, server, tiny):
    bundle = load_data(options(tmp_path, server, tiny))  # classes=None: the default mix
    assert bundle.classes == ["cat", "dog", "bear"]
    assert server.requests == ["c10.tar.gz", "c100.tar.gz"]
    for split, data in (("train", bundle.train), ("test", bundle.test)):
        for label, name in enumerate(bundle.classes):
            want = tiny.expected(name, split)
            assert len(want) > 0
            got = data.x[data.y == label]
            assert got.dtype == torch.uint8 and got.shape == want.shape
            assert torch.equal(got, torch.from_numpy(want)), f"{split}/{name} pixels differ"
    assert bundle.counts()["train"] == {"cat": 10, "dog": 10, "bear": 10}
    assert bundle.counts()["test"] == {"cat": 2, "dog": 2, "bear": 4}
    assert len(bundle.val) == 0
    root = tmp_path / "data"
    assert {"cifar-10-python.tar.gz", "cifar-100-python.tar.gz", "cifar-10-batches-py", "cifar-100-python"} <= {
        p.name for p in root.iterdir()
    }
    assert not [p for p in root.iterdir() if p.name.startswith(".") or p.name.endswith(".part")]


def test_labels_follow_the_order_given_and_only_needed_archives_are_fetched(tmp_path, server, tiny):
    bundle = load_data(options(tmp_path, server, tiny, classes=["dog", "airplane"]))
    assert bundle.classes == ["dog", "airplane"]
    assert server.requests == ["c10.tar.gz"]  # no CIFAR-100 class asked for: not downloaded
    assert torch.equal(bundle.test.x[bundle.test.y == 0], torch.from_numpy(tiny.expected("dog", "test")))
    assert torch.equal(bundle.test.x[bundle.test.y == 1], torch.from_numpy(tiny.expected("airplane", "test")))


def test_download_and_extract_happen_once_then_the_cache_is_used(tmp_path, server, tiny):
    first = load_data(options(tmp_path, server, tiny))
    assert not first.cache_hit and first.cache_path is not None and first.cache_path.is_file()
    server.close()  # from now on any network access would fail
    second = load_data(options(tmp_path, server, tiny))
    assert second.cache_hit and second.cache_path == first.cache_path
    no_cache = load_data(options(tmp_path, server, tiny, cache=False))  # extracted folders are reused
    for a, b in ((first.train, second.train), (first.train, no_cache.train), (first.test, no_cache.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(server.requests) == 2


def test_an_archive_placed_by_hand_is_verified_and_extracted_without_network(tmp_path, tiny):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(tiny.cifar10)
    opts = DataOptions(
        dataset="cifar",
        data_root=root,
        classes=["cat"],
        cache=False,
        val_fraction=0.0,
        cifar10_url="http://127.0.0.1:9/never",
        cifar10_md5=tiny.md5_10,
    )
    bundle = load_data(opts)
    assert torch.equal(bundle.train.x, torch.from_numpy(tiny.expected("cat", "train")))


def test_wrong_md5_is_refused_and_nothing_is_left(tmp_path, server, tiny):
    opts = options(tmp_path, server, tiny, classes=["cat"], cifar10_md5="0" * 32)
    with pytest.raises(DownloadError, match=r"md5 .* expected 0{32}.*by hand.*cifar-10-python\.tar\.gz"):
        load_data(opts)
    assert leftovers(tmp_path / "data") == []
    assert leftovers(tmp_path / "cache") == []


def test_a_hand_placed_archive_with_the_wrong_md5_is_reported_not_deleted(tmp_path, tiny):
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(tiny.cifar100)
    opts = DataOptions(dataset="cifar", data_root=root, classes=["cat"], cache=False, cifar10_md5=tiny.md5_10)
    with pytest.raises(DownloadError, match="has md5"):
        load_data(opts)
    assert leftovers(root) == ["cifar-10-python.tar.gz"]


def test_a_corrupt_archive_is_detected_and_never_half_extracted(tmp_path, tiny):
    import hashlib

    truncated = tiny.cifar10[: len(tiny.cifar10) * 2 // 3]  # md5 matches, the gzip stream does not end
    srv = ArchiveServer({"c10.tar.gz": truncated})
    try:
        opts = DataOptions(
            dataset="cifar",
            data_root=tmp_path / "data",
            classes=["cat"],
            cache=False,
            cifar10_url=srv.url("c10.tar.gz"),
            cifar10_md5=hashlib.md5(truncated).hexdigest(),
        )
        with pytest.raises(DownloadError, match="corrupt"):
            load_data(opts)
    finally:
        srv.close()
    assert leftovers(tmp_path / "data") == []


def test_an_archive_without_the_expected_files_is_refused(tmp_path, tiny):
    import hashlib

    srv = ArchiveServer({"c10.tar.gz": tiny.cifar100})  # right format, wrong archive
    try:
        opts = DataOptions(
            dataset="cifar",
            data_root=tmp_path / "data",
            classes=["cat"],
            cache=False,
            cifar10_url=srv.url("c10.tar.gz"),
            cifar10_md5=hashlib.md5(tiny.cifar100).hexdigest(),
        )
        with pytest.raises(DataError, match="lacks cifar-10-batches-py/batches.meta"):
            load_data(opts)
    finally:
        srv.close()
    assert leftovers(tmp_path / "data") == []


def test_no_server_fails_fast_and_says_what_to_place_where(tmp_path, tiny):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = DataOptions(
        dataset="cifar",
        data_root=tmp_path / "data",
        classes=["cat", "bear"],
        cache=False,
        cifar10_url=f"http://127.0.0.1:{port}/c10.tar.gz",
        cifar10_md5=tiny.md5_10,
        cifar100_url=f"http://127.0.0.1:{port}/c100.tar.gz",
        cifar100_md5=tiny.md5_100,
    )
    assert opts.download_timeout <= 10  # a stalled server gives up within seconds, not minutes
    with pytest.raises(DownloadError) as err:
        load_data(opts)
    message = str(err.value)
    assert "\n" not in message, "one line on stderr"
    assert "could not download CIFAR-10" in message
    assert str(tmp_path / "data" / "cifar-10-python.tar.gz") in message and tiny.md5_10 in message
    assert "cifar-10-batches-py" in message and "data_batch_1" in message
    # both archives are named at once, so the user places everything by hand in one go
    assert "could not download CIFAR-100" in message and "cifar-100-python.tar.gz" in message
    assert leftovers(tmp_path / "data") == []
    assert DownloadError.exit_code == 1


def test_unknown_class_name_lists_the_valid_names(tmp_path):
    with pytest.raises(DataError, match=r"unknown CIFAR class name\(s\) kitten.*airplane.*aquarium_fish"):
        load_data(DataOptions(dataset="cifar", data_root=tmp_path, classes=["cat", "kitten"]))
    assert leftovers(tmp_path) == []  # refused before any download


def test_image_size_resizes_once_at_decode(tmp_path, server, tiny):
    bundle = load_data(options(tmp_path, server, tiny, classes=["cat", "bear"], image_size=16))
    assert bundle.train.x.shape[1:] == (3, 16, 16) and bundle.in_features == 3 * 16 * 16
    from PIL import Image

    # the same antialiased bilinear filter as Pillow (and so as the image-folder path), to rounding
    big = tiny.expected("cat", "train").transpose(0, 2, 3, 1)
    pil = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.BILINEAR)) for im in big])
    ours = bundle.train.x[bundle.train.y == 0].permute(0, 2, 3, 1).numpy()
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
    assert np.isclose(bundle.train.x.float().mean().item(), 127.5, atol=5)
