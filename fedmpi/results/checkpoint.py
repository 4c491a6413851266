"""The latest checkpoint inside a results file, written crash-safely.

HDF5 has no transactions, so the swap is done by names: the new checkpoint is
written under a temporary name, marked `complete`, flushed, and only then moved
into place (old -> OLD_NAME, new -> NAME, delete old). A kill at any point
leaves a complete checkpoint under one of the three names, and `read_group`
looks for it in that order. Space freed by the deleted group is reused by HDF5
within a session, so the file holds at most two model copies, not one per round.

Each checkpoint group carries `sha256` over its round and every tensor, and the
root attribute `checkpoint_round` (covered by the file's checksums) says which
round the latest one is at least, so a damaged checkpoint or a damaged name
that hides it is a `ResultsError`, never a silent start from the wrong model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from fedmpi.results.errors import ResultsError
from fedmpi.results.hdf import check_type, guard, open_read
from fedmpi.results.hdf import read_attrs as read_attrs_of
from fedmpi.results.integrity import CHECKSUMS_ATTR, checkpoint_digest
from fedmpi.results.verify import DAMAGED, read_attrs

NAME = "checkpoint"
NEW_NAME = ".checkpoint_new"
OLD_NAME = ".checkpoint_old"
ROUND_ATTR = "checkpoint_round"  # root attribute: round of the latest complete checkpoint
DIGEST_ATTR = "sha256"


@dataclass
class Checkpoint:
    round: int
    global_state: dict[str, np.ndarray] = field(default_factory=dict)
    memories: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    rng: dict[str, bytes] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)  # the file's root attributes


# '/' separates HDF5 path components and '.'/'..' are special; tensor names
# such as 'layer1.0.conv.weight' pass through unchanged.
_ESCAPES = {"%": "%25", "/": "%2F"}
_UNESCAPE = re.compile(r"%(25|2F|2E)")


def escape(name: str) -> str:
    out = "".join(_ESCAPES.get(c, c) for c in name)
    if out in ("", ".", ".."):
        out = out.replace(".", "%2E") or "%2E%2E%2E"  # "" has no HDF5 name: give it one
    return out


def unescape(name: str) -> str:
    if name == "%2E%2E%2E":
        return ""
    return _UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def write(
    f: h5py.File,
    *,
    round: int,
    global_state: Mapping[str, np.ndarray],
    memories: Mapping[str, Mapping[str, np.ndarray]],
    rng: Mapping[str, bytes],
    flush: Callable[[], None],
) -> None:
    for stale in (NEW_NAME, OLD_NAME):  # left by a kill during an earlier swap
        if stale in f and NAME in f:
            del f[stale]
    if NEW_NAME in f:  # NAME missing: a complete NEW is the latest copy; keep it as OLD
        if f[NEW_NAME].attrs.get("complete", False):
            if OLD_NAME in f:
                del f[OLD_NAME]
            f.move(NEW_NAME, OLD_NAME)
        else:
            del f[NEW_NAME]

    g = f.create_group(NEW_NAME)
    g.attrs["round"] = int(round)
    g.attrs["complete"] = False
    gg, gm, gr = g.create_group("global"), g.create_group("memory"), g.create_group("rng")
    stored: list[tuple[str, np.ndarray]] = []  # (path in the group, array) for the digest
    for name, arr in global_state.items():
        # Own dtype kept (float32 from the server) so a resume is bit-exact.
        arr = np.asarray(arr)
        gg.create_dataset(escape(name), data=arr)
        stored.append((f"global/{escape(name)}", arr))
    for owner, tensors in memories.items():
        go = gm.create_group(escape(owner))
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            go.create_dataset(escape(name), data=arr)
            stored.append((f"memory/{escape(owner)}/{escape(name)}", arr))
    for name, state in rng.items():
        arr = np.frombuffer(bytes(state), dtype=np.uint8)
        gr.create_dataset(escape(name), data=arr)
        stored.append((f"rng/{escape(name)}", arr))
    g.attrs[DIGEST_ATTR] = checkpoint_digest(round, stored)
    g.attrs["complete"] = True
    flush()  # the new copy is durable before the old one goes

    if NAME in f:
        f.move(NAME, OLD_NAME)
    f.move(NEW_NAME, NAME)
    if OLD_NAME in f:
        del f[OLD_NAME]
    f.attrs[ROUND_ATTR] = int(round)
    flush()


def find_group(f: h5py.File, path: str = "") -> h5py.Group | None:
    for name in (NAME, NEW_NAME, OLD_NAME):
        if name in f and bool(read_attrs_of(path, f[name], f"/{name}").get("complete", False)):
            return f[name]
    return None


def read_group(g: h5py.Group, root_attrs: dict[str, Any], *, path: str = "",
               require_digest: bool = False) -> Checkpoint:
    """The checkpoint in `g`, checked against its `sha256` when it has one."""
    where = f"{path}: {g.name}" if path else g.name
    stored: list[tuple[str, np.ndarray]] = []  # (path in the group, array) for the digest

    def tensors(sub: str) -> dict[str, np.ndarray]:
        out = {}
        with guard(path, f"{g.name}/{sub}"):
            items = list(g[sub].items())
        for k, v in items:
            _utf8(k, where, sub)
            with guard(path, f"{g.name}/{sub}/{k}"):
                check_type(path, f"{g.name}/{sub}/{k}", v.id.get_type())
                arr = np.asarray(v[()])
            stored.append((f"{sub}/{k}", arr))
            out[unescape(k)] = arr
        return out

    with guard(path, g.name):
        attrs = read_attrs_of(path, g, g.name)
        round_ = int(attrs["round"])
        digest = attrs.get(DIGEST_ATTR)
        owners = list(g["memory"])
    for owner in owners:
        _utf8(owner, where, "memory")
    digest = digest.decode("utf-8", "replace") if isinstance(digest, bytes) else digest
    ckpt = Checkpoint(
        round=round_,
        global_state=tensors("global"),
        memories={unescape(k): tensors(f"memory/{k}") for k in owners},
        rng={unescape(k): v.tobytes() for k, v in tensors("rng").items()},
        attrs={k: v for k, v in root_attrs.items() if k != CHECKSUMS_ATTR},
    )
    if digest is None:
        if require_digest:
            raise ResultsError(f"{where}: no @{DIGEST_ATTR}; {DAMAGED}")
    elif checkpoint_digest(round_, stored) != digest:
        raise ResultsError(f"{where}: model does not match its checksum; {DAMAGED}")
    return ckpt


def _utf8(name: Any, where: str, sub: str) -> None:
    """h5py gives a name that is not UTF-8 (a damaged link) as bytes."""
    if not isinstance(name, str):
        raise ResultsError(f"{where}/{sub}: a member named {name!r}, not UTF-8; {DAMAGED}")


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The latest complete checkpoint of a results file (ResultsError if none or damaged)."""
    path = os.fspath(path)
    try:
        f = open_read(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError and others on junk
        raise ResultsError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        attrs = read_attrs(f, path)
        with guard(path, "/checkpoint"):
            g = find_group(f, path)
        at_least = attrs.root.get(ROUND_ATTR, -1) if attrs.checked else -1
        if g is None:
            if isinstance(at_least, int) and at_least >= 0:
                raise ResultsError(f"{path}: /checkpoint: missing, but the file had one at "
                                   f"round {at_least}; {DAMAGED}")
            raise ResultsError(f"{path}: no complete checkpoint to resume from")
        # Files resumed from schema 1 keep their old, unsummed checkpoint until the next save.
        ckpt = read_group(g, attrs.root, path=path,
                          require_digest=attrs.checked and ROUND_ATTR in attrs.root)
        if isinstance(at_least, int) and ckpt.round < at_least:
            raise ResultsError(f"{path}: {g.name}: round {ckpt.round}, but the file had a "
                               f"checkpoint at round {at_least}; {DAMAGED}")
        return ckpt
