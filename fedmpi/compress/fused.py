"""Fused CPU codec for the hot path: prune + sparse (+ zstd) of float32 values.

Why: the numpy reference path makes ~5 passes over the model (abs, threshold,
compare, pack, gather) and copies the sections once more into the payload; on
ResNet-18 that is 0.1-0.16 of a memory copy. Here the encoder reads each tensor
twice (one scan that locates the pruning cut, one that writes bitmap or gaps
and the kept values straight into the payload) and the decoder writes each
output value once. The numpy path (`Pipeline.encode`/`decode` below the
dispatch) stays the reference: the payload bytes are identical, which the tests
check with hypothesis, ties and zeros included. Both refuse NaN/inf on encode
(here the pruning scan finds the largest |x| on the way) and refuse the same
messages on decode: the fused decoder starts from the reference's
`Pipeline.read` and judges what its kernels find with the reference's rule
functions (tests: every valid-CRC forgery of tests/forgery.py, both decoders).

The exact cut (the m-th smallest |x| over the pruned tensors, ties by position):
|x| as float32 bits is an integer ordered like |x|, so
1. a fixed-seed sample of 65,536 entries brackets the cut in a band [lo, hi);
2. one scan counts the entries below lo and collects those inside the band
   (about 2% of them) per tensor;
3. the cut is selected exactly inside the band; per tensor follow the number
   kept and how many of its ties at the cut go (the first ones by position).
If the sample misled us (band overflows or misses), a 65,536-bin histogram of
the top bits gives a band that holds the cut for sure (one more scan).

Used when numba imports and the pipeline is prune (any scope) + float32 values
+ sparse (any format) + any container, without or with error feedback.
`FEDMPI_FUSED=0` forces the reference path. Without numba a note is logged once
and the reference path runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import struct

import numpy as np

from fedmpi.compress import sparse as sp
from fedmpi.compress.base import Container
from fedmpi.compress.pipeline import _PRELUDE, TABLE, Encoded, nonfinite_input, spec_crc
from fedmpi.compress.prune import _EXACT_BELOW, _SAMPLE, _SEED, Prune, n_drop
from fedmpi.compress.quantize import Float32, refuse_nonfinite
from fedmpi.wire import WireFormatError

log = logging.getLogger(__name__)

try:
    from fedmpi.compress import kernels as K
except Exception as _exc:  # noqa: BLE001 - numba missing, too old or broken: numpy does it all
    K = None
    _MISSING = f"{type(_exc).__name__}: {_exc}"

ENV = "FEDMPI_FUSED"
ABS, ALL_BITS = 0x7FFFFFFF, 0xFFFFFFFF
EXP = 0x7F800000  # |x| bits from here up are inf or NaN
_noted = False


def available() -> bool:
    """numba is importable and FEDMPI_FUSED is not 0 (logs once why not)."""
    global _noted
    if os.environ.get(ENV, "1") == "0":
        return False
    if K is None and not _noted:
        _noted = True
        log.warning("fedmpi: numba is not available (%s); the codec runs its numpy path "
                    "(slower, same bytes)", _MISSING)
    if K is not None and not _noted:
        _noted = True
        if not K.check_avx512():
            log.warning("fedmpi: the AVX-512 codec kernels disagree with the portable ones "
                        "on this machine; using the portable kernels")
    return K is not None


@contextlib.contextmanager
def disabled():
    """Inside the block the numpy reference path runs (tests and benchmarks compare)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def applies(pipe) -> bool:
    return (available() and type(pipe.coder) is Float32 and isinstance(pipe.layout, sp.Sparse)
            and (pipe.pruner is None or type(pipe.pruner) is Prune))


# ----------------------------------------------------------------------------- the cut


class Rule:
    """Per tensor which entries are sent: `(bits & amask) >= thr`, thr = ta before
    position `split`, tb from it on (see kernels.py), and how many that is."""

    __slots__ = ("amask", "ta", "tb", "split", "count")

    def __init__(self, amask: int, thr: int, count: int, *, ta: int | None = None,
                 split: int = 0):
        self.amask, self.tb, self.count = np.uint32(amask), np.uint32(thr), count
        self.ta, self.split = np.uint32(thr if ta is None else ta), split

    @property
    def args(self) -> tuple:
        return self.amask, self.ta, self.tb, self.split


def support(u: np.ndarray) -> Rule:
    """Without pruning the sent entries are those that are not +0.0 (-0.0 round-trips)."""
    return Rule(ALL_BITS, 1, int(np.count_nonzero(u)))


def _band(us: list[np.ndarray], n: int, m: int) -> tuple[int, int]:
    """A band [lo, hi) of |x| bits that very probably holds the m-th smallest."""
    if n <= _EXACT_BELOW:
        return 0, ABS + 1
    pos = _sample_positions(n)
    sizes = np.array([u.size for u in us])
    ends = np.cumsum(sizes)
    starts = np.searchsorted(pos, ends - sizes)
    stops = np.searchsorted(pos, ends)
    sample, k = np.empty(_SAMPLE, dtype=np.uint32), 0
    for u, a, b, e in zip(us, starts, stops, ends):
        k = K.gather_abs(u, pos[a:b], e - u.size, sample, k)
    q = m / n
    slack = 4.5 * np.sqrt(q * (1 - q) / _SAMPLE) + 8.0 / _SAMPLE  # as prune.keep_mask
    i_lo, i_hi = int((q - slack) * _SAMPLE), int(np.ceil((q + slack) * _SAMPLE))
    ranks = [i for i in (i_lo, i_hi) if 0 < i < _SAMPLE]
    if ranks:
        sample.partition(ranks)  # only these two ranks are read
    lo = int(sample[i_lo]) if i_lo > 0 else 0
    hi = int(sample[i_hi]) + 1 if i_hi < _SAMPLE else ABS + 1
    return lo, hi


@functools.lru_cache(maxsize=8)
def _sample_positions(n: int) -> np.ndarray:
    """Sorted fixed-seed sample positions (the same model size comes back every round)."""
    return np.sort(np.random.default_rng(_SEED).integers(0, n, size=_SAMPLE))


def _exact_band(us: list[np.ndarray], m: int) -> tuple[int, int, int]:
    """(lo, hi, entries in it) of the top-16-bit bin that holds the m-th smallest."""
    hist = np.zeros(1 << 16, dtype=np.int64)
    for u in us:
        K.histogram_hi(u, hist)
    b = int(np.searchsorted(np.cumsum(hist), m))  # first bin whose running total >= m
    return b << 15, (b + 1) << 15, int(hist[b])


def _scan(us, lo, hi, cap):
    """Per tensor (entries below lo, candidate end offset, largest |x| bits), candidates;
    None on overflow."""
    cand = np.empty(cap + 64, dtype=np.uint32)
    below, ends, tops, k = [], [], [], 0
    lo32, hi32 = np.int64(lo), np.int64(hi)
    for u in us:
        b, k, top = K.scan(u, lo32, hi32, cand, k)
        if k < 0:
            return None
        below.append(int(b))
        ends.append(k)
        tops.append(int(top))
    cand = cand[:k]
    np.bitwise_and(cand, np.uint32(ABS), out=cand)  # the AVX-512 scan stores raw bits
    return below, ends, tops, cand


def group_rules(us: list[np.ndarray], rate: float) -> tuple[list[Rule], list[int | None]]:
    """Rules that drop exactly n_drop(rate, n) entries of the group, as prune.keep_mask,
    and per tensor its largest |x| bits where the scan saw them (else None)."""
    n = sum(u.size for u in us)
    m = n_drop(rate, n)
    if m <= 0:  # keep_mask: a > 0
        return [Rule(ABS, 1, int(np.count_nonzero(u & np.uint32(ABS)))) for u in us], \
            [None] * len(us)
    lo, hi = _band(us, n, m)
    cap = n if hi - lo > ABS else int(0.05 * n) + 4096
    scanned = _scan(us, lo, hi, cap)
    if scanned is not None and not 1 <= m - sum(scanned[0]) <= scanned[3].size:
        scanned = None
    if scanned is None:  # the sample misled us: an exact band from the histogram
        lo, hi, cap = _exact_band(us, m)
        scanned = _scan(us, lo, hi, cap)
    below, ends, tops, cand = scanned
    r = m - sum(below)  # rank of the cut inside the band, 1-based
    t = int(np.partition(cand, r - 1)[r - 1])
    d = r - int(K.count_compare(cand, np.uint32(t))[0])  # ties at t that go: the first d
    rules, start, ties_before = [], 0, 0
    for u, b, end in zip(us, below, ends):
        lt, eq = (int(v) for v in K.count_compare(cand[start:end], np.uint32(t)))
        above = u.size - b - (end - start) + (end - start - lt - eq)
        drop = min(eq, max(0, d - ties_before)) if t > 0 else eq  # cut at 0: every zero goes
        split = 0 if drop in (0, eq) else int(K.nth_tie(u, np.uint32(t), drop))
        thr = t + 1 if drop == eq else t  # all ties go: keep a > t; none: keep a >= t
        rules.append(Rule(ABS, thr, above + eq - drop, ta=t + 1, split=split))
        ties_before += eq
        start = end
    return rules, tops


def rules_for(pruner: Prune | None, us: list[np.ndarray], shapes
              ) -> tuple[list[Rule], list[int | None]]:
    """Per tensor its Rule, and its largest |x| bits where pruning scanned it (else None)."""
    out: list[Rule | None] = [None] * len(us)
    tops: list[int | None] = [None] * len(us)
    if pruner is not None and pruner.rate > 0:
        chosen = [i for i, s in enumerate(shapes) if pruner.tensors == "all" or len(s) >= 2]
        groups = [chosen] if pruner.scope == "global" else [[i] for i in chosen]
        for group in (g for g in groups if g):
            rules, seen = group_rules([us[i] for i in group], pruner.rate)
            for i, rule, top in zip(group, rules, seen):
                out[i], tops[i] = rule, top
    return [r if r is not None else support(u) for r, u in zip(out, us)], tops


# ----------------------------------------------------------------------------- layout


SPECULATE = object()  # `choose` result: delta8, to be confirmed while writing


def choose(fmt: str, u: np.ndarray, rule: Rule, speculate: bool = False) -> tuple[int, int]:
    """(layout, nnz) exactly as sparse.Sparse.place picks them for float32 values.

    Where a delta layout competes, the largest gap decides its width. With `speculate`
    that extra scan is skipped: delta8 is assumed (it then wins whenever it fits, since
    count < ceil(n / 8) or the format is delta) and the writer checks the gaps.
    """
    n, count = u.size, rule.count
    if fmt == "dense":
        nnz = count if rule.amask == ABS else int(np.count_nonzero(u.view(np.float32)))
        return sp.DENSE, nnz
    cost = {sp.DENSE: 4 * n, sp.BITMAP: (n + 7) // 8 + 4 * count}
    layout = sp.BITMAP
    if fmt == "delta" or (fmt == "auto" and count < (n + 7) // 8):
        if speculate and count:
            return sp.DELTA8, count
        big = int(K.max_gap(u, *rule.args)) if count else 0
        layout = sp.DELTA8 if big < 1 << 8 else sp.DELTA16 if big < 1 << 16 else sp.DELTA32
        cost[layout] = count * sp._GAP[layout].itemsize + 4 * count
    if fmt == "auto":
        layout = min(cost, key=lambda k: (cost[k], k))
    elif fmt == "bitmap":
        layout = sp.BITMAP
    return layout, count


def _write(layout, u, rule, index, vals) -> bool:
    """index/vals: this tensor's regions in the payload (or the sections); False when
    the gaps of a delta8 layout do not fit in a byte."""
    if layout == sp.DENSE:
        if rule.count == u.size and rule.amask == ALL_BITS:
            vals[: u.size] = u
        else:
            K.write_masked(u, *rule.args, vals)
        return True
    if layout == sp.BITMAP:
        k = K.bitmap_writer(u, *rule.args, index, vals)
    else:
        k, big = K.write_delta(u, *rule.args, index.view(sp._GAP[layout]), vals)
        if layout == sp.DELTA8 and big >= 1 << 8:
            return False  # a speculated delta8 does not fit
    assert k == rule.count, (k, rule.count)  # the counting scan and the writer agree
    return True


def _view32(buf: np.ndarray, start: int, count: int) -> np.ndarray:
    return buf[start: start + 4 * count].view("<u4")


class _LazyEncoded(Encoded):
    """Encoded whose `reconstructed` is decoded from the payload on first access.

    Why: a sender rarely needs it (the server's broadcast does, a client does not),
    and decoding its own payload is bit-identical to what the receiver gets.
    """

    def __init__(self, *, make, **fields):
        self._make, self._recon = make, None
        super().__init__(reconstructed=None, **fields)

    @property
    def reconstructed(self):
        if self._recon is None:
            self._recon = self._make()
        return self._recon

    @reconstructed.setter
    def reconstructed(self, value):
        self._recon = value


def encode(pipe, tensors, memory=None) -> Encoded:
    names = list(tensors)
    shapes = [tuple(np.shape(tensors[k])) for k in names]
    flats = [np.ascontiguousarray(tensors[k], dtype=np.float32).reshape(-1) for k in names]
    if memory is not None:
        flats = [memory.compensate(k, f) for k, f in zip(names, flats)]
    us = [f.view(np.uint32) for f in flats]
    rules, tops = rules_for(pipe.pruner, us, shapes)
    for name, u, top in zip(names, us, tops):  # as Pipeline.encode: NaN, inf never sent
        if (top >= EXP) if top is not None else K.first_nonfinite(u) >= 0:
            raise nonfinite_input(pipe, name)
    payload, nnz = _assemble(pipe, names, shapes, us, rules, speculate=True) or \
        _assemble(pipe, names, shapes, us, rules, speculate=False)
    numel = sum(u.size for u in us)
    spec = list(zip(names, shapes))
    fields = dict(payload=payload, nnz=nnz, numel=numel, dense_bytes=4 * numel)
    if memory is not None:
        recon = decode(pipe, payload, spec)
        for name, shape, flat in zip(names, shapes, flats):
            memory.update(name, shape, flat, recon[name].reshape(-1))
        return Encoded(reconstructed=recon, **fields)
    return _LazyEncoded(make=lambda: decode(pipe, payload, spec), **fields)


def _assemble(pipe, names, shapes, us, rules, speculate):
    """(payload, nnz), or None when a speculated delta8 layout turned out not to fit."""
    picks = [choose(pipe.layout.format, u, r, speculate) for u, r in zip(us, rules)]
    counts = [u.size if lay == sp.DENSE else r.count for u, r, (lay, _) in zip(us, rules, picks)]
    ilens = [sp.index_nbytes(lay, u.size, c) for u, (lay, _), c in zip(us, picks, counts)]
    table = np.zeros(len(names), dtype=TABLE)
    table["layout"] = [lay for lay, _ in picks]
    table["count"] = counts
    meta = np.concatenate([np.frombuffer(_PRELUDE.pack(
        pipe.codec_id, spec_crc(list(zip(names, shapes))), len(names), 0), np.uint8),
        table.view(np.uint8)])
    ilen, vlen = sum(ilens), 4 * sum(counts)
    plain = type(pipe.container) is Container
    if plain:  # write the sections where they go in the payload: no copy afterwards
        sec = Container._SECTION
        head = struct.pack("<I", 3) + sec.pack(1, b"", meta.size, meta.size) + \
            sec.pack(1, b"", ilen, ilen) + sec.pack(4, b"", vlen, vlen)
        total = len(head) + meta.size + ilen + vlen
        buf = np.empty(total + 4 * K.SPARE, dtype=np.uint8)  # slack for the last writer
        buf[: len(head)] = np.frombuffer(head, np.uint8)
        buf[len(head): len(head) + meta.size] = meta
        ibase, vbase = len(head) + meta.size, len(head) + meta.size + ilen
    else:
        buf = np.empty(ilen + vlen + 4 * K.SPARE, dtype=np.uint8)
        ibase, vbase = 0, ilen
    ipos, vpos = ibase, vbase
    for u, rule, (lay, _), c, il in zip(us, rules, picks, counts, ilens):
        spare = K.SPARE if lay == sp.BITMAP else 0  # may spill into later tensors' regions
        if not _write(lay, u, rule, buf[ipos: ipos + il], _view32(buf, vpos, c + spare)):
            return None
        ipos, vpos = ipos + il, vpos + 4 * c
    if plain:
        payload = buf[:total]
    else:
        payload = pipe.container.pack([([meta], 1), ([buf[:ilen]], 1),
                                       ([buf[ilen: ilen + vlen]], pipe.coder.itemsize)])
    return payload, sum(nnz for _, nnz in picks)


# ----------------------------------------------------------------------------- decode


def decode(pipe, payload, spec) -> dict[str, np.ndarray]:
    """Pipeline.decode, fused: `Pipeline.read` does every check that needs no pass over
    the data (the same function as the reference's), the kernels count bitmap bits,
    scan for non-finite values and scatter, and the rules on what they find are the
    reference's own (sparse.check_marked / check_gaps, quantize.refuse_nonfinite)."""
    index, values, spans = pipe.read(payload, spec)
    flat = np.empty(sum(s.numel for s in spans), dtype=np.float32)
    out, opos = {}, 0
    for s in spans:
        idx = index[s.ipos: s.ipos + s.ilen]
        vals = values[s.vpos: s.vpos + s.vlen].view("<u4")
        dst = flat[opos: opos + s.numel].view(np.uint32)
        try:
            bad = int(K.first_nonfinite(vals))
            if bad >= 0:
                refuse_nonfinite("float32", bad, float(vals[bad: bad + 1].view("<f4")[0]))
            if s.layout == sp.DENSE:  # (count == numel: checked by read)
                dst[:] = vals
            elif s.layout == sp.BITMAP:
                sp.check_marked(int(K.bitmap_count(idx)), s.count)
                K.bitmap_scatter(idx, vals, dst)
            else:
                gaps = idx.view(sp._GAP[s.layout])
                big = int(gaps.max()) if s.count else 0
                last = int(gaps.sum(dtype=np.int64)) + s.count - 1
                sp.check_gaps(s.layout, big, last, s.numel, s.count)
                if not K.scatter_delta(gaps, vals, dst):  # (cannot happen after check_gaps)
                    raise WireFormatError(f"delta index out of range for {s.numel} entries")
        except WireFormatError as exc:
            raise WireFormatError(f"{s.name}: {exc}") from None
        out[s.name] = flat[opos: opos + s.numel].reshape(s.shape)
        opos += s.numel
    return out
