"""Reading result files in tests, including files another process is still writing,
and flipping bits of them."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd


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


# ------------------------------------------------------------------ damaged files

TABLES = ("runs", "rounds", "messages", "clients")


def content(path) -> tuple[dict, list]:
    """Everything `load` returns, with the file name taken out (copies differ by it)."""
    from fedmpi.results import load

    res = load(path)
    frames = {t: getattr(res, t).drop(columns=["run", "path"], errors="ignore") for t in TABLES}
    return frames, list(res.configs.values())


def assert_same_content(a, b) -> None:
    for t in TABLES:
        pd.testing.assert_frame_equal(a[0][t], b[0][t], check_exact=True, obj=t)
    assert a[1] == b[1]


def assert_same_checkpoint(a, b) -> None:
    assert (a.round, a.rng, a.attrs) == (b.round, b.rng, b.attrs)
    assert a.memories.keys() == b.memories.keys()
    for mine, theirs in ((a.global_state, b.global_state),
                         *((a.memories[k], b.memories[k]) for k in a.memories)):
        assert mine.keys() == theirs.keys()
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]), k


def raw_data_mask(path) -> np.ndarray:
    """Bytes of the file that hold dataset values (chunks, contiguous storage)."""
    mask = np.zeros(os.path.getsize(path), bool)

    def visit(_, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks:
            for i in range(obj.id.get_num_chunks()):
                info = obj.id.get_chunk_info(i)
                mask[info.byte_offset:info.byte_offset + info.size] = True
        elif obj.id.get_offset() is not None:
            mask[obj.id.get_offset():obj.id.get_offset() + obj.id.get_storage_size()] = True

    with h5py.File(path, "r", locking=False) as f:
        f.visititems(visit)
    return mask


def flip_offsets(path, n_meta: int, n_values: int, n_any: int, seed: int = 10) -> list[int]:
    """A seeded sample of byte offsets: mostly metadata (object headers, heaps, B-trees,
    attribute strings), some dataset values, some anywhere (free space included)."""
    data = np.fromfile(path, np.uint8)
    raw = raw_data_mask(path)
    rng = np.random.default_rng(seed)
    meta = np.flatnonzero(~raw & (data != 0))
    values = np.flatnonzero(raw & (data != 0))
    picks = [rng.choice(meta, n_meta, replace=False), rng.choice(values, n_values, replace=False),
             rng.choice(len(data), n_any, replace=False)]
    return sorted({int(i) for p in picks for i in p})


def read_flipped(path, offsets, scratch) -> tuple[dict[str, int], list[str]]:
    """Flip one bit at each offset (a copy each time) and read the copy back with `load`
    and `read_checkpoint`. Returns counts of outcomes and the reads that went wrong:
    any exception but ResultsError (or one not naming the file), or other content."""
    from fedmpi.results import ResultsError, read_checkpoint, reader

    data = np.fromfile(path, np.uint8)
    good = content(path), read_checkpoint(path)
    outcomes, wrong = {"same": 0, "error": 0}, []
    wait, reader.RETRY_S = reader.RETRY_S, 0.0  # copies nobody writes: no flush to wait for
    try:
        _flip_all(data, offsets, scratch, good, outcomes, wrong)
    finally:
        reader.RETRY_S = wait
    return outcomes, wrong


def _flip_all(data, offsets, scratch, good, outcomes, wrong) -> None:
    from fedmpi.results import ResultsError, read_checkpoint

    for off in offsets:
        flipped = data.copy()
        flipped[off] ^= 1 << (off % 8)
        flipped.tofile(scratch)
        for i, (what, read, same) in enumerate((("load", content, assert_same_content),
                                                ("checkpoint", read_checkpoint,
                                                 assert_same_checkpoint))):
            try:
                got = read(scratch)
            except ResultsError as exc:
                if str(scratch) not in str(exc):
                    wrong.append(f"offset {off} {what}: error without the file name: {exc}")
                outcomes["error"] += 1
                continue
            except Exception as exc:  # noqa: BLE001 - exactly what must not happen
                wrong.append(f"offset {off} {what}: {type(exc).__name__}: {exc}")
                continue
            try:
                same(good[i], got)
                outcomes["same"] += 1
            except AssertionError as exc:
                wrong.append(f"offset {off} {what}: other data, no error: {exc}"[:300])
