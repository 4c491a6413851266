"""Stage roles, the stage registry and `build`.

A pipeline is made of stages playing four roles (GRACE-like; only `Pipeline`
fixes the order in which they run):

- `Pruner`     (prune)    chooses which entries survive;
- `ValueCoder` (quantize) turns the surviving float32 values into bytes and back;
- `Layout`     (sparse)   says where the values go: dense, bitmap or delta indices;
- `Container`  (zstd)     turns the byte sections into the payload and back.

`memory` (error feedback) is a marker stage: the pipeline compensates before
the lossy stages and keeps the residual after them.

Adding a stage = one file whose name is the registry key, decorated with
`@register("<key>")`, plus its import in `compress/__init__.py`.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedmpi.errors import ConfigError
from fedmpi.params import BadParam, instantiate, registrar, type_ok  # noqa: F401  (re-exported)
from fedmpi.wire import WireFormatError

REGISTRY: dict[str, type[Stage]] = {}


register = registrar(REGISTRY, "stage")


@dataclass(frozen=True, kw_only=True)
class Stage:
    key: ClassVar[str] = "?"
    # Stages must appear in increasing `rank` (prune < quantize < memory < sparse < zstd):
    # values are pruned before they are quantized, error feedback must see every lossy
    # stage, and lossless encoders come last.
    rank: ClassVar[int] = 0
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    def check(self) -> None:
        """Raise BadParam for values outside the allowed range (types are checked by build)."""

    @property
    def lossy(self) -> bool:
        return False

    def label(self) -> str:
        return self.key

    def spec(self) -> dict:
        """Canonical form (every parameter, defaults included) hashed into the codec id."""
        return {self.key: dataclasses.asdict(self)}


def build(name: str, params: dict | None = None, *, field: str = "stage") -> Stage:
    """Instantiate stage `name` from its config params; ConfigError names `field.name.param`."""
    if name not in REGISTRY:
        raise ConfigError(field, name, f"one of the stages {', '.join(sorted(REGISTRY))}")
    return instantiate(REGISTRY[name], params, f"{field}.{name}")


# ----------------------------------------------------------------------------- roles


class Pruner(Stage):
    def masks(self, flats: list[np.ndarray], shapes: list[tuple[int, ...]]
              ) -> list[np.ndarray | None]:
        """Per tensor a bool keep-mask (every kept entry is non-zero), or None = untouched."""
        raise NotImplementedError


class ValueCoder(Stage):
    itemsize: ClassVar[int] = 4  # byte-shuffle unit of the coded values

    def nbytes(self, count: int) -> int:
        raise NotImplementedError

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, float, float]:
        """float32 values -> (uint8 codes, two float32 per-tensor parameters)."""
        raise NotImplementedError

    def check_side(self, codes: np.ndarray, count: int, p0: float, p1: float) -> None:
        """The decode checks that need no pass over the codes (WireFormatError): they
        fill exactly `nbytes(count)` bytes, the unused bits of the last byte are 0, and
        both parameters are what this coder can have written. Every decoder (numpy,
        fused, on-device) runs exactly these, through `Pipeline.read`."""
        raise NotImplementedError

    def decode(self, codes: np.ndarray, count: int, p0: float, p1: float) -> np.ndarray:
        """Inverse of encode: a new array of `count` finite float32 values.

        Strict: `check_side`, then the rules on the codes themselves (every value
        finite; the coder's canonical codes).
        """
        raise NotImplementedError


class Layout(Stage):
    """Where the values go; see sparse.py for the formats."""


class Container(Stage):
    """Byte sections <-> payload. This base class stores them as is.

    Payload: u32 section count, then per section (u8 itemsize, 3 pad bytes = 0,
    u64 raw length, u64 stored length), then the stored bytes of every section,
    nothing after the last.
    """

    _SECTION = struct.Struct("<B3sQQ")

    def squeeze(self, parts: list[np.ndarray], itemsize: int) -> list[np.ndarray]:
        """One section's raw parts (uint8) -> its stored parts."""
        return parts

    def expand(self, stored: np.ndarray, itemsize: int, raw_len: int) -> np.ndarray:
        """Stored bytes -> the `raw_len` raw bytes; WireFormatError unless exactly that."""
        if stored.nbytes != raw_len:
            raise WireFormatError(f"section stores {stored.nbytes} bytes, declared {raw_len} "
                                  "(this pipeline stores sections as they are)")
        return stored

    def pack(self, sections: list[tuple[list[np.ndarray], int]]) -> np.ndarray:
        """Sections given as (uint8 parts, itemsize) -> one new uint8 payload array."""
        stored = [self.squeeze(parts, size) for parts, size in sections]
        head = struct.pack("<I", len(sections)) + b"".join(
            self._SECTION.pack(size, b"", sum(p.nbytes for p in parts),
                               sum(p.nbytes for p in st))
            for (parts, size), st in zip(sections, stored))
        out = np.empty(len(head) + sum(p.nbytes for st in stored for p in st), dtype=np.uint8)
        out[: len(head)] = np.frombuffer(head, dtype=np.uint8)
        pos = len(head)
        for p in (p for st in stored for p in st):
            out[pos: pos + p.nbytes] = p
            pos += p.nbytes
        return out

    def unpack(self, payload: np.ndarray, sections: list[tuple[int, int]]) -> list[np.ndarray]:
        """The raw sections, given per section its (itemsize, largest raw length).

        The bounds come from the model spec, never from the message, so that no
        field can make the decoder allocate more than the model can need (no
        decompression bombs).
        """
        count = len(sections)
        need = 4 + count * self._SECTION.size
        if payload.nbytes < need:
            raise WireFormatError(f"payload of {payload.nbytes} bytes is shorter than its "
                                  f"{need}-byte section table")
        (n,) = struct.unpack_from("<I", payload, 0)
        if n != count:
            raise WireFormatError(f"payload has {n} sections, expected {count}")
        table = [self._SECTION.unpack_from(payload, 4 + i * self._SECTION.size)
                 for i in range(count)]
        for i, ((size, pad, raw_len, _), (want, most)) in enumerate(zip(table, sections)):
            if pad != b"\0\0\0":
                raise WireFormatError(f"section {i}: padding bytes {pad.hex()} are not zero")
            if size != want:
                raise WireFormatError(f"section {i}: item size {size}, expected {want}")
            if raw_len > most:
                raise WireFormatError(f"section {i} declares {raw_len} bytes, more than this "
                                      f"model can need ({most})")
            if raw_len % size:
                raise WireFormatError(f"section {i}: {raw_len} bytes are not whole "
                                      f"{size}-byte items")
        total = need + sum(st for *_, st in table)
        if total != payload.nbytes:
            raise WireFormatError(f"section lengths add up to {total} bytes but the payload "
                                  f"has {payload.nbytes}")
        out, pos = [], need
        for size, _, raw_len, st in table:
            raw = self.expand(payload[pos: pos + st], size, raw_len)
            if raw.nbytes != raw_len:
                raise WireFormatError(f"section holds {raw.nbytes} bytes, declared {raw_len}")
            out.append(raw)
            pos += st
        return out
