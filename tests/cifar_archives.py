"""Tiny CIFAR-10 / CIFAR-100 archives in the official python-pickle format, served over local HTTP.

The archives hold a handful of random images each, in the official layout
(``cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta``;
``cifar-100-python/train, test, meta``), so the real download -> md5 -> extract -> load path runs
against them. ``expected(...)`` gives the images each class should come back as.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlp_torch.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

CIFAR10_PER_BATCH = 20  # x5 train batches
CIFAR10_TEST = 20
CIFAR100_TRAIN = 40
CIFAR100_TEST = 16


def _entry(rng: np.random.Generator, labels: np.ndarray, labels_key: str) -> dict:
    data = rng.integers(0, 256, size=(len(labels), 3 * 32 * 32), dtype=np.uint8)
    return {
        "batch_label": "tiny",
        labels_key: labels.tolist(),
        "data": data,
        "filenames": [f"img_{i}.png" for i in range(len(labels))],
    }


def _add(tar: tarfile.TarFile, name: str, obj: object) -> None:
    payload = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _targz(entries: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, obj in entries.items():
            _add(tar, name, obj)
    return buf.getvalue()


@dataclass
class TinyCifar:
    """Both archives as bytes, their md5 sums, and the decoded entries for checking round trips."""

    cifar10: bytes
    cifar100: bytes
    entries10: dict[str, dict]
    entries100: dict[str, dict]

    @property
    def md5_10(self) -> str:
        return hashlib.md5(self.cifar10).hexdigest()

    @property
    def md5_100(self) -> str:
        return hashlib.md5(self.cifar100).hexdigest()

    def expected(self, name: str, split: str) -> np.ndarray:
        """All images of class ``name`` in ``split`` ("train"/"test"), in archive order, (N, 3, 32, 32)."""
        if name in CIFAR10_CLASSES:
            files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
            entries, key, label = self.entries10, "labels", CIFAR10_CLASSES.index(name)
            files = [f"cifar-10-batches-py/{f}" for f in files]
        else:
            files = [f"cifar-100-python/{split}"]
            entries, key, label = self.entries100, "fine_labels", CIFAR100_CLASSES.index(name)
        rows = [entries[f]["data"][np.asarray(entries[f][key]) == label] for f in files]
        return np.concatenate(rows).reshape(-1, 3, 32, 32)


def build_tiny_cifar(seed: int = 0) -> TinyCifar:
    rng = np.random.default_rng(seed)
    entries10 = {
        f"cifar-10-batches-py/data_batch_{i}": _entry(rng, np.arange(CIFAR10_PER_BATCH) % 10, "labels")
        for i in range(1, 6)
    }
    entries10["cifar-10-batches-py/test_batch"] = _entry(rng, np.arange(CIFAR10_TEST) % 10, "labels")
    entries10["cifar-10-batches-py/batches.meta"] = {
        "label_names": list(CIFAR10_CLASSES),
        "num_cases_per_batch": CIFAR10_PER_BATCH,
        "num_vis": 3072,
    }
    bear = CIFAR100_CLASSES.index("bear")
    # every 4th image is a bear (fine label 3); the others get labels 50.. (never 3)
    train100 = np.where(np.arange(CIFAR100_TRAIN) % 4 == 0, bear, 50 + np.arange(CIFAR100_TRAIN) % 40)
    test100 = np.where(np.arange(CIFAR100_TEST) % 4 == 0, bear, 50 + np.arange(CIFAR100_TEST) % 40)

    def with_coarse(entry: dict) -> dict:
        entry["coarse_labels"] = [label // 5 for label in entry["fine_labels"]]
        return entry

    entries100 = {
        "cifar-100-python/train": with_coarse(_entry(rng, train100, "fine_labels")),
        "cifar-100-python/test": with_coarse(_entry(rng, test100, "fine_labels")),
        "cifar-100-python/meta": {
            "fine_label_names": list(CIFAR100_CLASSES),
            "coarse_label_names": [f"super{i}" for i in range(20)],
        },
    }
    return TinyCifar(_targz(entries10), _targz(entries100), entries10, entries100)


class RunsCode:
    """Unpickled by plain ``pickle.load``, this runs ``touch MARKER`` (the issue's reproduction)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


CIFAR10_MEMBERS = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


def evil_cifar10(marker: Path) -> bytes:
    """A cifar-10-python.tar.gz whose every member is a pickle that runs code when loaded."""
    return _targz({f"cifar-10-batches-py/{m}": RunsCode(marker) for m in CIFAR10_MEMBERS})


def write_evil_folder(root: Path, marker: Path) -> Path:
    """``root/cifar-10-batches-py/`` as if extracted from :func:`evil_cifar10`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for m in CIFAR10_MEMBERS:
        (folder / m).write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    return folder


@dataclass
class ArchiveServer:
    """A local HTTP server on 127.0.0.1 serving ``files`` (name -> bytes), counting requests."""

    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                server.requests.append(name)
                body = server.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def leftovers(root: Path) -> list[str]:
    """Everything under ``root`` (relative names), to check that a failure left nothing behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
