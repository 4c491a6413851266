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


@pytest.mark.parametrize("expect, message", [
    ({"round": 2}, "UPDATE for round 1, expected round 2"),
    ({"client": 3}, "UPDATE for client 2, expected client 3"),
    ({"client": {3, 4}}, "expected one of the expected clients"),
    ({"codec_id": 8}, "codec id 0x00000007, expected 0x00000008"),
    ({"n_tensors": 6}, "declares 5 tensors, the model has 6"),
])
def test_parse_checks_the_fields_the_receiver_expects(expect, message):
    """A valid checksum says nothing about the fields: each expected one is compared."""
    buf = frame(Kind.UPDATE, round=1, client=2, payload=b"abc", codec_id=7, n_tensors=5)
    ok = {"round": 1, "client": 2, "codec_id": 7, "n_tensors": 5}
    assert parse(buf, expect_kind=Kind.UPDATE, **ok)[0].n_tensors == 5
    assert parse(buf, client={1, 2})[0].client == 2
    with pytest.raises(WireFormatError, match=message):
        parse(buf, expect_kind=Kind.UPDATE, **{**ok, **expect})


def _documented_message(codec_id, crc, rows, index, values, itemsize, *, round, client):
    """A model message built by hand from the layout the docs give (wire.py, pipeline.py,
    base.py): header, then the section table and the meta, index and value sections."""
    meta = struct.pack("<IIII", codec_id, crc, len(rows), 0) + b"".join(
        struct.pack("<B3xQff", layout, count, p0, p1) for layout, count, p0, p1 in rows)
    sections = [(1, meta), (1, index), (itemsize, values)]
    payload = struct.pack("<I", 3) + b"".join(
        struct.pack("<B3xQQ", size, len(raw), len(raw)) for size, raw in sections) + \
        b"".join(raw for _, raw in sections)
    head = struct.pack("<4sBBHIIiIQI", b"FMPI", 1, int(Kind.UPDATE), 0, codec_id, round,
                       client, len(rows), len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def test_valid_messages_keep_the_documented_bytes():
    """Strict decoding must not change what valid messages look like: a dense model and
    a 3-bit uniform + bitmap one, byte for byte as documented, and both decode."""
    from fedmpi.compress import build_pipeline, spec_of
    from fedmpi.compress.pipeline import spec_crc

    dense = {"w": np.array([[1.5, -2.0], [0.0, 3.25]], np.float32),
             "b": np.array([0.5], np.float32)}
    pipe = build_pipeline([])
    want = _documented_message(
        pipe.codec_id, spec_crc(spec_of(dense)), [(0, 4, 0.0, 0.0), (0, 1, 0.0, 0.0)], b"",
        struct.pack("<5f", 1.5, -2.0, 0.0, 3.25, 0.5), 4, round=3, client=4)
    got = frame(Kind.UPDATE, round=3, client=4, payload=pipe.encode(dense).payload,
                codec_id=pipe.codec_id, n_tensors=2)
    assert got.tobytes() == want
    assert all(np.array_equal(v, dense[k]) for k, v in pipe.decode(parse(got)[1],
                                                                   spec_of(dense)).items())

    x = np.array([0, 1, 0, 3, 2, 0, 0, 7, 0.5], np.float32)  # 9 entries: 7 padding bits
    pipe = build_pipeline([{"quantize": {"bits": 3}}, {"sparse": {"format": "bitmap"}}])
    kept = x[x != 0]
    lo = np.float32(kept.min())
    scale = np.float32((np.float64(kept.max()) - lo) / 7)  # (max - min) / (2^k - 1)
    codes = np.rint((kept.astype(np.float64) - lo) / np.float64(scale)).astype(int)
    packed = sum(int(c) << (3 * i) for i, c in enumerate(codes)).to_bytes(2, "little")
    bitmap = bytes([0b10011010, 0b00000001])  # entries 1, 3, 4, 7 | 8, little-endian bits
    want = _documented_message(pipe.codec_id, spec_crc([("x", (9,))]),
                               [(1, 5, float(lo), float(scale))], bitmap, packed, 1,
                               round=0, client=-1)
    got = frame(Kind.UPDATE, round=0, client=-1, payload=pipe.encode({"x": x}).payload,
                codec_id=pipe.codec_id, n_tensors=1)
    assert got.tobytes() == want
    out = pipe.decode(parse(got)[1], [("x", (9,))])["x"]
    want_x = np.zeros(9, np.float32)  # offset + code * scale, in float64, rounded once
    want_x[x != 0] = (np.float64(lo) + codes * np.float64(scale)).astype(np.float32)
    assert np.array_equal(out, want_x)
