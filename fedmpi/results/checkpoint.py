"""The latest checkpoint inside a results file, written crash-safely.

HDF5 has no transactions, so the swap is done by names: the new checkpoint is
written under a temporary name, marked `complete`, flushed, and only then moved
into place (old -> OLD_NAME, new -> NAME, delete old). A kill at any point
leaves a complete checkpoint under one of the three names, and `read_group`
looks for it in that order. Space freed by the deleted group is reused by HDF5
within a session, so the file holds at most two model copies, not one per round.
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
from fedmpi.results.hdf import attrs_dict, open_read

NAME = "checkpoint"
NEW_NAME = ".checkpoint_new"
OLD_NAME = ".checkpoint_old"


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
    for name, arr in global_state.items():
        # Own dtype kept (float32 from the server) so a resume is bit-exact.
        gg.create_dataset(escape(name), data=np.asarray(arr))
    for owner, tensors in memories.items():
        go = gm.create_group(escape(owner))
        for name, arr in tensors.items():
            go.create_dataset(escape(name), data=np.asarray(arr))
    for name, state in rng.items():
        gr.create_dataset(escape(name), data=np.frombuffer(bytes(state), dtype=np.uint8))
    g.attrs["complete"] = True
    flush()  # the new copy is durable before the old one goes

    if NAME in f:
        f.move(NAME, OLD_NAME)
    f.move(NEW_NAME, NAME)
    if OLD_NAME in f:
        del f[OLD_NAME]
    flush()


def find_group(f: h5py.File) -> h5py.Group | None:
    for name in (NAME, NEW_NAME, OLD_NAME):
        if name in f and bool(f[name].attrs.get("complete", False)):
            return f[name]
    return None


def read_group(g: h5py.Group, root_attrs: dict[str, Any]) -> Checkpoint:
    def tensors(group: h5py.Group) -> dict[str, np.ndarray]:
        return {unescape(k): v[()] for k, v in group.items()}

    return Checkpoint(
        round=int(g.attrs["round"]),
        global_state=tensors(g["global"]),
        memories={unescape(k): tensors(v) for k, v in g["memory"].items()},
        rng={unescape(k): v[()].tobytes() for k, v in g["rng"].items()},
        attrs=root_attrs,
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """The latest complete checkpoint of a results file (ResultsError if none)."""
    with open_read(path) as f:
        g = find_group(f)
        if g is None:
            raise ResultsError(f"{os.fspath(path)}: no complete checkpoint to resume from")
        return read_group(g, attrs_dict(f))
