"""The restricted unpickler behind the CIFAR loader: plain data and numeric arrays load exactly,
anything that would call code is refused before it is called."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mlp_torch.data.safe_pickle import UnsafePickleError, load_plain_pickle


def write(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "batch"
    path.write_bytes(payload)
    return path


def official_like(rng: np.random.Generator) -> dict:
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [3, 5, 3, 0],
        b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
        b"filenames": [b"cat_1.png", b"dog_2.png", b"cat_3.png", b"plane_4.png"],
        "label_names": ["cat", "dog"],
        "num_vis": 3072,
    }


def assert_same(got: object, want: object) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want) and got.flags.writeable
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for a, b in zip(got, want):
            assert_same(a, b)
    else:
        assert type(got) is type(want) and got == want


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_plain_data_and_numeric_arrays_load_exactly(tmp_path, protocol):
    rng = np.random.default_rng(0)
    want = official_like(rng)
    want["int64"] = np.arange(-5, 5, dtype=np.int64)
    want["float32 big-endian"] = np.linspace(-1, 1, 6, dtype=">f4").reshape(2, 3)
    want["fortran"] = np.asfortranarray(rng.standard_normal((3, 4)))
    want["bool"] = np.array([True, False, True])
    want["empty"] = np.zeros((0, 3072), dtype=np.uint8)
    want["nested"] = [(1, 2.5, None), {"a": [True]}]
    got = load_plain_pickle(write(tmp_path, pickle.dumps(want, protocol=protocol)))
    assert_same(got, want)
    assert not got["fortran"].flags.c_contiguous  # the order came back too


def test_numpy_1_names_of_the_official_files_load(tmp_path):
    """The official batches were pickled by numpy 1.x: numpy.core.multiarray, not numpy._core."""
    want = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2]}
    payload = pickle.dumps(want, protocol=2)
    old = payload.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in old and old != payload
    assert_same(load_plain_pickle(write(tmp_path, old)), want)


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "PWNED"
    path = write(tmp_path, pickle.dumps({"data": RunsCode(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_plain_pickle(path)
    assert not marker.exists()
    assert os.system(f"touch {marker}") == 0 and marker.exists()  # the payload works when really unpickled


def test_object_and_structured_arrays_are_refused(tmp_path):
    for value, phrase in (
        (np.array([1, "x", None], dtype=object), "dtype 'O8'"),
        (np.zeros(2, dtype=[("a", "u1"), ("b", "f4")]), "dtype 'V5'"),
        (np.array(["ab"]), "dtype 'U2'"),
    ):
        with pytest.raises(UnsafePickleError, match=phrase):
            load_plain_pickle(write(tmp_path, pickle.dumps({"data": value}, protocol=2)))


def test_numpy_names_used_other_than_numpy_does_are_refused(tmp_path):
    # ndarray((10**6, 10**6)) would allocate 1 TB: the name stands for an inert marker, not the class
    ndarray_call = b"\x80\x02cnumpy\nndarray\n" + pickle.dumps((10**6, 10**6), protocol=2)[2:-1] + b"\x85R."
    rot13 = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    reconstruct = b"\x80\x02cnumpy._core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R."
    for payload, phrase in (
        (ndarray_call, "not callable"),
        (rot13, "rot13"),
        (reconstruct, "_reconstruct call"),
    ):
        with pytest.raises((UnsafePickleError, TypeError), match=phrase):
            load_plain_pickle(write(tmp_path, payload))


def test_array_data_that_do_not_match_the_shape_are_refused(tmp_path):
    payload = pickle.dumps({"data": np.arange(6, dtype=np.uint8)}, protocol=2)
    short = payload.replace(b"\x00\x01\x02\x03\x04\x05", b"\x00\x01\x02\x03\x04")  # 5 bytes for 6 elements
    short = short.replace(b"X\x06\x00\x00\x00\x00\x01", b"X\x05\x00\x00\x00\x00\x01")
    with pytest.raises(UnsafePickleError, match="shape"):
        load_plain_pickle(write(tmp_path, short))
