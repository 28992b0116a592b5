"""Read a pickle that may only hold plain data and numeric numpy arrays, running no code.

The official CIFAR batches are Python pickles of dicts of lists, strings, bytes, ints and uint8
numpy arrays. ``pickle.load`` calls whatever a file names (``os.system`` as readily as
``numpy.ndarray``), so a batch from a stranger could run anything. :func:`load_plain_pickle`
refuses every name but the few an array's pickle uses, and for those hands the unpickler inert
stand-ins that only record and check their arguments; once the whole file is read, the arrays
are built here with ``numpy.frombuffer``. Nothing named in the file is ever called.

An array pickles (protocol 2, as in the official files) as::

    _reconstruct(ndarray, (0,), b"b")              an empty array, then its state:
    BUILD (1, shape, dtype, fortran_order, raw)    dtype = dtype("u1", False, True) + BUILD (3, "|", ...)

and a bytes object written by Python 3 below protocol 3 as ``_codecs.encode(text, "latin1")``
(``bytes()`` when empty).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

# Only numbers: bool, signed and unsigned integers, floats. Object arrays are what runs code.
NUMERIC_TYPESTRS = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


class UnsafePickleError(pickle.UnpicklingError):
    """The file names something a plain-data pickle does not hold; nothing was called."""


class _NdarrayName:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``; not callable."""


_NDARRAY = _NdarrayName()


class _Dtype:
    """Stands for ``numpy.dtype(typestr, align, copy)`` and its BUILD state; numeric types only."""

    dtype: np.dtype | None = None

    def __init__(self, typestr: object, align: object = False, copy: object = True) -> None:
        if not isinstance(typestr, str) or typestr not in NUMERIC_TYPESTRS:
            raise UnsafePickleError(f"a numpy dtype {typestr!r} (only numeric dtypes are read)")
        self.dtype = np.dtype(typestr)

    def __setstate__(self, state: object) -> None:
        # (version 3 or 4, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if self.dtype is None or not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafePickleError("a numpy dtype state that numpy does not write")
        byteorder, subarray, names, fields = state[1:5]
        if byteorder not in ("<", ">", "|", "=") or (subarray, names, fields) != (None, None, None):
            raise UnsafePickleError("a structured or sub-array numpy dtype (only plain numeric dtypes are read)")
        if byteorder in "<>":
            self.dtype = self.dtype.newbyteorder(byteorder)


class _Array:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b"b")`` and the array's BUILD state."""

    array: np.ndarray | None = None

    def __init__(self, cls: object, shape: object, typecode: object) -> None:
        if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise UnsafePickleError("a numpy _reconstruct call that numpy does not write")

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]  # version 1; a 4-tuple is the older, unversioned form
        if not isinstance(state, tuple) or len(state) != 4:
            raise UnsafePickleError("a numpy array state that numpy does not write")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise UnsafePickleError(f"a numpy array of shape {shape!r}")
        if not isinstance(dtype, _Dtype) or dtype.dtype is None or not isinstance(fortran, bool):
            raise UnsafePickleError("a numpy array without a numeric dtype")
        if isinstance(raw, str):  # a Python 2 str, read with encoding="latin1"
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes):  # a list here is an object array
            raise UnsafePickleError("a numpy array of Python objects (only numeric arrays are read)")
        if len(raw) != math.prod(shape) * dtype.dtype.itemsize:
            raise UnsafePickleError(f"a numpy array of shape {shape} whose data have {len(raw)} bytes")
        flat = np.frombuffer(bytearray(raw), dtype=dtype.dtype)  # a writable copy of the bytes
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _latin1_encode(text: object, encoding: object = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 pickles ``bytes`` at protocol 2; latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args: object) -> bytes:
    """``bytes()`` as Python 3 pickles ``b""`` below protocol 3; never ``bytes(n)``, which allocates n bytes."""
    if args:
        raise UnsafePickleError("bytes() with arguments")
    return b""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,  # numpy 1.x names
    ("numpy._core.multiarray", "_reconstruct"): _Array,  # numpy 2.x names
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "bytes"): _empty_bytes,  # protocol 2 names builtins by their Python 2 module
    ("builtins", "bytes"): _empty_bytes,
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid: object) -> Any:
        raise UnsafePickleError("a persistent id")


_PLAIN = (str, bytes, int, float, bool, type(None))


def _resolve(value: object, seen: dict[int, Any]) -> Any:
    """Replace the stand-ins by real arrays; refuse anything that is not plain data."""
    if isinstance(value, _PLAIN):
        return value
    if id(value) in seen:  # shared or cyclic references stay shared
        return seen[id(value)]
    if isinstance(value, _Array):
        if value.array is None:
            raise UnsafePickleError("a numpy array without data")
        seen[id(value)] = value.array
        return value.array
    if isinstance(value, list):
        items: list[Any] = []
        seen[id(value)] = items
        items.extend(_resolve(item, seen) for item in value)
        return items
    if isinstance(value, dict):
        entries: dict[Any, Any] = {}
        seen[id(value)] = entries
        for key, item in value.items():
            if not isinstance(key, (str, bytes, int)):
                raise UnsafePickleError(f"a dict key of type {type(key).__name__}")
            entries[key] = _resolve(item, seen)
        return entries
    if isinstance(value, tuple):
        return tuple(_resolve(item, seen) for item in value)
    raise UnsafePickleError(f"a {type(value).__name__} object")


def load_plain_pickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only dicts, lists, tuples, str, bytes, numbers and numeric numpy arrays.

    Python 2 strings are read as latin-1, as the official CIFAR files need.

    Args:
        path: the pickle file.

    Raises:
        UnsafePickleError: the file names anything else; nothing it names was called.
        Exception: whatever a damaged pickle makes ``pickle`` raise (``UnpicklingError``, ``EOFError``...).
    """
    with open(path, "rb") as f:
        raw = _PlainUnpickler(f, encoding="latin1").load()
    try:
        return _resolve(raw, {})
    except RecursionError:
        raise UnsafePickleError("data nested too deeply") from None
