"""Reading a results file's attributes and tables, checked against its checksums.

Plain numpy here (no pandas), so that the writer can check a file it is asked
to resume and `read_checkpoint` the attributes it returns. Every failure is a
`ResultsError` naming the file and the object.

Schema 2 files carry `checksums` (see `integrity.py`): what is returned is
exactly what the writer flushed last, or an error. Schema 1 files (written
before checksums existed) are read as before, unchecked: each table is cut to
its shortest column, so a row half-appended at a crash never shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from fedmpi.results import hdf, integrity, schema
from fedmpi.results.errors import ResultsError
from fedmpi.results.hdf import check_type, guard

MAX_HISTOGRAM_BYTES = 1 << 30  # a larger extent can only be a damaged header
DAMAGED = "the file is damaged or was modified outside fedmpi"


@dataclass
class Attrs:
    root: dict[str, Any]  # plain values
    groups: dict[str, dict[str, Any]]  # table group -> its attributes
    checksums: dict[str, Any] | None  # parsed `checksums`; None for schema 1

    @property
    def checked(self) -> bool:
        return self.checksums is not None


@dataclass
class Content:
    attrs: Attrs
    tables: dict[str, dict[str, np.ndarray]]  # table -> column -> values
    histogram: np.ndarray | None  # /clients/class_histogram


def read_attrs(f: h5py.File, path: str | os.PathLike) -> Attrs:
    """Root and table-group attributes; checked against `checksums` from schema 2 on."""
    path = os.fspath(path)
    root = hdf.read_attrs(path, f, "/")
    with guard(path, "/"):
        is_results = "rounds" in f
    version = root.get("schema_version")
    if not is_results or "schema_version" not in root:
        raise ResultsError(f"{path}: not a fedmpi results file")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultsError(f"{path}: /@schema_version: invalid value {version!r}; {DAMAGED}")
    if version > schema.SCHEMA_VERSION:
        raise ResultsError(f"{path}: schema_version {version} is newer than this fedmpi "
                           f"reads ({schema.SCHEMA_VERSION}); upgrade fedmpi")
    groups = {}
    for table in schema.TABLES:
        with guard(path, f"/{table}"):
            present = table in f
        if present:
            with guard(path, f"/{table}"):
                group = f[table]
            groups[table] = hdf.read_attrs(path, group, f"/{table}")
    if version < 2:
        return Attrs(root, groups, None)
    try:
        checksums = integrity.loads(root.get(integrity.CHECKSUMS_ATTR))
    except ValueError as exc:
        raise ResultsError(f"{path}: /@{integrity.CHECKSUMS_ATTR}: missing or unreadable "
                           f"({exc}); {DAMAGED}") from None
    if integrity.attrs_digest(root, groups) != checksums["attrs"]:
        raise ResultsError(f"{path}: root attributes (config, status, ...) do not match "
                           f"their checksum; {DAMAGED}")
    return Attrs(root, groups, checksums)


def _column(path: str, g: h5py.Group, table: str, field: schema.Field, n: int | None,
            checked: bool) -> h5py.Dataset:
    obj = f"/{table}/{field.name}"
    with guard(path, obj):
        ds = g[field.name]
        shape = ds.shape
        check_type(path, obj, ds.id.get_type(), field.dtype if checked else None)
    if checked:
        if len(shape) != 1:
            raise ResultsError(f"{path}: {obj}: shape {shape}, expected 1-D; {DAMAGED}")
        if n is not None and shape[0] < n:
            raise ResultsError(f"{path}: {obj}: {shape[0]} rows, its checksum covers {n}; "
                               f"{DAMAGED}")
    elif len(shape) != 1:
        raise ResultsError(f"{path}: {obj}: shape {shape}, expected 1-D; {DAMAGED}")
    return ds


def _histogram(path: str, g: h5py.Group, rows: int) -> np.ndarray | None:
    obj = "/clients/class_histogram"
    with guard(path, obj):
        if "class_histogram" not in g:
            return None
        ds = g["class_histogram"]
        shape = ds.shape
        check_type(path, obj, ds.id.get_type(), schema.CLIENT_HISTOGRAM.dtype)
        if len(shape) != 2 or shape[0] < rows or ds.dtype.itemsize * np.prod(
                shape, dtype=float) > MAX_HISTOGRAM_BYTES:
            raise ResultsError(f"{path}: {obj}: shape {shape}, expected (clients >= {rows}, "
                               f"classes); {DAMAGED}")
        return ds[()]


def read_content(f: h5py.File, path: str | os.PathLike) -> Content:
    """Attributes and every table, checked (schema 2) or cut to the shortest column (1)."""
    path = os.fspath(path)
    attrs = read_attrs(f, path)
    tables: dict[str, dict[str, np.ndarray]] = {}
    histogram = None
    for table, fields in schema.TABLES.items():
        if table not in attrs.groups:
            if attrs.checked:
                raise ResultsError(f"{path}: /{table}: missing; {DAMAGED}")
            tables[table] = {}
            continue
        with guard(path, f"/{table}"):
            g = f[table]
            present = [fld for fld in fields if fld.name in g]
        missing = sorted({fld.name for fld in fields if not fld.optional}
                         - {fld.name for fld in present})
        older = bool(missing) and set(missing) <= set(schema.ADDED_COLUMNS.get(table, ()))
        if attrs.checked and missing and not older:
            raise ResultsError(f"{path}: /{table}: columns {missing} missing; {DAMAGED}")
        n = attrs.checksums["tables"][table]["rows"] if attrs.checked else None
        datasets = {fld.name: _column(path, g, table, fld, n, attrs.checked) for fld in present}
        if n is None:
            n = min((ds.shape[0] for ds in datasets.values()), default=0)
        cols = {}
        for name, ds in datasets.items():
            with guard(path, f"/{table}/{name}"):
                cols[name] = ds[:n]
        if table == "clients":
            histogram = _histogram(path, g, n)
        if attrs.checked:
            extra = b"" if histogram is None else integrity.histogram_bytes(histogram)
            if table == "clients" and histogram is None:
                raise ResultsError(f"{path}: /clients/class_histogram: missing; {DAMAGED}")
            names = [fld.name for fld in present]  # optional columns only where written
            digest = integrity.table_digest(table, [cols[c] for c in names], extra, names)
            if digest != attrs.checksums["tables"][table]["sha256"]:
                raise ResultsError(f"{path}: /{table}: its {n} rows do not match their "
                                   f"checksum; {DAMAGED}")
        for fld in fields:  # an optional column this file predates: NaN, as never written
            if fld.optional and fld.name not in cols:
                cols[fld.name] = np.full(n, np.nan, dtype=fld.dtype)
        if attrs.checked and older:  # written before these columns existed: none of it
            cols.update({name: np.zeros(n, dtype=np.dtype(next(
                fld.dtype for fld in fields if fld.name == name))) for name in missing})
        tables[table] = {fld.name: cols[fld.name] for fld in fields if fld.name in cols}
    return Content(attrs, tables, histogram)
