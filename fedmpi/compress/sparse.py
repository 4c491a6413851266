"""Sparse encoding: where a tensor's transmitted values go.

Per tensor one layout, recorded in the payload:

- DENSE: every entry is sent, no positions;
- BITMAP: ceil(n / 8) bytes, bit i (little-endian bit order) set where entry i is
  sent; padding bits must be 0;
- DELTA8 / DELTA16 / DELTA32: per sent entry the gap to the previous one
  (index - previous - 1, the first measured from -1) as fixed-width unsigned
  integers, the narrowest width that fits the largest gap.

`format: auto` picks the smallest of these by raw size, per tensor (dense wins
ties, then bitmap). The support is the kept mask from pruning, or else every
entry that is not +0.0 (so -0.0 round-trips bit-exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.compress.base import Layout, ValueCoder, register
from fedmpi.wire import WireFormatError

DENSE, BITMAP, DELTA8, DELTA16, DELTA32 = range(5)
_GAP = {DELTA8: np.dtype("u1"), DELTA16: np.dtype("<u2"), DELTA32: np.dtype("<u4")}
NAMES = {DENSE: "dense", BITMAP: "bitmap", DELTA8: "delta8", DELTA16: "delta16",
         DELTA32: "delta32"}
_LAYOUTS = {"dense": frozenset({DENSE}), "bitmap": frozenset({BITMAP}),
            "delta": frozenset(_GAP), "auto": frozenset(NAMES)}


@dataclass
class Placed:
    layout: int
    index: np.ndarray  # uint8 position bytes
    values: np.ndarray  # float32 values to code, in position order
    where: np.ndarray | None  # None (dense), bool mask or int64 indices
    nnz: int  # non-zero entries among the values


def index_nbytes(layout: int, numel: int, count: int) -> int:
    if layout == DENSE:
        return 0
    if layout == BITMAP:
        return (numel + 7) // 8
    if layout in _GAP:
        return count * _GAP[layout].itemsize
    raise WireFormatError(f"unknown sparse layout {layout}")


def scatter(numel: int, where: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """Dense float32 tensor from positions + values (a new array)."""
    if where is None:
        return values.astype(np.float32, copy=True)
    if where.dtype == bool:  # integer positions scatter several times faster than a mask
        where = np.flatnonzero(where)
    out = np.zeros(numel, dtype=np.float32)
    out[where] = values
    return out


def masked(flat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """flat where mask else +0.0, bit-exact (np.where is several times slower)."""
    return np.multiply(flat.view(np.uint32), mask, dtype=np.uint32).view(np.float32)


def check_header(layout: int, buf: np.ndarray, numel: int, count: int) -> None:
    """The index checks that need no pass over the index bytes: a dense tensor carries
    every entry, a bitmap's padding bits (in its last byte) are 0. Every decoder
    (numpy, fused, on-device) runs these through `Pipeline.read`."""
    if layout == DENSE and count != numel:
        raise WireFormatError(f"dense tensor carries {count} values, expected {numel}")
    if layout == BITMAP and numel % 8 and int(buf[-1]) >> (numel % 8):
        raise WireFormatError(f"bitmap padding bits are set (last byte {int(buf[-1]):#04x} "
                              f"for {numel} entries)")


def check_marked(marked: int, count: int) -> None:
    """A bitmap marks exactly as many entries as the header has values."""
    if marked != count:
        raise WireFormatError(f"bitmap marks {marked} entries, header says {count}")


def check_gaps(layout: int, big: int, last: int, numel: int, count: int) -> None:
    """Delta gaps given what a pass over them found (the largest gap, the last index):
    the narrowest width that fits the largest gap, the last index inside the tensor.
    Gaps are unsigned, so indices strictly increase (never unsorted or repeated)."""
    narrowest = DELTA8 if big < 1 << 8 else DELTA16 if big < 1 << 16 else DELTA32
    if layout != narrowest:
        raise WireFormatError(f"{NAMES[layout]} index gaps whose largest ({big}) fits "
                              f"{NAMES[narrowest]} (the narrowest width is required)")
    if count and last >= numel:
        raise WireFormatError(f"delta index {last} out of range for {numel} entries")


def positions(layout: int, buf: np.ndarray, numel: int, count: int) -> np.ndarray | None:
    """Decode-side inverse of the index bytes, validated.

    Every index list is canonical: a bitmap's padding bits are 0 and its
    popcount is `count`; delta gaps end inside the tensor and use the narrowest
    width that fits the largest gap, as the encoder does (check_header,
    check_marked, check_gaps: the rules the fast decoders share).
    """
    check_header(layout, buf, numel, count)
    if layout == DENSE:
        return None
    if layout == BITMAP:
        mask = np.unpackbits(buf, count=numel, bitorder="little").view(bool)
        check_marked(int(np.count_nonzero(mask)), count)
        return np.flatnonzero(mask)
    gaps = buf.view(_GAP[layout])
    idx = np.cumsum(gaps.astype(np.int64) + 1) - 1
    check_gaps(layout, int(gaps.max()) if count else 0, int(idx[-1]) if count else -1,
               numel, count)
    return idx


@register("sparse")
@dataclass(frozen=True, kw_only=True)
class Sparse(Layout):
    format: str = "auto"

    rank = 30
    choices = {"format": ("auto", "bitmap", "delta", "dense")}

    def label(self):
        return f"sparse({self.format})"

    def layouts(self) -> frozenset[int]:
        """The layouts this format ever produces: a decoder refuses the others."""
        return _LAYOUTS[self.format]

    def place(self, flat: np.ndarray, mask: np.ndarray | None, coder: ValueCoder) -> Placed:
        n = flat.size
        if self.format == "dense":
            values = flat if mask is None else masked(flat, mask)
            nnz = int(np.count_nonzero(values)) if mask is None else int(np.count_nonzero(mask))
            return Placed(DENSE, np.empty(0, np.uint8), values, None, nnz)
        if mask is None:
            mask = flat.view(np.uint32) != 0
        count = int(np.count_nonzero(mask))
        cost = {DENSE: coder.nbytes(n), BITMAP: (n + 7) // 8 + coder.nbytes(count)}
        idx = gaps = None
        if self.format == "delta" or (self.format == "auto" and count < (n + 7) // 8):
            idx = np.flatnonzero(mask)
            gaps = np.diff(idx, prepend=-1) - 1
            big = int(gaps.max()) if count else 0
            layout = DELTA8 if big < 1 << 8 else DELTA16 if big < 1 << 16 else DELTA32
            cost[layout] = count * _GAP[layout].itemsize + coder.nbytes(count)
        if self.format == "auto":
            layout = min(cost, key=lambda k: (cost[k], k))
        else:
            layout = BITMAP if self.format == "bitmap" else layout
        if layout == DENSE:
            values = flat if count == n else masked(flat, mask)
            return Placed(DENSE, np.empty(0, np.uint8), values, None, count)
        if layout == BITMAP:
            return Placed(BITMAP, np.packbits(mask, bitorder="little"), np.compress(mask, flat),
                          mask, count)
        return Placed(layout, gaps.astype(_GAP[layout]).view(np.uint8), flat[idx], idx, count)


DENSE_ONLY = Sparse(format="dense")  # the pipeline's layout when no sparse stage is given
