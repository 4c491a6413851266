"""ResultsWriter: the one HDF5 file of a run, written by rank 0 only.

One writer per file: the writer holds `lock.WriterLock` (an exclusive flock on
`.<name>.lock`) from before it reads or creates anything until it closes.

Readable from the moment it exists: the skeleton (layout, attributes, status
'running', checksums) is built under a hidden temporary name, flushed and
fsynced, and only then linked into place, so a process killed at start-up
leaves either no file or a complete one that `--resume` starts over. With
`overwrite` the temporary replaces the old file only at the first `flush()`
(the server's, after a round), so a run that fails before that keeps the old
results. Temporaries are named `.<name>.<pid>.<host>.tmp`; those of dead
processes on this host are removed by the next writer of the same file.

Every round the server appends its rows, saves the checkpoint and flushes
(checksums + h5py flush + fsync), so a process killed between rounds leaves a
file that opens with every completed round and status 'running'. Columns and
attributes come from `fedmpi.results.schema`; anything not in the schema is
refused, so a typo cannot silently become a new column.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import shlex
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fedmpi import __version__
from fedmpi.results import checkpoint as _ckpt
from fedmpi.results import integrity, schema
from fedmpi.results.checkpoint import Checkpoint, read_checkpoint
from fedmpi.results.errors import ResultsError, ResultsExistError
from fedmpi.results.hdf import fsync, fsync_dir, plain
from fedmpi.results.lock import WriterLock

__all__ = ["Checkpoint", "ResultsExistError", "ResultsWriter", "read_checkpoint", "utc_now"]

_CHUNK_ROWS = {"rounds": 256, "messages": 4096, "clients": 1024}
_ROOT = {f.name: f for f in (*schema.ROOT_ATTRS, *schema.EXTRA_ROOT_ATTRS)}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _dist_version(name: str) -> str:
    # Package metadata, not an import: results must not pull in torch or MPI.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _default_attrs() -> dict[str, Any]:
    out: dict[str, Any] = {f.name: ("" if f.dtype == "str" else -1) for f in schema.ROOT_ATTRS}
    out.update(
        schema_version=schema.SCHEMA_VERSION,
        fedmpi_version=__version__,
        numpy_version=np.__version__,
        torch_version=_dist_version("torch"),
        mpi4py_version=_dist_version("mpi4py"),
        hosts="[]",
        devices="[]",
        command=shlex.join(sys.argv),
        start_time=utc_now(),
        status="running",
        completed_rounds=0,
    )
    return out


def _attr_value(name: str, value: Any) -> Any:
    """A root attribute as stored: documented ones in their schema type, others as given."""
    if not name or "/" in name:
        raise ValueError(f"invalid results attribute name {name!r}")
    if name not in _ROOT:  # undocumented extra: keep it, but only as plain data
        if isinstance(value, (dict, list, tuple)):
            return json.dumps(value)
        if value is None:
            return ""
        if isinstance(value, (str, bool, int, float, np.generic)):
            return value
        raise ValueError(f"results attribute {name!r}: cannot store {type(value).__name__}")
    if _ROOT[name].dtype == "str":
        if isinstance(value, (dict, list, tuple)):
            return json.dumps(value, sort_keys=isinstance(value, dict))
        return "" if value is None else str(value)
    if value is None:
        return -1
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"results attribute {name!r} must be an integer, got {value!r}")
    return int(value)


def _clean_attr(value: Any) -> Any:
    """A string as HDF5 can store it; every root attribute passes here.

    HDF5 variable-length strings end at the first NUL, so h5py refuses one
    inside (Open MPI's `MPI_Get_library_version` ends in one), and UTF-8 cannot
    encode the lone surrogates Python uses for undecodable bytes (in `sys.argv`
    or a path). Both would abort the run at start-up over metadata: drop NULs,
    write undecodable bytes as backslash escapes.
    """
    if not isinstance(value, str):
        return value
    return value.replace("\0", "").encode("utf-8", "backslashreplace").decode("utf-8")


def _column(table: str, field: schema.Field, values: Any) -> np.ndarray:
    """`values` as the column's dtype, refusing lossy casts (NaN or 2.5 into an int column)."""
    arr = np.asarray(values)
    dtype = np.dtype(field.dtype)
    if dtype.kind in "iu" and arr.size:
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"/{table}/{field.name}: expected integers, got {arr.dtype}")
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
            raise ValueError(f"/{table}/{field.name}: expected integers, got {values!r}")
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise ValueError(f"/{table}/{field.name}: values outside {dtype} range")
    return arr.astype(dtype)


def _check_names(table: str, given: Any) -> None:
    expected = schema.columns(table)
    unknown = sorted(set(given) - set(expected))
    missing = [c for c in schema.required_columns(table) if c not in given]
    if unknown or missing:
        raise ValueError(f"/{table}: unknown columns {unknown}, missing columns {missing}")


def _with_optional(table: str, given: Mapping[str, Any], n: int | None) -> dict[str, Any]:
    """`given` plus NaN for every optional column it lacks (`n` values, None: one)."""
    out = dict(given)
    for f in schema.TABLES[table]:
        if f.optional and f.name not in out:
            out[f.name] = np.nan if n is None else np.full(n, np.nan, dtype=f.dtype)
    return out


def _new_column(g: h5py.Group, table: str, fld: schema.Field) -> h5py.Dataset:
    ds = g.create_dataset(fld.name, shape=(0,), maxshape=(None,), chunks=(_CHUNK_ROWS[table],),
                          dtype=fld.dtype, fletcher32=True)
    ds.attrs["units"] = fld.units
    ds.attrs["description"] = fld.description
    return ds


def temp_path(path: Path) -> Path:
    """Where a new file is built before it replaces (or becomes) `path`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{socket.gethostname()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries of `path` left by dead processes on this host; return them.

    Names are `.<name>.<pid>.<host>.tmp` (earlier versions wrote `.<name>.<pid>.tmp`,
    taken as this host's). One of a live pid, or of another host (whose pids
    cannot be checked from here), is kept.
    """
    prefix, host = f".{path.name}.", socket.gethostname()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    removed = []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid_text, _, owner = name[len(prefix):-len(".tmp")].partition(".")
        if not pid_text.isdigit() or (owner and owner != host):
            continue
        pid = int(pid_text)
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            (path.parent / name).unlink()
        except FileNotFoundError:
            continue
        removed.append(path.parent / name)
    return removed


class ResultsWriter:
    def __init__(
        self,
        path: str | os.PathLike,
        *,
        attrs: Mapping[str, Any],
        overwrite: bool = False,
        resume: bool = False,
        lock: WriterLock | None = None,
    ):
        """Create (or with `resume` reopen) `path`, holding its writer lock until close().

        `lock` is a lock the caller already took on `path` (fedmpi run takes it on
        rank 0 before its configuration check ends); without one the writer takes
        it and raises `ResultsLockedError` if another process holds it.
        """
        if overwrite and resume:
            raise ValueError("ResultsWriter: overwrite and resume exclude each other")
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._tmp: Path | None = None  # set while the file lives under its temporary name
        self._rounds_written = 0
        # Checksum state, kept up to date as rows are appended (see _seal); a table in
        # _reload is hashed again from the file (after a resume, a truncation).
        self._digests = {t: integrity.TableDigest(t) for t in schema.TABLES}
        self._reload: set[str] = set(schema.TABLES) if resume else set()
        self._hist_bytes: bytes | None = None if resume else integrity.histogram_bytes(
            np.zeros((0, 0)))
        self._datasets: dict[str, list[h5py.Dataset]] = {}
        if lock is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = WriterLock.acquire(self.path)
        self._lock: WriterLock | None = lock
        try:
            self.stale_removed = remove_stale_temporaries(self.path)
            if resume:
                self._file = self._open_resume()
                self.set_attrs(**{**dict(attrs), "status": "running", "end_time": "",
                                  "failure_reason": "",
                                  "schema_version": schema.SCHEMA_VERSION})
            else:
                self._create(dict(attrs), overwrite)
        except BaseException:
            self._abandon()
            raise

    # ------------------------------------------------------------------ opening

    def _create(self, attrs: dict[str, Any], overwrite: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replacing = self.path.exists()
        if replacing and not overwrite:
            raise ResultsExistError(
                f"{self.path} exists; pass --overwrite to replace it (or --resume to continue)"
            )
        self._tmp = temp_path(self.path)
        self._file = h5py.File(self._tmp, "w", locking=False)
        self._create_layout()
        self.set_attrs(**{**_default_attrs(), **attrs})
        self._sync()  # a complete skeleton on disk before the file shows under its name
        if not replacing:
            self._publish()

    def _publish(self) -> None:
        """Give the temporary file its real name, never replacing a file made meanwhile."""
        try:
            os.link(self._tmp, self.path)
        except FileExistsError:
            raise ResultsExistError(f"{self.path} exists; pass --overwrite to replace it") \
                from None
        except OSError:  # a file system without hard links: the lock makes this safe enough
            if self.path.exists():
                raise ResultsExistError(f"{self.path} exists; pass --overwrite to replace it") \
                    from None
            os.replace(self._tmp, self.path)
        else:
            os.unlink(self._tmp)
        self._tmp = None
        fsync_dir(self.path.parent)

    def _abandon(self) -> None:
        """Undo a constructor that failed: close, drop the temporary, release the lock."""
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            self._file = None
        self._release()

    def _release(self) -> None:
        """Drop an unsealed temporary and release the writer lock (each at most once)."""
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _open_resume(self) -> h5py.File:
        if not self.path.exists():
            raise ResultsError(f"cannot resume: {self.path} does not exist")
        from fedmpi.results.hdf import open_read
        from fedmpi.results.verify import read_content

        # Checked read-only first: never extend a damaged file, nor write to it at all.
        try:
            f = open_read(self.path)
        except OSError as exc:
            raise ResultsError(f"cannot resume {self.path}: not a readable HDF5 file "
                               f"({exc})") from None
        with f:
            read_content(f, self.path)
        f = h5py.File(self.path, "r+", locking=False)
        try:
            self._add_optional_columns(f)
        except BaseException:
            f.close()
            raise
        return f

    @staticmethod
    def _add_optional_columns(f: h5py.File) -> None:
        """Give a file written before an optional column existed that column (NaN rows),
        so that it is extended like a new file (its checksums are recomputed at the
        next flush: every table is reloaded after a resume)."""
        for table, fields in schema.TABLES.items():
            g = f[table]
            n = min(g[c].shape[0] for c in schema.required_columns(table))
            for fld in fields:
                if fld.optional and fld.name not in g:
                    ds = _new_column(g, table, fld)
                    ds.resize((n,))
                    ds[...] = np.full(n, np.nan, dtype=fld.dtype)

    def _create_layout(self) -> None:
        f = self._file
        for table, fields in schema.TABLES.items():
            g = f.create_group(table)
            for fld in fields:
                _new_column(g, table, fld)
        h = schema.CLIENT_HISTOGRAM
        ds = f["clients"].create_dataset(h.name, shape=(0, 0), maxshape=(None, None),
                                         chunks=(256, 16), dtype=h.dtype, fletcher32=True)
        ds.attrs["units"] = h.units
        ds.attrs["description"] = h.description
        for name, text in schema.MESSAGE_GROUP_ATTRS.items():
            f["messages"].attrs[name] = text
        f["messages"].attrs["codecs"] = "{}"

    # ------------------------------------------------------------------ writing

    def set_attrs(self, **attrs: Any) -> None:
        values = {k: _clean_attr(_attr_value(k, v)) for k, v in attrs.items()}
        if values.get("status", "running") not in schema.STATUSES:
            raise ValueError(f"status {values['status']!r}; allowed: {', '.join(schema.STATUSES)}")
        for k, v in values.items():
            self._file.attrs[k] = v

    def set_codecs(self, codecs: Mapping[int, str]) -> None:
        """Record pipeline names for `/messages/codec_id` values (merged with earlier ones)."""
        g = self._file["messages"]
        known = json.loads(plain(g.attrs.get("codecs", "{}")) or "{}")
        known.update({str(int(k)): str(v) for k, v in codecs.items()})
        g.attrs["codecs"] = json.dumps(known, sort_keys=True)

    def write_clients(self, *, client: Any, worker: Any, samples: Any,
                      class_histogram: Any) -> None:
        g = self._file["clients"]
        cols = {f.name: _column("clients", f, v)
                for f, v in zip(schema.CLIENTS, (client, worker, samples))}
        hist = _column("clients", schema.CLIENT_HISTOGRAM, class_histogram)
        n = len(cols["client"])
        if any(c.ndim != 1 or len(c) != n for c in cols.values()):
            raise ValueError("/clients: client, worker and samples must be 1-D of equal length")
        if hist.ndim != 2 or hist.shape[0] != n:
            raise ValueError(f"/clients/class_histogram: expected shape ({n}, classes), "
                             f"got {hist.shape}")
        for name, col in cols.items():
            g[name].resize((n,))
            g[name][...] = col
        g["class_histogram"].resize(hist.shape)
        g["class_histogram"][...] = hist
        self._digests["clients"].reset()
        self._digests["clients"].extend([cols[c] for c in schema.columns("clients")])
        self._hist_bytes = integrity.histogram_bytes(hist)

    def append_round(self, row: Mapping[str, float | int]) -> None:
        _check_names("rounds", row)
        row = _with_optional("rounds", row, None)
        values = [(f.name, _column("rounds", f, row[f.name])) for f in schema.TABLES["rounds"]]
        for name, v in values:
            if v.ndim != 0:
                raise ValueError(f"/rounds/{name}: expected one value, got shape {v.shape}")
        self._append("rounds", dict(values))
        self._rounds_written += 1
        self._file.attrs["completed_rounds"] = self._file["rounds/round"].shape[0]

    def append_messages(self, columns: Mapping[str, np.ndarray] | np.ndarray) -> None:
        """Many /messages rows at once: a dict of equal-length columns (or a record array)."""
        if isinstance(columns, np.ndarray) and columns.dtype.names:
            columns = {n: columns[n] for n in columns.dtype.names}
        _check_names("messages", columns)
        columns = _with_optional("messages", columns, len(np.asarray(columns["round"])))
        cols = {f.name: _column("messages", f, columns[f.name]) for f in schema.TABLES["messages"]}
        lengths = {c.shape for c in cols.values()}
        if len(lengths) != 1 or len(next(iter(lengths))) != 1:
            raise ValueError(f"/messages: columns must be 1-D of equal length, got {lengths}")
        for name, codes in (("kind", schema.KIND_NAMES), ("direction", schema.DIRECTION_NAMES)):
            bad = set(np.unique(cols[name]).tolist()) - set(codes)
            if bad:
                raise ValueError(f"/messages/{name}: unknown codes {sorted(bad)}; known {codes}")
        self._append("messages", cols)

    def _append(self, table: str, cols: dict[str, np.ndarray]) -> None:
        g = self._file[table]
        n = min(g[name].shape[0] for name in cols)  # all equal unless a write was cut short
        k = int(np.size(cols["round"]))
        if k == 0:
            return
        for name, col in cols.items():
            ds = g[name]
            ds.resize((n + k,))
            ds[n:] = col
        if table not in self._reload:
            self._digests[table].extend([cols[c] for c in schema.columns(table)])
        # Readers trust only the shortest column, so a row cut short by a crash
        # in this loop is ignored rather than read as zeros.

    def save_checkpoint(
        self,
        *,
        round: int,
        global_state: Mapping[str, np.ndarray],
        memories: Mapping[str, Mapping[str, np.ndarray]],
        rng: Mapping[str, bytes],
    ) -> None:
        _ckpt.write(self._file, round=round, global_state=global_state, memories=memories,
                    rng=rng, flush=self.flush)

    def truncate_after(self, round: int) -> None:
        """Drop /rounds and /messages rows of rounds > `round` (rows of a round lost at resume)."""
        for table in ("rounds", "messages"):
            g = self._file[table]
            n = min(g[c].shape[0] for c in schema.columns(table))
            keep = g["round"][:n] <= round
            if keep.all() and all(g[c].shape[0] == n for c in schema.columns(table)):
                continue
            for name in schema.columns(table):
                data = g[name][:n][keep]
                g[name].resize((len(data),))
                g[name][...] = data
            self._reload.add(table)
        self._file.attrs["completed_rounds"] = self._file["rounds/round"].shape[0]

    # ------------------------------------------------------------ durability

    def _seal(self) -> None:
        """Store checksums of what the next flush writes (see integrity.py)."""
        f = self._file
        root = {k: plain(v) for k, v in f.attrs.items() if k != integrity.CHECKSUMS_ATTR}
        groups = {t: {k: plain(v) for k, v in f[t].attrs.items()} for t in schema.TABLES}
        tables = {}
        for table in schema.TABLES:
            if table not in self._datasets:
                self._datasets[table] = [f[table][c] for c in schema.columns(table)]
            cols = self._datasets[table]
            n = min(c.shape[0] for c in cols)  # all equal unless an append was cut short
            digest = self._digests[table]
            if table in self._reload or digest.n != n:
                digest.reset()
                step = 64 * integrity.BLOCK_ROWS
                for start in range(0, n, step):
                    digest.extend([c[start:min(n, start + step)] for c in cols])
                self._reload.discard(table)
            if table == "clients" and self._hist_bytes is None:
                self._hist_bytes = integrity.histogram_bytes(
                    f["clients"][schema.CLIENT_HISTOGRAM.name][()])
            tables[table] = (n, digest.hexdigest(self._hist_bytes if table == "clients"
                                                 else b""))
        f.attrs[integrity.CHECKSUMS_ATTR] = integrity.dumps(
            integrity.attrs_digest(root, groups), tables)

    def _sync(self) -> None:
        self._seal()
        self._file.flush()
        fsync(self._file)

    def flush(self) -> None:
        """Make everything written so far durable (and replace an --overwrite'n file)."""
        self._sync()
        if self._tmp is not None:
            os.replace(self._tmp, self.path)  # the open handle follows the inode
            fsync_dir(self.path.parent)
            self._tmp = None

    def finish(self, status: str, reason: str = "") -> None:
        """Record how the run ended, flush and close."""
        if status not in schema.STATUSES or status == "running":
            raise ValueError(f"finish status {status!r}; allowed: completed, failed, interrupted")
        if self._file is None:
            raise ResultsError(f"{self.path}: finish() after close()")
        self.set_attrs(status=status, failure_reason=reason, end_time=utc_now())
        if self._tmp is not None and self._rounds_written == 0 and status != "completed":
            # A failed start of an --overwrite run: the old results are worth more
            # than an empty failed file, so keep them (close() drops the temp file).
            self.close()
            return
        self.flush()
        self.close()

    def close(self) -> None:
        """Close the file (checksummed) and release the lock; an --overwrite temporary
        that never replaced the old file is dropped, so the old file stays as it was."""
        if self._file is None:
            return
        try:
            if self._tmp is None:
                self._seal()  # closing flushes: keep the checksums true
        finally:
            self._file.close()
            self._file = None
            self._release()

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is None:
            return
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted", "KeyboardInterrupt")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")
