"""Checksums that turn silent corruption of a results file into a `ResultsError`.

HDF5's default file format (kept for compatibility and crash safety, see
`hdf.py`) checksums none of its metadata, and a flipped bit in an attribute, a
dataset's shape or a chunk index changes what a reader gets without any error.
So the writer stores, at every flush, a root attribute `checksums` (JSON):

- `attrs`: sha256 over every root attribute but `checksums` itself and the
  attributes of the table groups (code -> name maps), as canonical JSON;
- `tables.<t>.rows` and `tables.<t>.sha256`: the number of rows of each table
  at that flush and a sha256 of exactly those rows, column by column in schema
  order, as little-endian schema dtypes (`/clients` adds the class histogram).

Rows are hashed in blocks of `BLOCK_ROWS`, so a writer appending rows re-hashes
only the last block at each flush. The checkpoint group carries its own
`sha256` over its round and every tensor (name, dtype, shape, bytes). On top,
every table column is written with HDF5's Fletcher32 filter, which names the
damaged column when a chunk's bytes changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedmpi.results import schema

CHECKSUMS_ATTR = "checksums"
ALGORITHM = "sha256"
BLOCK_ROWS = 1024


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str,
                      separators=(",", ":")).encode("utf-8", "surrogatepass")


def attrs_digest(root: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]]) -> str:
    """sha256 of the root attributes (but `checksums`) and the table groups' attributes.

    Values must be plain Python (see `hdf.plain`), as both the writer and the reader
    read them back from the file.
    """
    payload = {"/": {k: v for k, v in root.items() if k != CHECKSUMS_ATTR},
               **{f"/{name}": dict(attrs) for name, attrs in groups.items()}}
    return hashlib.sha256(_canonical(payload)).hexdigest()


class TableDigest:
    """sha256 of a table's rows, fed as they are appended.

    Full blocks of `BLOCK_ROWS` rows are hashed once; only the rows of the
    last, partial block are hashed again at each `hexdigest()`, so a writer
    that appends and flushes every round pays for one block, not the table.
    """

    def __init__(self, table: str, fields: Sequence[schema.Field] | None = None):
        self.table = table
        fields = schema.TABLES[table] if fields is None else fields  # an older layout
        self.dtypes = [np.dtype(f.dtype).newbyteorder("<") for f in fields]
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._blocks: list[bytes] = []
        self._tail = [np.empty(0, dtype) for dtype in self.dtypes]

    def extend(self, columns: Sequence[Any]) -> None:
        """Append rows: `columns` in schema order, of equal length."""
        cols = [np.ascontiguousarray(np.asarray(c).reshape(-1), dtype=dtype)
                for c, dtype in zip(columns, self.dtypes, strict=True)]
        if len({len(c) for c in cols}) != 1:
            raise ValueError(f"/{self.table}: columns of unequal length")
        self.n += len(cols[0])
        tail = [np.concatenate([t, c]) for t, c in zip(self._tail, cols)]
        while len(tail[0]) >= BLOCK_ROWS:
            self._blocks.append(self._hash([t[:BLOCK_ROWS] for t in tail]))
            tail = [t[BLOCK_ROWS:] for t in tail]
        self._tail = tail

    def hexdigest(self, extra: bytes = b"") -> str:
        h = hashlib.sha256(f"{self.table}:{self.n}:".encode())
        for block in self._blocks:
            h.update(block)
        if len(self._tail[0]):
            h.update(self._hash(self._tail))
        h.update(extra)
        return h.hexdigest()

    @staticmethod
    def _hash(columns: Sequence[np.ndarray]) -> bytes:
        h = hashlib.sha256()
        for col in columns:
            h.update(col.tobytes())
        return h.digest()


def table_digest(table: str, columns: Sequence[Any], extra: bytes = b"",
                 fields: Sequence[schema.Field] | None = None) -> str:
    """The digest of a whole table at once (what a reader checks); `fields`: the
    columns of a file written before some of `schema.ADDED_COLUMNS`."""
    d = TableDigest(table, fields)
    d.extend(columns)
    return d.hexdigest(extra)


def histogram_bytes(hist: np.ndarray) -> bytes:
    """What of /clients/class_histogram goes into the /clients digest."""
    hist = np.ascontiguousarray(hist, dtype=np.dtype(schema.CLIENT_HISTOGRAM.dtype)
                                .newbyteorder("<"))
    return f"class_histogram:{hist.shape}:".encode() + hist.tobytes()


def checkpoint_digest(round: int, tensors: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of a checkpoint: its round and every (stored path, array), in path order."""
    h = hashlib.sha256(f"checkpoint:{int(round)}:".encode())
    for path, arr in sorted(tensors, key=lambda item: item[0]):
        arr = np.asarray(arr)
        h.update(f"{path}|{arr.dtype.str}|{arr.shape}|".encode("utf-8", "surrogatepass"))
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def dumps(attrs: str, tables: Mapping[str, tuple[int, str]]) -> str:
    return json.dumps({"algorithm": ALGORITHM, "block_rows": BLOCK_ROWS, "attrs": attrs,
                       "tables": {t: {"rows": n, "sha256": d} for t, (n, d) in tables.items()}},
                      sort_keys=True)


def loads(text: Any) -> dict[str, Any]:
    """Parse a `checksums` attribute; ValueError unless it has the expected shape."""
    if not isinstance(text, str) or not text:
        raise ValueError("missing")
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("algorithm") != ALGORITHM \
            or data.get("block_rows") != BLOCK_ROWS or not isinstance(data.get("attrs"), str):
        raise ValueError("unknown format")
    tables = data.get("tables")
    if not isinstance(tables, dict) or set(tables) != set(schema.TABLES):
        raise ValueError("unknown tables")
    for entry in tables.values():
        if not isinstance(entry, dict) or not isinstance(entry.get("rows"), int) \
                or entry["rows"] < 0 or not isinstance(entry.get("sha256"), str):
            raise ValueError("bad table entry")
    return data
