"""On-disk cache of decoded datasets, safe when several MPI ranks load at once.

Files are written under a temporary name and renamed into place (atomic on POSIX), so a
reader sees either nothing or a complete file. A lock file serializes the builders so that
ranks sharing a node wait for one decode instead of all decoding in parallel.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def cache_dir() -> Path:
    """$FEDMPI_CACHE, else ~/.cache/fedmpi: never inside the repository."""
    root = os.environ.get("FEDMPI_CACHE") or Path.home() / ".cache" / "fedmpi"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def read(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it does not exist yet."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        return None


def write(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: uint8 images load faster than they inflate
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users of a shared cache must read it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` + ".lock"; a no-op where locks are unsupported."""
    with open(str(path) + ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # e.g. a parallel filesystem mounted without flock: rename still protects
            pass
        yield
