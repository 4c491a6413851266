"""Small h5py helpers shared by the writer, the checkpoint and the reader.

Every open uses `locking=False`: `fedmpi watch` must read a file while rank 0
holds it open for writing, and HDF5's file locks would refuse that; one writer
per file is enforced by `lock.WriterLock` (a sidecar lock file) instead. The default
libver is kept on purpose: with 'latest' (superblock v3) a process killed while
writing leaves a status flag that blocks reopening, which defeats the point of
flushing after every round.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5t

from fedmpi.results.errors import ResultsError


def open_read(path: str | os.PathLike) -> h5py.File:
    return h5py.File(path, "r", locking=False)


@contextmanager
def guard(path: str | os.PathLike, obj: str) -> Iterator[None]:
    """Turn whatever h5py raises on a damaged file into a ResultsError naming file and object.

    A damaged HDF5 file can make h5py raise OSError, RuntimeError, KeyError,
    ValueError, TypeError, UnicodeDecodeError or MemoryError (a flipped extent);
    callers should see one kind of error that says where.
    """
    try:
        yield
    except ResultsError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above: the file is data, any failure is its
        raise ResultsError(f"{os.fspath(path)}: {obj}: unreadable, the file is damaged "
                           f"({type(exc).__name__}: {exc})") from exc


_NUMERIC = ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
MAX_ATTR_VALUES = 1 << 16  # more values in one attribute can only be a damaged header


@functools.cache
def _known_types() -> tuple[tuple[np.dtype, h5t.TypeID], ...]:
    dtypes = [np.dtype(order + code) for code in _NUMERIC for order in "<>"]
    dtypes += [np.dtype(bool), h5py.string_dtype("utf-8"), h5py.string_dtype("ascii")]
    return tuple((dt, h5t.py_create(dt, logical=True)) for dt in dtypes)


def known_dtype(type_id: h5t.TypeID) -> np.dtype | None:
    """The numpy dtype whose exact HDF5 type `type_id` is; None for anything else.

    Reading converts from the file's type, and HDF5 can crash (not raise) while
    converting from a damaged type (seen: a VL string type with a flipped bit);
    so a value is read only when its type is one that fedmpi writes, exactly.
    """
    for dtype, known in _known_types():
        if type_id.equal(known):
            return dtype
    return None


def check_type(path: str | os.PathLike, obj: str, type_id: h5t.TypeID,
               expected: np.dtype | None = None) -> np.dtype:
    """The dtype of `type_id` if it is a known (and the `expected`) one, else ResultsError."""
    dtype = known_dtype(type_id)
    if dtype is None or (expected is not None and dtype != np.dtype(expected)):
        want = f"expected {np.dtype(expected)}" if expected is not None else "not a type fedmpi writes"
        raise ResultsError(f"{os.fspath(path)}: {obj}: unexpected HDF5 datatype ({want}); "
                           "the file is damaged")
    return dtype


def read_attrs(path: str | os.PathLike, obj: h5py.HLObject, where: str) -> dict[str, Any]:
    """Every attribute of `obj` as plain Python values, type-checked before reading."""
    with guard(path, where):
        names = list(obj.attrs)
    out = {}
    for name in names:
        label = f"{where.rstrip('/')}/@{name}"
        with guard(path, label):
            aid = h5a.open(obj.id, name.encode("utf-8", "surrogateescape"))
            check_type(path, label, aid.get_type())
            shape = aid.shape
            if shape is not None and int(np.prod(shape, dtype=float)) > MAX_ATTR_VALUES:
                raise ResultsError(f"{os.fspath(path)}: {label}: shape {shape}; "
                                   "the file is damaged")
            out[name] = plain(obj.attrs[name])
    return out


def fsync(f: h5py.File) -> None:
    """Push what h5py flushed out of the OS cache too, so a power loss keeps it."""
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # not the default sec2 driver: nothing we can fsync
        return
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plain(value: Any) -> Any:
    """An attribute value as a plain Python object (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def attrs_dict(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: plain(v) for k, v in obj.attrs.items()}


def json_attr(obj: h5py.HLObject, name: str, default: Any) -> Any:
    """A JSON-text attribute, parsed with json.loads only (file content is data, never code)."""
    text = plain(obj.attrs.get(name, ""))
    if not isinstance(text, str) or not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default
