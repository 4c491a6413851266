"""zstd entropy coding of the payload sections, with an optional byte shuffle.

Why the shuffle: float32 values barely compress as they are, because the
high-entropy low mantissa bytes sit between the predictable sign/exponent bytes.
Transposing the value array so that byte 0 of every value comes first, then
byte 1, ... (as Blosc does) puts alike bytes together and zstd finds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import zstandard

from fedmpi.compress.base import BadParam, Container, register
from fedmpi.wire import WireFormatError


@lru_cache(maxsize=None)
def _compressor(level: int) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(level=level, write_content_size=True)


def shuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    return raw.reshape(-1, itemsize).T.reshape(-1) if itemsize > 1 else raw


def unshuffle(raw: np.ndarray, itemsize: int) -> np.ndarray:
    return raw.reshape(itemsize, -1).T.reshape(-1) if itemsize > 1 else raw


@register("zstd")
@dataclass(frozen=True, kw_only=True)
class Zstd(Container):
    level: int = 3
    shuffle: bool = True

    rank = 40

    def check(self):
        if not 1 <= self.level <= 22:
            raise BadParam("level", self.level, "1..22")

    def label(self):
        return f"zstd({self.level}{'' if self.shuffle else ',noshuffle'})"

    def squeeze(self, parts, itemsize):
        raw = np.concatenate(parts) if parts else np.empty(0, np.uint8)
        data = shuffle(raw, itemsize) if self.shuffle else raw
        return [np.frombuffer(_compressor(self.level).compress(np.ascontiguousarray(data)),
                              dtype=np.uint8)]

    def expand(self, stored, itemsize, raw_len):
        """Exactly one zstd frame that declares `raw_len` bytes and holds them; nothing after it.

        The declared size is checked before decompressing, so the output buffer is
        bounded by the section's limit (which `Container.unpack` took from the model).
        """
        data = np.ascontiguousarray(stored)
        try:
            declared = zstandard.frame_content_size(data)
            if declared != raw_len:
                raise WireFormatError(f"zstd frame declares {declared} bytes, "
                                      f"section {raw_len}")
            size = frame_size(data)
            if size != data.nbytes:
                raise WireFormatError(f"{data.nbytes - size} bytes follow the zstd frame "
                                      "(trailing bytes or a second frame)")
            raw = zstandard.ZstdDecompressor().decompress(
                data, max_output_size=raw_len, read_across_frames=False, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise WireFormatError(f"bad zstd frame: {exc}") from None
        raw = np.frombuffer(raw, dtype=np.uint8)
        if raw.nbytes != raw_len:
            raise WireFormatError(f"zstd frame holds {raw.nbytes} bytes, declared {raw_len}")
        return unshuffle(raw, itemsize) if self.shuffle else raw


_MAGIC = 0xFD2FB528
_BLOCK_RLE, _BLOCK_RESERVED = 1, 3


def frame_size(data: np.ndarray) -> int:
    """Bytes of the zstd frame that starts `data` (what ZSTD_findFrameCompressedSize
    computes; python-zstandard does not expose it, and its `allow_extra_data=False`
    lets bytes after a frame of empty content pass).

    Frame = header (magic included) + blocks, each a 3-byte little-endian header
    (bit 0: last, bits 1-2: type, bits 3-23: size) and its content (RLE: 1 byte) +
    a 4-byte checksum when the header says so.
    """
    if data.nbytes < 4 or int(data[:4].view("<u4")[0]) != _MAGIC:
        raise WireFormatError("section does not start with a zstd frame (magic)")
    pos = zstandard.frame_header_size(data)
    while True:
        if pos + 3 > data.nbytes:
            raise WireFormatError("zstd frame ends inside a block header (truncated)")
        head = int(data[pos]) | int(data[pos + 1]) << 8 | int(data[pos + 2]) << 16
        kind, size = (head >> 1) & 3, head >> 3
        if kind == _BLOCK_RESERVED or size > zstandard.BLOCKSIZE_MAX:
            raise WireFormatError(f"bad zstd block header {head:#08x}")
        pos += 3 + (1 if kind == _BLOCK_RLE else size)
        if head & 1:
            break
    if zstandard.get_frame_parameters(data).has_checksum:
        pos += 4
    if pos > data.nbytes:
        raise WireFormatError("zstd frame is truncated")
    return pos
