"""Reading result files in tests, including files another process is still writing."""

from __future__ import annotations

from pathlib import Path

import h5py


def attrs(path: Path) -> dict:
    with h5py.File(path, "r", locking=False) as f:
        return {k: f.attrs[k] for k in f.attrs}


def rounds(path: Path) -> dict:
    with h5py.File(path, "r", locking=False) as f:
        return {k: f["rounds"][k][()] for k in f["rounds"]}


def completed_rounds(path: Path) -> int:
    """Rounds in a file another process is writing (0 while it is absent or mid-write)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return len(f["rounds"]["round"])
    except (OSError, KeyError):
        return 0
