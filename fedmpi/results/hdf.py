"""Small h5py helpers shared by the writer, the checkpoint and the reader.

Every open uses `locking=False`: `fedmpi watch` must read a file while rank 0
holds it open for writing, and HDF5's file locks would refuse that. The default
libver is kept on purpose: with 'latest' (superblock v3) a process killed while
writing leaves a status flag that blocks reopening, which defeats the point of
flushing after every round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np


def open_read(path: str | os.PathLike) -> h5py.File:
    return h5py.File(path, "r", locking=False)


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
