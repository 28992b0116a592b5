"""CIFAR: the real download -> md5 -> extract -> load path, run against tiny official-format archives
served from 127.0.0.1, and every way it can fail leaving nothing half-done behind."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_archives import ArchiveServer, build_tiny_cifar, evil_cifar10, leftovers, write_evil_folder

from mlp_torch.data import DataOptions, load_data
from mlp_torch.data.archive import download
from mlp_torch.data.cifar import archive_specs
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


# ---------------------------------------------------------------- files from strangers


def test_official_format_variants_load_through_the_restricted_unpickler(tmp_path, tiny):
    """bytes keys (as Python 3 writes them at protocol 2) and labels as int arrays load like the originals."""

    def variant(entry: dict) -> dict:
        out = {}
        for key, value in entry.items():
            if key in ("labels", "fine_labels", "coarse_labels"):
                value = np.asarray(value, dtype=np.int64)
            elif key == "filenames":
                value = [name.encode() for name in value]
            out[key.encode()] = value
        return out

    from cifar_archives import _targz

    archive = _targz({name: variant(entry) for name, entry in tiny.entries10.items()})
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(archive)
    opts = DataOptions(
        dataset="cifar",
        data_root=root,
        classes=["cat", "truck"],
        cache=False,
        val_fraction=0.0,
        cifar10_md5=hashlib.md5(archive).hexdigest(),
    )
    bundle = load_data(opts)
    for label, name in enumerate(bundle.classes):
        assert torch.equal(bundle.train.x[bundle.train.y == label], torch.from_numpy(tiny.expected(name, "train")))
        assert torch.equal(bundle.test.x[bundle.test.y == label], torch.from_numpy(tiny.expected(name, "test")))


def test_a_crafted_batch_in_an_extracted_folder_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    write_evil_folder(tmp_path / "data", marker)
    with pytest.raises(DataError) as err:
        load_data(DataOptions(dataset="cifar", data_root=tmp_path / "data", classes=["cat"], cache=False))
    message = str(err.value)
    assert "batches.meta is not an official CIFAR-10 file: it holds posix.system" in message
    assert "refused without running anything" in message and "\n" not in message
    assert err.value.exit_code == 2
    assert not marker.exists()


def test_a_crafted_archive_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    evil = evil_cifar10(marker)
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(evil)
    opts = DataOptions(
        dataset="cifar", data_root=root, classes=["cat"], cache=False, cifar10_md5=hashlib.md5(evil).hexdigest()
    )
    with pytest.raises(DataError, match="refused without running anything"):
        load_data(opts)
    assert not marker.exists()


def test_without_download_a_missing_archive_says_where_to_place_it_and_fetches_nothing(tmp_path, server, tiny):
    opts = options(tmp_path, server, tiny, classes=["cat", "bear"])
    with pytest.raises(DataError) as err:
        load_data(opts, allow_download=False)
    message = str(err.value)
    assert not isinstance(err.value, DownloadError) and err.value.exit_code == 2
    assert f"place the official archive at {tmp_path / 'data' / 'cifar-10-python.tar.gz'}" in message
    assert "cifar-100-python.tar.gz" in message and "--data-root" in message and "\n" not in message
    assert server.requests == []
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- extraction on every Python


def tar_with(entries: dict[str, dict], extra: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """The tiny archive's members plus ``extra`` (TarInfo, payload) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
        for name, obj in entries.items():
            if not any(info.name == name for info, _ in extra):
                payload = pickle.dumps(obj, protocol=2)
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def regular(name: str, payload: bytes = b"escaped\n") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    return info, payload


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, b""


@pytest.fixture(params=["with filter", "without filter"])
def python_tarfile(request, monkeypatch):
    """Run on this Python, and as on Python < 3.10.12 / 3.11.0-3.11.3, whose extractall has no filter."""
    if request.param == "without filter":
        original = tarfile.TarFile.extractall

        def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
            if kwargs:
                raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
            return original(self, path, members, numeric_owner=numeric_owner)

        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)
    return request.param


def place(tmp_path: Path, archive: bytes, **kw) -> DataOptions:
    root = tmp_path / "data"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(archive)
    return DataOptions(
        dataset="cifar",
        data_root=root,
        cache=False,
        val_fraction=0.0,
        cifar10_md5=hashlib.md5(archive).hexdigest(),
        **kw,
    )


def test_extraction_works_with_and_without_tarfile_filters(tmp_path, tiny, python_tarfile):
    bundle = load_data(place(tmp_path, tiny.cifar10, classes=["cat", "ship"]))
    assert torch.equal(bundle.train.x[bundle.train.y == 1], torch.from_numpy(tiny.expected("ship", "train")))
    extracted = tmp_path / "data" / "cifar-10-batches-py"
    assert sorted(p.name for p in extracted.iterdir()) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    )
    assert all(p.is_file() and not p.is_symlink() for p in extracted.iterdir())


def test_members_outside_the_expected_files_are_never_extracted(tmp_path, tiny, python_tarfile):
    extra = [
        regular("../escaped.txt"),
        regular(str(tmp_path / "absolute.txt")),
        regular("cifar-10-batches-py/../../escaped2.txt"),
        symlink("cifar-10-batches-py/readme", "/etc/passwd"),
    ]
    load_data(place(tmp_path, tar_with(tiny.entries10, extra), classes=["cat"]))
    assert sorted(p.name for p in tmp_path.rglob("*") if "escaped" in p.name or p.name == "absolute.txt") == []
    assert not (tmp_path / "data" / "cifar-10-batches-py" / "readme").exists()


@pytest.mark.parametrize(
    "member",
    [
        symlink("cifar-10-batches-py/data_batch_1", "/etc/passwd"),
        symlink("cifar-10-batches-py/batches.meta", "../../outside"),
    ],
    ids=["symlink to an absolute path", "symlink out of the folder"],
)
def test_an_expected_member_that_is_a_link_is_refused(tmp_path, tiny, python_tarfile, member):
    with pytest.raises(DataError, match=r"is a link, device or folder, not a regular file"):
        load_data(place(tmp_path, tar_with(tiny.entries10, [member]), classes=["cat"]))
    assert leftovers(tmp_path / "data") == ["cifar-10-python.tar.gz"]


# ---------------------------------------------------------------- downloads side by side, and Ctrl-C


def test_two_first_time_downloads_into_one_root_use_separate_part_files(tmp_path, tiny):
    arrived, release = threading.Semaphore(0), threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            body = tiny.cifar10
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            arrived.release()
            release.wait(timeout=30)
            self.wfile.write(body[len(body) // 2 :])

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/c10.tar.gz"
    spec = archive_specs(DataOptions(cifar10_url=url, cifar10_md5=tiny.md5_10))["cifar10"]
    root = tmp_path / "data"
    results: list[object] = []
    workers = [threading.Thread(target=lambda: results.append(download(spec, root, 30))) for _ in range(2)]
    try:
        for w in workers:
            w.start()
        assert arrived.acquire(timeout=30) and arrived.acquire(timeout=30)  # both half-way through
        parts = sorted(p.name for p in root.iterdir() if p.name.endswith(".part"))
        assert len(parts) == 2, parts
    finally:
        release.set()
        for w in workers:
            w.join(timeout=30)
        httpd.shutdown()
        httpd.server_close()
    assert results == [root / "cifar-10-python.tar.gz"] * 2
    assert (root / "cifar-10-python.tar.gz").read_bytes() == tiny.cifar10
    assert leftovers(root) == ["cifar-10-python.tar.gz"]


def test_ctrl_c_during_a_download_removes_its_part_file(tmp_path, tiny, monkeypatch):
    class Response(io.BytesIO):
        def read(self, size: int = -1) -> bytes:
            if self.tell():
                raise KeyboardInterrupt
            return super().read(1000)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Response(tiny.cifar10))
    spec = archive_specs(DataOptions(cifar10_url="http://127.0.0.1:9/c10", cifar10_md5=tiny.md5_10))["cifar10"]
    with pytest.raises(KeyboardInterrupt):
        download(spec, tmp_path / "data", 10)
    assert leftovers(tmp_path / "data") == []
