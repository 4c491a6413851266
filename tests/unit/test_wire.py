"""Message framing: round trip, reframe, and every kind of damage named."""

import struct
import zlib

import numpy as np
import pytest

from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError, frame, parse, parse_header, reframe


def test_round_trip_all_payload_types():
    raw = bytes(range(256)) * 3
    for payload in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, np.uint8)):
        buf = frame(Kind.UPDATE, round=7, client=42, payload=payload, codec_id=0xDEADBEEF,
                    n_tensors=5)
        assert buf.dtype == np.uint8 and buf.flags.c_contiguous
        assert buf.nbytes == HEADER_SIZE + len(raw)
        h, body = parse(buf, expect_kind=Kind.UPDATE)
        assert (h.kind, h.round, h.client, h.codec_id, h.n_tensors) == \
            (Kind.UPDATE, 7, 42, 0xDEADBEEF, 5)
        assert bytes(body) == raw
        with pytest.raises(AttributeError):  # frozen
            h.round = 3


def test_empty_payload_and_no_client():
    h, body = parse(frame(Kind.STOP, round=0, client=-1))
    assert h.client == -1 and len(body) == 0 and h.kind is Kind.STOP


def test_reframe_changes_only_the_client():
    buf = frame(Kind.MODEL, round=3, client=-1, payload=b"x" * 1000, codec_id=9, n_tensors=2)
    other = reframe(buf, client=17)
    h, body = parse(other)
    assert h.client == 17 and h.round == 3 and h.codec_id == 9 and bytes(body) == b"x" * 1000
    assert parse(buf)[0].client == -1  # the original is untouched
    assert np.array_equal(other[HEADER_SIZE:], buf[HEADER_SIZE:])


def test_reframe_refuses_a_damaged_header():
    buf = frame(Kind.MODEL, round=3, client=1, payload=b"abc")
    buf[10] ^= 1
    with pytest.raises(WireFormatError, match="header checksum"):
        reframe(buf, client=2)


def _edit_header(buf, fmt, offset, value):
    """Rewrite one header field and fix the header crc, to reach the checks behind it."""
    out = buf.copy()
    struct.pack_into(fmt, out, offset, value)
    struct.pack_into("<I", out, HEADER_SIZE - 4, zlib.crc32(bytes(out[: HEADER_SIZE - 4])))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda b: b[:10], "shorter than"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: np.concatenate([b, np.zeros(1, np.uint8)]), "truncated or padded"),
    (lambda b: _edit_header(b, "<4s", 0, b"XXXX"), "magic"),
    (lambda b: _edit_header(b, "<B", 4, 99), "version"),
    (lambda b: _edit_header(b, "<B", 5, 77), "kind"),
    (lambda b: _edit_header(b, "<H", 6, 1), "reserved"),
    (lambda b: _edit_header(b, "<Q", 24, 3), "payload"),
])
def test_malformed_headers_are_named(edit, message):
    buf = frame(Kind.UPDATE, round=1, client=2, payload=b"payload bytes")
    with pytest.raises(WireFormatError, match=message):
        parse(edit(buf))


def test_flips_are_caught_by_the_checksums():
    buf = frame(Kind.UPDATE, round=1, client=2, payload=b"payload bytes")
    for bit in range(buf.nbytes * 8):
        bad = buf.copy()
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireFormatError):
            parse(bad)


def test_expect_kind():
    with pytest.raises(WireFormatError, match="expected a MODEL"):
        parse(frame(Kind.UPDATE, round=1, client=2), expect_kind=Kind.MODEL)


def test_parse_header_skips_the_payload_crc():
    buf = frame(Kind.UPDATE, round=1, client=2, payload=b"abc")
    buf[-1] ^= 1
    assert parse_header(buf).round == 1
    with pytest.raises(WireFormatError, match="payload checksum"):
        parse(buf)


def test_frame_rejects_out_of_range_fields():
    with pytest.raises(ValueError):
        frame(Kind.UPDATE, round=-1, client=0)
    with pytest.raises(ValueError):
        frame(Kind.UPDATE, round=0, client=2**31)
