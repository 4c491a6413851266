"""Message framing: one contiguous uint8 buffer = fixed header + payload (pure, no MPI).

Header, little-endian, `HEADER_SIZE` = 40 bytes:

    offset size field
         0    4 magic b"FMPI"
         4    1 format version (VERSION)
         5    1 kind (Kind)
         6    2 reserved, must be 0
         8    4 codec_id   u32 (Pipeline.codec_id, 0 for control messages)
        12    4 round      u32
        16    4 client     i32 (-1 = none)
        20    4 n_tensors  u32
        24    8 payload_len u64
        32    4 payload crc32
        36    4 header crc32 of bytes 0..35

Why two checksums: the header one lets `reframe` change the client id without
re-reading the payload (a model broadcast to many clients is encoded once), and
lets `parse` report a damaged header separately from a damaged payload.
crc32 (zlib) runs at a few GB/s, well above what the codecs produce.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from fedmpi.messages import MESSAGES

MAGIC = b"FMPI"
VERSION = 1
_HEAD = struct.Struct("<4sBBHIIiIQI")  # everything but the header crc
HEADER_SIZE = _HEAD.size + 4
_MAX_U32 = 0xFFFFFFFF


class WireFormatError(ValueError):
    """A received buffer is malformed, truncated or corrupted."""


# The header's kind byte, generated from the one protocol table (fedmpi.messages).
Kind = enum.IntEnum("Kind", [(m.name, m.value) for m in MESSAGES], module=__name__)


@dataclass(frozen=True)
class Header:
    kind: Kind
    codec_id: int
    round: int
    client: int
    n_tensors: int
    payload_len: int
    payload_crc: int
    version: int = VERSION


def _as_bytes(payload) -> memoryview:
    if isinstance(payload, np.ndarray):
        payload = np.ascontiguousarray(payload)
        if payload.dtype != np.uint8:
            raise TypeError(f"payload array must be uint8, got {payload.dtype}")
    mv = memoryview(payload)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def _pack_head(h: Header) -> bytes:
    head = _HEAD.pack(MAGIC, h.version, int(h.kind), 0, h.codec_id, h.round, h.client,
                      h.n_tensors, h.payload_len, h.payload_crc)
    return head + struct.pack("<I", zlib.crc32(head))


def frame(kind: Kind, *, round: int, client: int, payload=b"", codec_id: int = 0,
          n_tensors: int = 0) -> np.ndarray:
    """Header + payload as one new contiguous uint8 array, ready for `Send`."""
    kind = Kind(kind)
    for name, value, lo, hi in (("round", round, 0, _MAX_U32), ("codec_id", codec_id, 0, _MAX_U32),
                                ("n_tensors", n_tensors, 0, _MAX_U32),
                                ("client", client, -(2**31), 2**31 - 1)):
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name}={value} does not fit the header ({lo}..{hi})")
    body = _as_bytes(payload)
    h = Header(kind=kind, codec_id=int(codec_id), round=int(round), client=int(client),
               n_tensors=int(n_tensors), payload_len=body.nbytes,
               payload_crc=zlib.crc32(body))
    out = np.empty(HEADER_SIZE + body.nbytes, dtype=np.uint8)
    out[:HEADER_SIZE] = np.frombuffer(_pack_head(h), dtype=np.uint8)
    out[HEADER_SIZE:] = np.frombuffer(body, dtype=np.uint8)
    return out


def parse_header(buf) -> Header:
    """Validate and decode the header only (payload length against `buf`, not its crc)."""
    mv = _as_bytes(buf)
    if mv.nbytes < HEADER_SIZE:
        raise WireFormatError(f"message of {mv.nbytes} bytes is shorter than the "
                              f"{HEADER_SIZE}-byte header")
    head = mv[: _HEAD.size]
    magic, version, kind, reserved, codec_id, rnd, client, n_tensors, plen, pcrc = \
        _HEAD.unpack(head)
    if magic != MAGIC:
        raise WireFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
    (hcrc,) = struct.unpack_from("<I", mv, _HEAD.size)
    if zlib.crc32(head) != hcrc:
        raise WireFormatError("header checksum mismatch (corrupted header)")
    if version != VERSION:
        raise WireFormatError(f"unsupported format version {version}, this build reads {VERSION}")
    if kind not in Kind._value2member_map_:
        raise WireFormatError(f"unknown message kind {kind}")
    if reserved != 0:
        raise WireFormatError(f"reserved header field is {reserved}, expected 0")
    if plen != mv.nbytes - HEADER_SIZE:
        raise WireFormatError(f"header declares a {plen}-byte payload but "
                              f"{mv.nbytes - HEADER_SIZE} bytes follow (truncated or padded)")
    return Header(kind=Kind(kind), codec_id=codec_id, round=rnd, client=client,
                  n_tensors=n_tensors, payload_len=plen, payload_crc=pcrc, version=version)


def parse(buf, *, expect_kind: Kind | None = None, round: int | None = None,
          client: int | Collection[int] | None = None, codec_id: int | None = None,
          n_tensors: int | None = None) -> tuple[Header, memoryview]:
    """Validate a whole message; returns its header and a view of its payload.

    The keyword arguments other than `buf` are what the receiver expects (None:
    not checked; `client` may be a collection of allowed ids). A checksum only
    says the bytes arrived as sent, so a receiver states every header field it
    can know: a model message must carry its pipeline's codec id and the model's
    tensor count, a control message codec id 0 and no tensors.
    """
    h = parse_header(buf)
    payload = _as_bytes(buf)[HEADER_SIZE:]
    if zlib.crc32(payload) != h.payload_crc:
        raise WireFormatError("payload checksum mismatch (corrupted payload)")
    if expect_kind is not None and h.kind != expect_kind:
        raise WireFormatError(f"expected a {Kind(expect_kind).name} message, got {h.kind.name}")
    expect(h, round=round, client=client, codec_id=codec_id, n_tensors=n_tensors)
    return h, payload


def expect(h: Header, *, round: int | None = None, client: int | Collection[int] | None = None,
           codec_id: int | None = None, n_tensors: int | None = None) -> Header:
    """Check header fields against what the receiver expects (None: not checked)."""
    name = h.kind.name
    if round is not None and h.round != round:
        raise WireFormatError(f"{name} for round {h.round}, expected round {round}")
    if client is not None:
        single = isinstance(client, (int, np.integer))
        ok = h.client == client if single else h.client in client
        if not ok:
            want = f"client {client}" if single else "one of the expected clients"
            raise WireFormatError(f"{name} for client {h.client}, expected {want}")
    if codec_id is not None and h.codec_id != codec_id:
        raise WireFormatError(f"{name} has codec id {h.codec_id:#010x}, expected {codec_id:#010x}")
    if n_tensors is not None and h.n_tensors != n_tensors:
        raise WireFormatError(f"{name} declares {h.n_tensors} tensors, the model has {n_tensors}")
    return h


def header_for(buf, *, client: int) -> np.ndarray:
    """The 40-byte header of the same message addressed to another client (payload crc
    carried over, nothing else read): with the shared payload it makes the whole message,
    so a broadcast to K clients holds K headers and one payload (see Transport.post_parts).
    """
    h = parse_header(buf)
    if not -(2**31) <= int(client) < 2**31:
        raise ValueError(f"client={client} does not fit the header")
    new = Header(kind=h.kind, codec_id=h.codec_id, round=h.round, client=int(client),
                 n_tensors=h.n_tensors, payload_len=h.payload_len, payload_crc=h.payload_crc)
    return np.frombuffer(_pack_head(new), dtype=np.uint8).copy()


def reframe(buf, *, client: int) -> np.ndarray:
    """The same message addressed to another client: new header, payload copied as is.

    The payload crc is carried over, not recomputed, so this costs one memcpy.
    """
    head = header_for(buf, client=client)
    out = np.array(np.frombuffer(_as_bytes(buf), dtype=np.uint8), copy=True)
    out[:HEADER_SIZE] = head
    return out
