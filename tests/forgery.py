"""Valid-CRC message forging, shared by the decoder fuzz (test_compress_fuzz.py) and the
fast-path equivalence tests (test_compress_fused.py, test_compress_ondevice.py).

A forger plays a sender that is wrong on purpose (a bug, another version, a hostile
peer): it takes a framed message apart into the fields a sender writes (header,
section table, meta prelude, per-tensor table, index and value bytes, zstd frames),
changes some of them, puts it back together and recomputes both checksums, so that
only the receiver's field checks can catch what changed.
"""

from __future__ import annotations

import functools
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import zstandard

from fedmpi.bench.codec import make_model
from fedmpi.compress import build_pipeline, spec_of
from fedmpi.compress import sparse as sp
from fedmpi.compress.pipeline import _PRELUDE, TABLE
from fedmpi.compress.zstd import Zstd, shuffle, unshuffle
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError, frame, parse

# Every decoder path: each layout, each value coder and bit width class (k < 8 with
# padding bits, k = 8, 8 < k < 16, k = 16), error feedback, zstd with and without shuffle.
VARIANTS = {
    "dense": [],
    "dense+zstd": [{"zstd": {}}],
    "dense+zstd-noshuffle": [{"zstd": {"level": 1, "shuffle": False}}],
    "bitmap": [{"prune": {"rate": 0.5}}, {"sparse": {"format": "bitmap"}}],
    "delta": [{"prune": {"rate": 0.95}}, {"sparse": {"format": "delta"}}],
    "auto+zstd": [{"prune": {"rate": 0.7}}, {"sparse": {}}, {"zstd": {}}],
    "sparse-dense": [{"prune": {"rate": 0.3}}, {"sparse": {"format": "dense"}}],
    "uniform1": [{"quantize": {"bits": 1}}, {"sparse": {}}],
    "uniform3+bitmap+zstd": [{"prune": {"rate": 0.5}}, {"quantize": {"bits": 3}},
                             {"sparse": {"format": "bitmap"}}, {"zstd": {}}],
    "uniform8": [{"quantize": {"bits": 8}}],
    "uniform12+delta": [{"prune": {"rate": 0.9}}, {"quantize": {"bits": 12}},
                        {"sparse": {"format": "delta"}}],
    "uniform16+ef+zstd": [{"quantize": {"bits": 16}}, {"memory": {}}, {"zstd": {}}],
    "pow2": [{"quantize": {"method": "pow2", "bits": 3}}, {"sparse": {}}],
    "pow2-8+zstd": [{"prune": {"rate": 0.5}}, {"quantize": {"method": "pow2", "bits": 8}},
                    {"zstd": {"shuffle": False}}],
    "fp16": [{"prune": {"rate": 0.5}}, {"quantize": {"method": "float16"}}, {"sparse": {}}],
    "bf16+bitmap+zstd": [{"quantize": {"method": "bfloat16"}}, {"sparse": {"format": "bitmap"}},
                         {"zstd": {}}],
    "sign": [{"quantize": {"method": "sign"}}],
    "sign+ef+bitmap+zstd": [{"prune": {"rate": 0.5}}, {"quantize": {"method": "sign"}},
                            {"memory": {}}, {"sparse": {"format": "bitmap"}}, {"zstd": {}}],
}
ROUND, CLIENT = 5, 9
_SECTION = struct.Struct("<B3sQQ")  # section table entry: itemsize, pad, raw, stored


def fuzz_model() -> dict[str, np.ndarray]:
    ts = make_model(300, seed=11)
    gappy = np.zeros(1200, np.float32)  # a gap past 8 bits: delta16 indices
    gappy[[3, 900, 1199]] = [0.5, -2.0, 1.0]
    ts.update(empty=np.zeros((0, 3), np.float32), odd=np.linspace(-1, 1, 13, dtype=np.float32),
              gappy=gappy)
    return ts


@dataclass
class Section:
    size: int
    raw: bytes  # logical bytes (unshuffled)
    pad: bytes = b"\0\0\0"
    raw_len: int | None = None  # declared, when not len(raw)
    stored_delta: int = 0  # declared stored length minus the real one
    suffix: bytes = b""  # appended to the stored bytes (trailing bytes, a second frame)


@dataclass
class Message:
    """A message taken apart into the fields a sender writes."""

    pipe: object
    head: dict
    prelude: list[int]
    table: np.ndarray  # TABLE rows (a copy)
    index: bytes
    values: bytes
    sections: list[Section] = field(default_factory=list)  # meta, index, values
    n_sections: int = 3
    meta_extra: bytes = b""

    @property
    def zstd(self) -> Zstd | None:
        return self.pipe.container if isinstance(self.pipe.container, Zstd) else None


def take_apart(pipe, buf: np.ndarray) -> Message:
    h, payload = parse(buf)
    p = bytes(payload)
    (n,) = struct.unpack_from("<I", p, 0)
    pos, table = 4 + n * _SECTION.size, []
    for i in range(n):
        size, pad, raw_len, st = _SECTION.unpack_from(p, 4 + _SECTION.size * i)
        stored = p[pos: pos + st]
        pos += st
        raw = stored
        if isinstance(pipe.container, Zstd):
            raw = zstandard.ZstdDecompressor().decompress(stored)
            if pipe.container.shuffle:
                raw = unshuffle(np.frombuffer(raw, np.uint8), size).tobytes()
        table.append(Section(size, raw))
    meta = table[0].raw
    prelude = list(_PRELUDE.unpack_from(meta, 0))
    rows = np.frombuffer(meta[_PRELUDE.size:], dtype=TABLE).copy()
    head = dict(version=h.version, kind=int(h.kind), reserved=0, codec_id=h.codec_id,
                round=h.round, client=h.client, n_tensors=h.n_tensors)
    return Message(pipe, head, prelude, rows, table[1].raw, table[2].raw, table)


def put_together(m: Message) -> np.ndarray:
    m.sections[0].raw = _PRELUDE.pack(*m.prelude) + m.table.tobytes() + m.meta_extra
    m.sections[1].raw, m.sections[2].raw = m.index, m.values
    z = m.zstd
    stored = []
    for s in m.sections:
        data = s.raw
        if z is not None:
            if z.shuffle and s.size > 1 and len(data) % s.size == 0:
                data = shuffle(np.frombuffer(data, np.uint8), s.size).tobytes()
            data = zstandard.ZstdCompressor(level=z.level, write_content_size=True).compress(data)
        stored.append(data + s.suffix)
    table = b"".join(_SECTION.pack(s.size, s.pad,
                                 len(s.raw) if s.raw_len is None else s.raw_len,
                                 max(0, len(st) + s.stored_delta))
                     for s, st in zip(m.sections, stored))
    payload = struct.pack("<I", m.n_sections) + table + b"".join(stored)
    hd = m.head
    head = struct.pack("<4sBBHIIiIQI", b"FMPI", hd["version"], hd["kind"], hd["reserved"],
                       hd["codec_id"], hd["round"], hd["client"], hd["n_tensors"],
                       len(payload), zlib.crc32(payload))
    return np.frombuffer(head + struct.pack("<I", zlib.crc32(head)) + payload, np.uint8).copy()


def tensor_spans(m: Message, spec) -> list[tuple[int, int, int, int, int, int]]:
    """Per tensor (layout, numel, index start, index length, value start, value length),
    as far as the table still describes the sections (an earlier mutation may not)."""
    out, ipos, vpos = [], 0, 0
    for (_, shape), row in zip(spec, m.table):
        numel, layout, count = int(np.prod(shape)), int(row["layout"]), int(row["count"])
        if layout not in sp.NAMES or count > numel:
            break
        ilen, vlen = sp.index_nbytes(layout, numel, count), m.pipe.coder.nbytes(count)
        if ipos + ilen > len(m.index) or vpos + vlen > len(m.values):
            break
        out.append((layout, numel, ipos, ilen, vpos, vlen))
        ipos, vpos = ipos + ilen, vpos + vlen
    return out


def pick(rng, values):
    """One of `values` as it is (numpy's choice would turn 2**64 - 1 into a float)."""
    return values[int(rng.integers(len(values)))]


def _poke(data: bytes, pos: int, new: bytes) -> bytes:
    return data[:pos] + new + data[pos + len(new):]


SPECIAL_F32 = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 3.4028235e38,
               -3.4028235e38, 1e38, 3e38, -1e30, 1e30, 1.5, 127.0, 128.0, -149.0, -150.0,
               0.5, 1e-45, 2.0**20, -2.0**40]

# name -> (mutation, always refused?). A mutation returns False when it cannot apply.


def m_n_tensors(m, rng, spec):
    m.head["n_tensors"] = int(pick(rng, [len(spec) + 1, len(spec) - 1, 0, 2**32 - 1]))


def m_codec_id(m, rng, spec):
    m.head["codec_id"] ^= int(rng.integers(1, 2**32))


def m_reserved(m, rng, spec):
    m.head["reserved"] = int(rng.integers(1, 2**16))


def m_round_client(m, rng, spec):
    key = ["round", "client"][int(rng.integers(2))]
    m.head[key] += int(pick(rng, [1, -1, 1000]))


def m_section_count(m, rng, spec):
    m.n_sections = int(pick(rng, [0, 1, 2, 4, 2**32 - 1]))


def m_section_size(m, rng, spec):
    s = m.sections[rng.integers(3)]
    s.size = int(pick(rng, [v for v in (0, 1, 2, 3, 4, 8, 255) if v != s.size]))


def m_section_pad(m, rng, spec):
    pad = bytearray(3)
    pad[rng.integers(3)] = int(rng.integers(1, 256))
    m.sections[rng.integers(3)].pad = bytes(pad)


def m_raw_len(m, rng, spec):
    s = m.sections[rng.integers(3)]
    n = len(s.raw)
    s.raw_len = int(pick(rng, [v for v in (n + 1, n - 1, 2 * n + 8, 0, 2**40, 2**64 - 1)
                                if v != n and v >= 0]))


def m_stored_len(m, rng, spec):
    m.sections[rng.integers(3)].stored_delta = int(pick(rng, [-3, -1, 1, 2]))


def m_trailing_stored(m, rng, spec):
    m.sections[rng.integers(3)].suffix = bytes(rng.integers(0, 256, rng.integers(1, 17))
                                               .astype(np.uint8))


def m_second_frame(m, rng, spec):
    extra = zstandard.ZstdCompressor(level=1, write_content_size=bool(rng.integers(2))) \
        .compress(bytes(rng.integers(0, 4, rng.integers(0, 40)).astype(np.uint8)))
    m.sections[rng.integers(3)].suffix = extra


def m_trailing_raw(m, rng, spec):
    extra = bytes(rng.integers(0, 256, pick(rng, [1, 2, 4, 8])).astype(np.uint8))
    which = int(rng.integers(3))
    if which == 0:
        m.meta_extra = extra
    elif which == 1:
        m.index += extra
    else:
        m.values += extra


def m_truncate_raw(m, rng, spec):
    which = [w for w in ("index", "values") if len(getattr(m, w))]
    if not which:
        return False
    w = which[rng.integers(len(which))]
    data = getattr(m, w)
    setattr(m, w, data[: rng.integers(0, len(data))])


def m_prelude(m, rng, spec):
    i = int(rng.integers(4))
    m.prelude[i] = (m.prelude[i] + int(rng.integers(1, 2**32))) % 2**32


def m_table_pad(m, rng, spec):
    if not len(m.table):
        return False
    m.table[rng.integers(len(m.table))]["pad"] = np.void(bytes([0, 0, 1 << rng.integers(8)]))


def m_layout(m, rng, spec):
    row = m.table[rng.integers(len(m.table))]
    row["layout"] = int(pick(rng, [v for v in (0, 1, 2, 3, 4, 5, 200, 255)
                                    if v != row["layout"]]))


def m_count(m, rng, spec):
    i = int(rng.integers(len(m.table)))
    numel = int(np.prod(spec[i][1]))
    old = int(m.table[i]["count"])
    new = int(pick(rng, [old + 1, old - 1, 0, numel, numel + 1, 2**64 - 1, 2**63]))
    if new == old or new < 0:
        return False
    m.table[i]["count"] = new


def m_params(m, rng, spec):
    row = m.table[rng.integers(len(m.table))]
    key = ["p0", "p1"][int(rng.integers(2))]
    if rng.integers(4):
        row[key] = SPECIAL_F32[rng.integers(len(SPECIAL_F32))]
    else:  # any bit pattern
        row[key] = np.uint32(rng.integers(0, 2**32)).view(np.float32)


def m_bitmap_padding(m, rng, spec):
    spans = [s for s in tensor_spans(m, spec) if s[0] == sp.BITMAP and s[1] % 8]
    if not spans:
        return False
    _, numel, ipos, ilen, *_ = spans[rng.integers(len(spans))]
    last = m.index[ipos + ilen - 1] | (1 << int(rng.integers(numel % 8, 8)))
    m.index = _poke(m.index, ipos + ilen - 1, bytes([last]))


def m_index_bits(m, rng, spec):
    if not m.index:
        return False
    pos = int(rng.integers(len(m.index)))
    m.index = _poke(m.index, pos, bytes([m.index[pos] ^ (1 << int(rng.integers(8)))]))


def m_delta_gap(m, rng, spec):
    spans = [s for s in tensor_spans(m, spec) if s[0] in (sp.DELTA8, sp.DELTA16, sp.DELTA32)
             and s[3]]
    if not spans:
        return False
    layout, _, ipos, ilen, *_ = spans[rng.integers(len(spans))]
    width = {sp.DELTA8: 1, sp.DELTA16: 2, sp.DELTA32: 4}[layout]
    j = int(rng.integers(ilen // width))
    gap = int(pick(rng, [0, 1, 255, 2**(8 * width) - 1, int(rng.integers(0, 2**(8 * width)))]))
    m.index = _poke(m.index, ipos + j * width, gap.to_bytes(width, "little"))


def m_code_padding(m, rng, spec):
    k = getattr(m.pipe.coder, "k", 32)
    spans = [(i, sp_) for i, sp_ in enumerate(tensor_spans(m, spec))
             if sp_[5] and int(m.table[i]["count"]) * k % 8]
    if not spans:
        return False
    i, (*_, vpos, vlen) = spans[rng.integers(len(spans))]
    used = int(m.table[i]["count"]) * k % 8
    last = m.values[vpos + vlen - 1] | (1 << int(rng.integers(used, 8)))
    m.values = _poke(m.values, vpos + vlen - 1, bytes([last]))


def m_value_bytes(m, rng, spec):
    if not m.values:
        return False
    pos = int(rng.integers(len(m.values)))
    n = int(rng.integers(1, 5))
    m.values = _poke(m.values, pos, bytes(rng.integers(0, 256, n).astype(np.uint8))[
        : len(m.values) - pos])


def m_special_value(m, rng, spec):
    """A float bit pattern for inf/NaN (or the pow2 code for -0) where a value goes."""
    coder = m.pipe.coder
    size = coder.itemsize if getattr(coder, "method", "") != "pow2" else 1
    if len(m.values) < size:
        return False
    method = getattr(coder, "method", "float32")
    pos = int(rng.integers(len(m.values) // size)) * size
    if method == "float16":
        new = int(pick(rng, [0x7C00, 0xFC00, 0x7E00, 0x7C01])).to_bytes(2, "little")
    elif method == "bfloat16":
        new = int(pick(rng, [0x7F80, 0xFF80, 0x7FC0, 0x7F81])).to_bytes(2, "little")
    elif method == "float32":
        new = np.array(pick(rng, [np.nan, np.inf, -np.inf]), "<f4").tobytes()
    elif method == "pow2" and coder.k == 8:  # whole byte per code: sign bit, no magnitude
        new = bytes([0x80])
    else:
        return False
    m.values = _poke(m.values, pos, new)


def m_bit_flips(m, rng, spec):
    which = int(rng.integers(3))
    data = [m.table.tobytes(), m.index, m.values][which]
    if not data:
        return False
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.integers(len(data) * 8))
        data[pos // 8] ^= 1 << (pos % 8)
    if which == 0:
        m.table = np.frombuffer(bytes(data), TABLE).copy()
    elif which == 1:
        m.index = bytes(data)
    else:
        m.values = bytes(data)


def m_swap_sections(m, rng, spec):
    if m.index == m.values:
        return False
    m.index, m.values = m.values, m.index


MUTATIONS = {  # name: (function, always refused)
    "n_tensors": (m_n_tensors, True), "codec_id": (m_codec_id, True),
    "header_reserved": (m_reserved, True), "round_client": (m_round_client, True),
    "section_count": (m_section_count, True), "section_itemsize": (m_section_size, True),
    "section_pad": (m_section_pad, True), "raw_len": (m_raw_len, True),
    "stored_len": (m_stored_len, True), "trailing_stored": (m_trailing_stored, True),
    "second_frame": (m_second_frame, True), "trailing_raw": (m_trailing_raw, True),
    "truncate_raw": (m_truncate_raw, True), "prelude": (m_prelude, True),
    "table_pad": (m_table_pad, True), "count": (m_count, True),
    "bitmap_padding": (m_bitmap_padding, True), "code_padding": (m_code_padding, True),
    "layout": (m_layout, False), "params": (m_params, False),
    "index_bits": (m_index_bits, False), "delta_gap": (m_delta_gap, False),
    "value_bytes": (m_value_bytes, False), "special_value": (m_special_value, True),
    "bit_flips": (m_bit_flips, False), "swap_sections": (m_swap_sections, False),
}


@functools.cache
def make_corpus():
    ts = fuzz_model()
    spec = spec_of(ts)
    out = {}
    for name, stages in VARIANTS.items():
        pipe = build_pipeline(stages)
        enc = pipe.encode(ts, memory=pipe.new_memory())
        buf = frame(Kind.UPDATE, round=ROUND, client=CLIENT, payload=enc.payload,
                    codec_id=pipe.codec_id, n_tensors=len(ts))
        out[name] = (pipe, buf, enc.reconstructed)
    dense_bytes = 4 * sum(int(np.prod(s)) for _, s in spec)
    return spec, out, dense_bytes


def forge(pipe, buf, spec, names, rng) -> np.ndarray | None:
    """Apply the named mutations, fix both checksums; None when one cannot apply."""
    m = take_apart(pipe, buf)
    for name in names:
        if MUTATIONS[name][0](m, rng, spec) is False:
            return None
    return put_together(m)


def receive(pipe, spec, buf):
    """The receive path of an UPDATE: header expectations, then the payload decoder."""
    _, payload = parse(buf, expect_kind=Kind.UPDATE, round=ROUND, client=CLIENT,
                       codec_id=pipe.codec_id, n_tensors=len(spec))
    return pipe.decode(payload, spec)


def assert_model(out, spec):
    assert list(out) == [n for n, _ in spec]
    for (name, shape), v in zip(spec, out.values()):
        assert v.shape == shape and v.dtype == np.float32, name
        assert np.isfinite(v).all(), name


# ============================================================ focused cases

SMALL = {"w": np.linspace(-1, 1, 13, dtype=np.float32).reshape(13),
         "v": np.array([[0, 0.5, 0, -2, 0], [0, 0, 0, 1, 0]], np.float32)}


def crafted(stages, edit, model=SMALL):
    """Encode `model`, edit the taken-apart message, put it back together (valid CRCs)."""
    pipe = build_pipeline(stages)
    enc = pipe.encode(model, memory=pipe.new_memory())
    buf = frame(Kind.UPDATE, round=ROUND, client=CLIENT, payload=enc.payload,
                codec_id=pipe.codec_id, n_tensors=len(model))
    m = take_apart(pipe, buf)
    edit(m)
    return pipe, spec_of(model), put_together(m)


def _set(row_field, value, i=0):
    def edit(m):
        m.table[i][row_field] = value
    return edit


def _second_frame(which):
    def edit(m):
        m.sections[which].suffix = zstandard.ZstdCompressor(write_content_size=True) \
            .compress(b"more")
    return edit


def _suffix(which, extra):
    def edit(m):
        m.sections[which].suffix = extra
    return edit


def _index(fn):
    def edit(m):
        m.index = fn(m.index)
    return edit


def _values(fn):
    def edit(m):
        m.values = fn(m.values)
    return edit


def _attr(name, value):
    def edit(m):
        setattr(m, name, value)
    return edit


def _reserved(m):
    m.prelude[3] = 1


def _section_pad(m):
    m.sections[2].pad = b"\0\0\x80"


def _section_size(m):
    m.sections[2].size = 1


def _empty_frame_then_bytes(m):  # python-zstandard alone lets this pass
    m.index, m.sections[1].suffix = b"", b"\x00\x01"


FULL = {"w": np.arange(1, 14, dtype=np.float32), "v": np.ones((2, 5), np.float32)}
ZSTD = [{"zstd": {}}]
UNIFORM3 = [{"quantize": {"bits": 3}}]
POW2 = [{"quantize": {"method": "pow2", "bits": 3}}]
SIGN = [{"quantize": {"method": "sign"}}]


# (stages, edit, message regex[, model]) of one crafted message per rule
FOCUSED = [(*case, SMALL)[:4] for case in [
    # uniform dequantization with finite but huge offset/scale decoded to inf
    (UNIFORM3, lambda m: (_set("p0", 1e38)(m), _set("p1", 1e38)(m)), "beyond float32"),
    ([{"quantize": {"bits": 8}}], _set("p1", 3.4e38), "beyond float32"),
    (UNIFORM3, _set("p1", -0.0), "scale"),
    # trailing bytes or a second zstd frame after a section
    (ZSTD, _second_frame(2), "second frame"),
    (ZSTD, _suffix(0, b"\x00"), "trailing bytes"),
    (ZSTD, _empty_frame_then_bytes, "trailing bytes"),
    # non-zero reserved words and padding
    ([], _reserved, "reserved meta word"),
    ([], _set("pad", np.void(b"\0\1\0")), "table padding"),
    ([], _section_pad, "section 2: padding"),
    # a section whose item size is not the coder's (it changes zstd's byte shuffle)
    ([], _section_size, "item size 1, expected 4"),
    # padding bits set in k-bit codes (13 * 3 = 39 bits: one unused bit)
    (UNIFORM3, _values(lambda v: _poke(v, 4, bytes([v[4] | 0x80]))), "padding bits"),
    # index lists: a layout this sparse format never writes; a wider delta than needed
    ([{"sparse": {"format": "bitmap"}}], lambda m: (_set("layout", sp.DENSE)(m),
                                                    _set("layout", sp.DENSE, 1)(m),
                                                    _attr("index", b"")(m)),
     "not one that sparse\\(bitmap\\) produces", FULL),
    ([{"prune": {"rate": 0.5}}, {"sparse": {"format": "delta"}}],
     lambda m: (_set("layout", sp.DELTA16)(m), _set("layout", sp.DELTA16, 1)(m),
                _index(lambda ix: np.frombuffer(ix, np.uint8).astype("<u2").tobytes())(m)),
     "narrowest width"),
    # side information the coder does not use must be +0.0
    ([], _set("p0", 1.0), "p0 is 1.0"),
    (POW2, _set("p1", 2.0), "p1 is 2.0"),
    # pow2: an exponent below float32's; a sign with no magnitude (-0)
    (POW2, _set("p0", -200.0), "exponent -200"),
    # sign: a negative scale; a sign bit set with scale 0 (-0); an unused p1
    (SIGN, _set("p0", -1.0), "sign scale"),
    (SIGN, _set("p0", 0.0), "scale 0"),
    (SIGN, _set("p1", 1.0), "p1 is 1.0"),
    ([{"quantize": {"method": "pow2", "bits": 7}}], _values(lambda v: b"\x80" + v[1:]),
     "no magnitude"),
    # non-finite values
    ([], _values(lambda v: np.array([np.nan], "<f4").tobytes() + v[4:]), "finite"),
    ([{"quantize": {"method": "float16"}}], _values(lambda v: b"\x00\x7c" + v[2:]), "finite"),
    ([{"quantize": {"method": "bfloat16"}}], _values(lambda v: b"\xc0\x7f" + v[2:]),
     "finite"),
]]


# ============================================================ fast paths vs the reference


def same_outcome(fast, reference, payload) -> bool:
    """Decode `payload` with both: True when both return the same tensors (names,
    shapes, bits; torch tensors compared on the host), False when both raise
    WireFormatError; an assertion error for anything else (one refuses, the other
    accepts, different values, or another exception)."""
    got = []
    for decode in (fast, reference):
        try:
            got.append(decode(payload))
        except WireFormatError:
            got.append(None)
    f, r = got
    if f is None or r is None:
        assert f is r, f"{'reference' if r is None else 'fast path'} alone refused it"
        return False
    assert list(f) == list(r)
    for k in r:
        a = f[k].cpu().numpy() if hasattr(f[k], "cpu") else f[k]
        assert a.shape == r[k].shape and a.dtype == r[k].dtype, k
        assert np.array_equal(a.view(np.uint32), r[k].view(np.uint32)), k
    return True


HEADER_MUTATIONS = frozenset({"n_tensors", "codec_id", "header_reserved", "round_client"})
PAYLOAD_MUTATIONS = sorted(set(MUTATIONS) - HEADER_MUTATIONS)  # what payload decoders see


def mutation_outcomes(variants, fast, reference, *, reps: int = 12, seed: int = 20261128):
    """Every payload mutation on every named variant of the corpus, `reps` times: the
    fast decoder (fast(pipe, spec) -> callable on a payload) and the reference agree.
    Returns {mutation: [refused, accepted]}."""
    spec, msgs, _ = make_corpus()
    rng = np.random.default_rng(seed)
    outcomes = {name: [0, 0] for name in PAYLOAD_MUTATIONS}
    for variant in variants:
        pipe, buf, _ = msgs[variant]
        for name in PAYLOAD_MUTATIONS:
            for _ in range(reps):
                bad = forge(pipe, buf, spec, [name], rng)
                if bad is None:
                    break  # does not apply to this pipeline
                payload = bad[HEADER_SIZE:]
                accepted = same_outcome(fast(pipe, spec), reference(pipe, spec), payload)
                outcomes[name][accepted] += 1
    return outcomes
