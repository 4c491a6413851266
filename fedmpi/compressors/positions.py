"""Positions + float32 values: the payload shared by the sparsifying methods (topk, threshold).

Why not the stage pipeline's payload: its table carries two float parameters per tensor
and an 8-byte count that these methods never need, and its delta gaps must all share
one width, so a single gap past 255 doubles a top-k index (1 % of a tensor has mean gap
~100). Here each tensor's positions take the smallest of (ties to the first):

- BITMAP: ceil(n / 8) bytes, bit i (little-endian bit order) set where entry i is sent;
- DELTA8 / DELTA16 / DELTA32: per entry its gap, index - previous index - 1 (the
  first from -1), fixed width, the narrowest that fits the largest gap;
- VARINT: the same gaps as LEB128 (7 bits a byte, high bit = more follows), which
  costs ~1.3 bytes an entry at 1 % (random positions) where DELTA16 costs 2;

and DENSE (no positions) when every entry is sent. The bitmap and delta formats are
`fedmpi.compress.sparse`'s (its decoder and checks are reused). A decoder requires the
encoder's choice, so every set of positions has one encoding, and the index bytes of a
tensor are at most its bitmap: ceil(n / 8), the bound checked before allocating.

Payload (after the 12-byte method header, `base.Sections`, zstd container):
  table  (item 1): per tensor u8 layout, 3 pad bytes = 0, u32 count of values
  index  (item 1): the position bytes of every tensor, in spec order
  values (item 4): float32 values of every tensor, in position order (zstd shuffles them)
zstd always: on a 2M-entry model update it saves 13-24 % of top-k's payload (the
values' sign/exponent bytes and the gap bytes are predictable) and 6 % of random-k's
(values only), and costs ~40 bytes of frame headers on a tiny message.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedmpi.compress import sparse as sp
from fedmpi.compress.pipeline import ModelSpec, spec_of
from fedmpi.compress.zstd import Zstd
from fedmpi.compressors import feedback
from fedmpi.compressors.base import Compressor, Context, Sections, check_finite, numel_of
from fedmpi.wire import WireFormatError

DENSE, BITMAP, DELTA8, DELTA16, DELTA32 = sp.DENSE, sp.BITMAP, sp.DELTA8, sp.DELTA16, sp.DELTA32
VARINT = 5
NAMES = {**sp.NAMES, VARINT: "varint"}
_WIDTH = {DELTA8: np.dtype("u1"), DELTA16: np.dtype("<u2"), DELTA32: np.dtype("<u4")}
ROW = np.dtype([("layout", "u1"), ("pad", "V3"), ("count", "<u4")])
MAX_NUMEL = 2**32 - 1  # a count is a u32
SECTIONS = Sections(Zstd(level=3, shuffle=True))


def inputs(comp: Compressor, tensors: Mapping[str, np.ndarray], ctx: Context
           ) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """What a sparsifier selects from: the float32 tensors, plus the residual when
    `comp.feedback` (a new dict; ctx.state is not changed). ValueError for NaN/inf in
    the input or in input + residual (an overflow), before any state changes."""
    check_finite(comp, tensors)
    if comp.feedback:
        with np.errstate(over="ignore"):  # refused just below, with the tensor's name
            x = feedback.compensate(tensors, ctx)
        check_finite(comp, x)
    else:
        x = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    return spec_of(tensors), x


# ------------------------------------------------------------------ varint (LEB128) gaps

def varint_sizes(gaps: np.ndarray) -> np.ndarray:
    g = gaps.astype(np.int64, copy=False)
    return 1 + (g >= 1 << 7) + (g >= 1 << 14) + (g >= 1 << 21) + (g >= 1 << 28)


def varint_encode(gaps: np.ndarray) -> np.ndarray:
    g = gaps.astype(np.int64, copy=False)
    sizes = varint_sizes(g)
    start = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    for j in range(int(sizes.max()) if g.size else 0):  # byte j of every gap that has one
        has = sizes > j
        byte = (g[has] >> (7 * j)) & 0x7F
        out[start[has] + j] = byte | np.where(sizes[has] > j + 1, 0x80, 0)
    return out


def varint_decode(buf: np.ndarray, count: int) -> np.ndarray:
    """`count` canonical varints filling `buf` exactly -> int64 gaps (WireFormatError)."""
    if count == 0:
        if buf.size:
            raise WireFormatError(f"{buf.size} varint bytes for no values")
        return np.zeros(0, np.int64)
    ends = np.flatnonzero(buf < 0x80)
    if ends.size != count or ends[-1] != buf.size - 1:
        raise WireFormatError(f"varint index holds {ends.size} values (last byte "
                              f"{'ends one' if buf.size and buf[-1] < 0x80 else 'continues'}),"
                              f" header says {count}")
    sizes = np.diff(ends, prepend=-1)
    if sizes.max() > 5:
        raise WireFormatError(f"a varint of {int(sizes.max())} bytes (a u32 gap takes at most 5)")
    if np.any(buf[ends[sizes > 1]] == 0):
        raise WireFormatError("overlong varint (a last byte of 0; the shortest form is required)")
    starts = ends - sizes + 1
    shift = 7 * (np.arange(buf.size) - np.repeat(starts, sizes))
    return np.add.reduceat((buf & 0x7F).astype(np.int64) << shift, starts)


# ------------------------------------------------------------------ layout choice

def choose(idx: np.ndarray, numel: int) -> tuple[int, np.ndarray]:
    """The smallest layout of sorted positions `idx` (ties to the first in BITMAP,
    DELTA*, VARINT order; DENSE when every entry is sent) and the gaps between them."""
    count = idx.size
    if count == numel:
        return DENSE, np.empty(0, np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    big = int(gaps.max()) if count else 0
    delta = DELTA8 if big < 1 << 8 else DELTA16 if big < 1 << 16 else DELTA32
    cost = {BITMAP: (numel + 7) // 8, delta: count * _WIDTH[delta].itemsize,
            VARINT: int(varint_sizes(gaps).sum())}
    return min(cost, key=lambda k: (cost[k], k)), gaps


def index_bytes(layout: int, idx: np.ndarray, gaps: np.ndarray, numel: int) -> np.ndarray:
    if layout == DENSE:
        return np.empty(0, np.uint8)
    if layout == BITMAP:
        mask = np.zeros(numel, bool)
        mask[idx] = True
        return np.packbits(mask, bitorder="little")
    if layout == VARINT:
        return varint_encode(gaps)
    return gaps.astype(_WIDTH[layout]).view(np.uint8)


def index_most(spec: ModelSpec) -> int:
    """The largest index section of this model: every tensor's bitmap."""
    return sum((n + 7) // 8 for n in numel_of(spec))


# ------------------------------------------------------------------ pack / unpack

def pack(comp: Compressor, spec: ModelSpec, picks: list[tuple[np.ndarray, np.ndarray]]
         ) -> np.ndarray:
    """Per tensor (sorted int64 positions, float32 values) -> payload."""
    table = np.zeros(len(spec), dtype=ROW)
    index, values = [], []
    for i, ((name, _), n, (idx, v)) in enumerate(zip(spec, numel_of(spec), picks)):
        if n > MAX_NUMEL:
            raise ValueError(f"tensor {name!r} has {n} entries, more than a u32 count holds")
        layout, gaps = choose(idx, n)
        table[i] = (layout, b"\0\0\0", idx.size)
        index.append(index_bytes(layout, idx, gaps, n))
        values.append(np.ascontiguousarray(v, dtype="<f4"))
    return SECTIONS.pack(comp, spec, [([table.view(np.uint8)], 1), (index, 1), (values, 4)])


def unpack(comp: Compressor, payload, spec: ModelSpec, most_values: int
           ) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Payload -> per tensor (positions or None for DENSE, finite float32 values).

    Checks every field: table size and padding, layouts, counts <= entries, index
    bytes in the canonical (smallest) layout, sections used exactly; at most
    `most_values` values in all (from the method's parameters and the spec).
    """
    numels = numel_of(spec)
    table, index, values = SECTIONS.unpack(comp, payload, spec, [
        (1, ROW.itemsize * len(spec)), (1, index_most(spec)), (4, 4 * most_values)])
    if table.nbytes != ROW.itemsize * len(spec):
        raise WireFormatError(f"table of {table.nbytes} bytes for {len(spec)} tensors "
                              f"({ROW.itemsize} bytes each)")
    rows = np.frombuffer(table.tobytes(), dtype=ROW)
    ends = np.flatnonzero(index < 0x80)  # where varints end, for their lengths
    out, ipos, vpos = [], 0, 0
    for (name, _), n, row in zip(spec, numels, rows):
        layout, count = int(row["layout"]), int(row["count"])
        try:
            if layout not in NAMES:
                raise WireFormatError(f"unknown layout {layout}")
            if row["pad"].tobytes() != b"\0\0\0":
                raise WireFormatError(f"table padding {row['pad'].tobytes().hex()} is not zero")
            if count > n:
                raise WireFormatError(f"{count} values for {n} entries")
            idx, ilen = _positions(layout, index, ipos, ends, n, count)
            vlen = 4 * count
            if vpos + vlen > values.nbytes:
                raise WireFormatError("the value section ends before this tensor's values")
            canonical = DENSE if idx is None else choose(idx, n)[0]
            if canonical != layout:
                raise WireFormatError(f"positions coded as {NAMES[layout]} where "
                                      f"{NAMES[canonical]} is the encoder's (smallest) choice")
            v = values[vpos: vpos + vlen].view("<f4")
            if not np.isfinite(v).all():
                raise WireFormatError("a value is NaN or inf (never sent)")
        except WireFormatError as exc:
            raise WireFormatError(f"{name}: {exc}") from None
        out.append((idx, v))
        ipos, vpos = ipos + ilen, vpos + vlen
    if ipos != index.nbytes or vpos != values.nbytes:
        raise WireFormatError(f"{index.nbytes - ipos} index and {values.nbytes - vpos} value "
                              "bytes left over after the last tensor")
    return out


def _positions(layout: int, index: np.ndarray, ipos: int, ends: np.ndarray, n: int,
               count: int) -> tuple[np.ndarray | None, int]:
    """One tensor's positions from the index section at `ipos` (None: dense), and the
    bytes they took; `ends` = where varints end in the section (bytes < 0x80)."""
    if layout == VARINT:  # this tensor's varints end at its count-th end from ipos
        j = int(np.searchsorted(ends, ipos))
        if count and j + count > ends.size:
            raise WireFormatError(f"{count} varints run past the index section")
        ilen = int(ends[j + count - 1]) + 1 - ipos if count else 0
    else:
        ilen = sp.index_nbytes(layout, n, count)
        if ipos + ilen > index.nbytes:
            raise WireFormatError("the index section ends before this tensor's positions")
    buf = index[ipos: ipos + ilen]
    if layout != VARINT:
        return sp.positions(layout, buf, n, count), ilen
    idx = np.cumsum(varint_decode(buf, count) + 1) - 1
    if count and idx[-1] >= n:
        raise WireFormatError(f"varint index {int(idx[-1])} out of range for {n} entries")
    return idx, ilen


def scatter(shape: tuple[int, ...], idx: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """A new dense float32 tensor: `values` at `idx` (all of it when None), +0.0 elsewhere."""
    n = int(np.prod(shape, dtype=np.int64))
    if idx is None:
        return values.astype(np.float32, copy=True).reshape(shape)
    out = np.zeros(n, dtype=np.float32)
    out[idx] = values
    return out.reshape(shape)
