"""Client state where it lives: each worker rank checkpoints its own clients' state.

Why: a stateful compressor (error-feedback residuals, PowerSGD's warm-started Q)
keeps per-client state on the worker that hosts the client. Shipping it to rank 0
for every checkpoint made it most of the wire traffic of an error-feedback run
(issue 12), traffic a real deployment never has. Instead each worker rank writes
its clients' state to its own file next to the result file, and reads it back on
`--resume`; nothing of it crosses MPI.

Files, one per (rank, checkpoint round), HDF5 (names below for result `run.h5`):

    run.h5.rank<R>.round<N>.state    rank R's clients at the end of round N
    .run.h5.rank<R>.state.lock       the single writer's lock (`lock.WriterLock`)

Not `*.h5`, so that `fedmpi report results/` and `results/*.h5` never take one
for a results file. Each file holds, as root attributes, the format and its
version, `run` (an identity of the run: the same for a run and its resumes,
different for any other run, see `run_identity`), `rank`, `round` and `sha256`
over all of these and every array (name, dtype, shape, bytes); the arrays are
`/clients/<client>/<name>` in their own dtype, so a resume is bit-exact.

Crash safety: a generation is written under `.<name>.<pid>.<host>.tmp`, flushed,
fsynced, closed, and only then renamed into place (`os.replace`, then an fsync of
the folder). A crash leaves the previous generation untouched and at worst a
temporary, which the next store of the same rank deletes when its process is
gone (`writer.remove_stale_temporaries`); `load` never reads a temporary.

Retention policy: after writing round N, the rank keeps exactly three generations,
N and the latest two before N, and deletes every other (older ones, and any of a
later round: those belong to a timeline abandoned by a resume, or to the run this
one `--overwrite`s). Three, because the server's checkpoint of round N is written
after the workers' files of N, and with the overlapped evaluation
(`run.overlap_eval`) as late as during round N+1, after the workers may have
written their files of N+1: a crash then leaves the server at checkpoint N-1 (with
`checkpoint_every: 1`), whose files must still exist. The caller must make a
worker's file of round N durable (`save` returns) before the server's checkpoint
of round N can be written, i.e. before the worker sends the round's last message.

Lifecycle in `fedmpi run` (the wiring): a worker rank opens its store only when
the uplink compressor keeps state. The run identity is sha256 of the resolved
config and the result file's `start_time`: on a fresh run rank 0 sends it to each
worker at start-up (one MEMORY message, counted in /rounds `infra_bytes`); on
`--resume` every rank reads both from the result file, as it already reads the
stored config. The server asks for a save with the ASSIGN flag SAVE_STATE (every
checkpoint round, and the round a graceful stop ends on); the worker saves before
its REPORT. On `--resume` each worker loads the files of the checkpoint round
during the configuration check (a missing, foreign or damaged file is a
configuration error naming it: exit 2, the result file untouched), and the first
ASSIGN must be the round after it. A run that completes deletes its files (a
completed run is never resumed); an interrupted or crashed one keeps them. A fresh
run of a result (`--overwrite`, or after the result was deleted) first deletes
every rank's files of that result (`remove_all`).

`load(N)` returns the states of exactly round N, or raises `ClientStateError`
naming the file: missing (with the rounds that exist), of another run or rank,
of another round, damaged (unreadable, or not matching its checksum), or
without a client the caller expects.

One writer per file: a `ClientStateStore` holds an exclusive flock on the rank's
lock file from construction to `close()`, so two jobs resuming the same result
file cannot interleave their generations (the second one is refused with the
holder's pid and host). Pure: no MPI; the worker owns one store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fedmpi.results.checkpoint import escape, unescape
from fedmpi.results.errors import ResultsError
from fedmpi.results.hdf import check_type, fsync, fsync_dir, guard, known_dtype, read_attrs
from fedmpi.results.lock import WriterLock
from fedmpi.results.writer import remove_stale_temporaries

FORMAT = "fedmpi-clientstate"
VERSION = 1
KEEP = 3  # generations kept per rank, see the module doc

States = dict[int, dict[str, np.ndarray]]


class ClientStateError(ResultsError):
    """A rank's client-state file is missing, of another run, or damaged."""


def run_identity(config: Mapping[str, Any], start_time: str) -> str:
    """A run's identity: sha256 of its resolved config and its first start time.

    Both are stored in the result file and survive `--resume`, and a new run of
    the same config (`--overwrite`) starts at another time.
    """
    text = json.dumps({"config": config, "start_time": start_time}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def state_path(result: str | os.PathLike, rank: int, round: int) -> Path:
    p = Path(result)
    return p.with_name(f"{p.name}.rank{int(rank)}.round{int(round)}.state")


def generations(result: str | os.PathLike, rank: int) -> dict[int, Path]:
    """{round: path} of the rank's files next to `result` (temporaries excluded)."""
    p = Path(result)
    pattern = re.compile(rf"{re.escape(p.name)}\.rank{int(rank)}\.round(\d+)\.state")
    try:
        names = os.listdir(p.parent)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        m = pattern.fullmatch(name)
        if m:
            found[int(m.group(1))] = p.parent / name
    return dict(sorted(found.items()))


def all_files(result: str | os.PathLike) -> list[Path]:
    """Every rank's client-state files of `result` (temporaries excluded)."""
    p = Path(result)
    pattern = re.compile(rf"{re.escape(p.name)}\.rank\d+\.round\d+\.state")
    try:
        names = os.listdir(p.parent)
    except FileNotFoundError:
        return []
    return sorted(p.parent / n for n in names if pattern.fullmatch(n))


def remove_all(result: str | os.PathLike) -> list[Path]:
    """Delete every rank's client-state files of `result`: a new run of that result
    (`--overwrite`, or a result file that was deleted) never meets an old run's."""
    gone = all_files(result)
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def load_states(result: str | os.PathLike, *, rank: int, round: int, run: str,
                clients: Iterable[int] | None = None) -> States:
    """The states rank `rank` saved at exactly `round`; with `clients`, exactly those.

    Raises `ClientStateError` naming the file: missing (with the rounds that exist),
    of another run, rank or round, damaged, or holding other clients."""
    path = state_path(result, rank, round)
    if not path.exists():
        have = list(generations(result, rank))
        raise ClientStateError(f"{path}: no client-state file for rank {rank} at "
                               f"round {round} (this rank has rounds {have or 'none'})")
    states = read_states(path, run=run, rank=rank, round=round)
    if clients is not None:
        want = sorted(int(c) for c in clients)
        if sorted(states) != want:
            missing = sorted(set(want) - set(states))[:8]
            extra = sorted(set(states) - set(want))[:8]
            raise ClientStateError(f"{path}: holds other clients than this rank hosts "
                                   f"(missing {missing}, not hosted {extra})")
    return states


def _digest(run: str, rank: int, round: int, clients: Iterable[int],
            arrays: Iterable[tuple[str, np.ndarray]]) -> str:
    """sha256 of a file's identity, its clients (also those without state) and arrays."""
    h = hashlib.sha256(f"{FORMAT}:{VERSION}:{run}:{int(rank)}:{int(round)}:"
                       f"{sorted(int(c) for c in clients)}:".encode())
    for path, arr in sorted(arrays, key=lambda item: item[0]):
        h.update(f"{path}|{arr.dtype.str}|{arr.shape}|".encode("utf-8", "surrogatepass"))
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def read_states(path: str | os.PathLike, *, run: str, rank: int, round: int) -> States:
    """The states in one file, after checking its identity and its checksum."""
    try:
        return _read(Path(path), run, rank, round)
    except ClientStateError:
        raise
    except ResultsError as exc:  # what the h5py helpers raise on a damaged file
        raise ClientStateError(str(exc)) from exc


def _read(path: Path, run: str, rank: int, round: int) -> States:
    where = os.fspath(path)
    if not path.exists():
        raise ClientStateError(f"{where}: no client-state file for rank {rank} at round {round}")
    try:
        f = h5py.File(path, "r", locking=False)
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError and others on junk
        raise ClientStateError(f"{where}: not a readable client-state file ({exc})") from None
    with f:
        attrs = read_attrs(path, f, "/")
        if attrs.get("format") != FORMAT or attrs.get("version") != VERSION:
            raise ClientStateError(f"{where}: not a fedmpi client-state file of version "
                                   f"{VERSION} (format {attrs.get('format')!r}, version "
                                   f"{attrs.get('version')!r})")
        if attrs.get("run") != run:
            raise ClientStateError(f"{where}: belongs to another run (run {attrs.get('run')!r}, "
                                   f"this run is {run!r}); delete it or use another output")
        for key, want in (("rank", rank), ("round", round)):
            if attrs.get(key) != want:
                raise ClientStateError(f"{where}: holds {key} {attrs.get(key)!r}, expected "
                                       f"{want}; the file was renamed or is damaged")
        stored: list[tuple[str, np.ndarray]] = []
        states: States = {}
        with guard(path, "/clients"):
            clients = list(f["clients"].items())
        for cname, group in clients:
            if not (isinstance(cname, str) and cname.isdigit()):
                raise ClientStateError(f"{where}: /clients/{cname!r} is not a client number; "
                                       "the file is damaged")
            with guard(path, f"/clients/{cname}"):
                items = list(group.items())
            tensors = {}
            for name, ds in items:
                obj = f"/clients/{cname}/{name}"
                with guard(path, obj):
                    if not isinstance(ds, h5py.Dataset):
                        raise ClientStateError(f"{where}: {obj} is not an array; "
                                               "the file is damaged")
                    check_type(path, obj, ds.id.get_type())
                    arr = np.asarray(ds[()])
                stored.append((f"{cname}/{name}", arr))
                tensors[unescape(name)] = arr
            states[int(cname)] = tensors
        if _digest(run, rank, round, states, stored) != attrs.get("sha256"):
            raise ClientStateError(f"{where}: client states do not match their checksum; "
                                   "the file is damaged")
    return states


def _storable(dtype: np.dtype) -> bool:
    """A dtype the reader accepts back (`hdf.known_dtype`): numbers and booleans."""
    if dtype.kind not in "biuf":
        return False
    return known_dtype(h5py.h5t.py_create(dtype, logical=True)) is not None


class ClientStateStore:
    """The client-state files of one worker rank, written by it alone (see module doc)."""

    def __init__(self, result: str | os.PathLike, rank: int, run: str):
        if not isinstance(run, str) or not run:
            raise ValueError("ClientStateStore: run must be a non-empty run identity")
        self.result, self.rank, self.run = Path(result), int(rank), run
        self.result.parent.mkdir(parents=True, exist_ok=True)
        base = self.result.with_name(f"{self.result.name}.rank{self.rank}.state")
        self._lock: WriterLock | None = WriterLock.acquire(base)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Temporaries of this rank's files whose writer (on this host) is gone."""
        name = re.escape(f"{self.result.name}.rank{self.rank}.round")
        pattern = re.compile(rf"\.({name}\d+\.state)\..+\.tmp")
        for entry in os.listdir(self.result.parent):
            m = pattern.fullmatch(entry)
            if m:
                remove_stale_temporaries(self.result.parent / m.group(1))

    # ------------------------------------------------------------------ reading

    def rounds(self) -> list[int]:
        return list(generations(self.result, self.rank))

    def path(self, round: int) -> Path:
        return state_path(self.result, self.rank, round)

    def load(self, round: int, clients: Iterable[int] | None = None) -> States:
        """The states saved at exactly `round`; with `clients`, exactly those clients."""
        return load_states(self.result, rank=self.rank, round=round, run=self.run,
                           clients=clients)

    # ------------------------------------------------------------------ writing

    def save(self, round: int, states: Mapping[int, Mapping[str, np.ndarray]]) -> Path:
        """Write round `round`'s generation durably, then keep only two (module doc)."""
        if self._lock is None:
            raise ValueError("ClientStateStore: save after close")
        round = int(round)
        if round < 0:
            raise ValueError(f"ClientStateStore: round must be >= 0, got {round}")
        final = self.path(round)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{socket.gethostname()}.tmp")
        try:
            self._write(tmp, round, states)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)
        self._prune(round)
        return final

    def _write(self, tmp: Path, round: int, states: Mapping[int, Mapping[str, np.ndarray]]):
        stored: list[tuple[str, np.ndarray]] = []
        with h5py.File(tmp, "w", locking=False) as f:
            g = f.create_group("clients")
            for client in sorted(states):
                cname = str(int(client))
                if cname in g or int(client) < 0:
                    raise ValueError(f"ClientStateStore: client {client!r} is not a distinct "
                                     "number >= 0")
                gc = g.create_group(cname)
                for name, value in states[client].items():
                    arr = np.asarray(value)
                    if not _storable(arr.dtype):
                        raise ValueError(f"ClientStateStore: client {client} state {name!r}: "
                                         f"dtype {arr.dtype} cannot be stored (numeric only)")
                    link = escape(str(name))
                    gc.create_dataset(link, data=arr)
                    stored.append((f"{cname}/{link}", arr))
            f.attrs.update({"format": FORMAT, "version": VERSION, "run": self.run,
                            "rank": self.rank, "round": round,
                            "sha256": _digest(self.run, self.rank, round, states, stored)})
            f.flush()
            fsync(f)

    def _prune(self, round: int) -> None:
        found = generations(self.result, self.rank)
        earlier = [r for r in found if r < round][-(KEEP - 1):]
        keep = {round, *earlier}
        for r, path in found.items():
            if r not in keep:
                path.unlink(missing_ok=True)
        fsync_dir(self.result.parent)

    def discard(self) -> None:
        """Delete every generation of this rank (a completed run cannot be resumed)."""
        for path in generations(self.result, self.rank).values():
            path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ClientStateStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
