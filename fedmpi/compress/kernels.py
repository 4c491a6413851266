"""numba kernels of the fused CPU codec (see fused.py for how they are combined).

Each kernel is one pass over one tensor that does in a single loop what the
numpy reference path does in several (abs, compare, count, pack, gather), so
the data is read once and written once. They work on the float32 *bits*
(uint32): |x| is `bits & 0x7FFFFFFF`, ordered like the magnitude (NaN above
inf), and a value is copied bit for bit (-0.0 and NaN payloads survive).

Keep rule: `keep = (bits & amask) >= thr`, with `thr = ta` before position
`split` and `tb` from it on. `amask = 0x7FFFFFFF` prunes by magnitude;
`amask = 0xFFFFFFFF, thr = 1` is "every entry that is not +0.0" (the support
without pruning). The split serves the tensor where the cut falls inside a run
of equal magnitudes t (ties go first by position): ta = t + 1 drops the ties
before the first kept one, tb = t keeps those from it on.

How they stay near memory speed on one core: 64 entries at a time, the keep
bits are built into one 64-bit word by a loop that LLVM vectorizes (the helper
is inlined at numba-IR level: behind a call LLVM would not vectorize it); the
kept positions are then visited with count-trailing-zeros, so the work per
entry is a vector compare and per kept entry one load and one store (measured
faster here than branch-free compaction through a set-bit table).

Compiled on first use with `cache=True`: the machine code is stored next to
this file in `__pycache__/` (or, where that is not writable, in numba's
per-user cache dir; `NUMBA_CACHE_DIR` overrides both), so later processes load it in
well under a second instead of compiling for several. Importing this module raises
ImportError when numba is missing; fused.py then falls back to numpy.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)
# helpers are inlined at numba-IR level: as calls LLVM would not vectorize their loops
_inline = numba.njit(inline="always", boundscheck=False)
ABS = np.uint32(0x7FFFFFFF)
_EXP = np.uint32(0x7F800000)  # |x| bits from here up: inf, then NaN
_U1, _U8 = np.uint64(1), np.uint64(8)

POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.int64)


@intrinsic
def _cttz(typingctx, x):
    """Count trailing zeros of a non-zero uint64 (one tzcnt instruction)."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return types.int64(types.uint64), codegen


def _avx512() -> bool:
    """The CPU numba compiles for has AVX-512F (and nobody pinned numba to another CPU)."""
    if os.environ.get("FEDMPI_AVX512", "1") == "0" or os.environ.get("NUMBA_CPU_NAME") \
            or os.environ.get("NUMBA_CPU_FEATURES"):
        return False
    try:
        import llvmlite.binding as llvm

        return "+avx512f" in llvm.get_host_cpu_features().flatten().split(",")
    except Exception:  # noqa: BLE001 - no answer: the portable kernels
        return False


AVX512 = _avx512()
_V16 = ir.VectorType(ir.IntType(32), 16)
_M16 = ir.VectorType(ir.IntType(1), 16)


def _element_ptr(context, builder, aryty, ary, index):
    return builder.gep(context.make_array(aryty)(context, builder, ary).data, [index])


@intrinsic
def _compress16(typingctx, dst, k, src, base, mask):
    """dst[k:k+16] = the entries of src[base:base+16] whose mask bit is set, packed first
    (AVX-512 vpcompressd in a register, then one unaligned 16-lane store: dst needs 16
    spare slots). Only called when AVX512 is true."""
    def codegen(context, builder, sig, args):
        dty, _, sty, _, _ = sig.args
        d, kk, s, b, m = args
        x = builder.load(builder.bitcast(_element_ptr(context, builder, sty, s, b),
                                         _V16.as_pointer()), align=1)
        mm = builder.bitcast(builder.trunc(m, ir.IntType(16)), _M16)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            _V16, [_V16, _V16, _M16]), "llvm.x86.avx512.mask.compress.v16i32")
        c = builder.call(fn, [x, ir.Constant(_V16, None), mm])
        builder.store(c, builder.bitcast(_element_ptr(context, builder, dty, d, kk),
                                         _V16.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(dst, k, src, base, mask), codegen


@intrinsic
def _expand16(typingctx, dst, base, src, k, mask):
    """dst[base:base+16] = src[k], src[k+1], ... spread to the set mask bits, 0 elsewhere
    (vpexpandd; reads src[k:k+16]: the caller keeps that in bounds)."""
    def codegen(context, builder, sig, args):
        dty, _, sty, _, _ = sig.args
        d, b, s, kk, m = args
        x = builder.load(builder.bitcast(_element_ptr(context, builder, sty, s, kk),
                                         _V16.as_pointer()), align=1)
        mm = builder.bitcast(builder.trunc(m, ir.IntType(16)), _M16)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            _V16, [_V16, _V16, _M16]), "llvm.x86.avx512.mask.expand.v16i32")
        e = builder.call(fn, [x, ir.Constant(_V16, None), mm])
        builder.store(e, builder.bitcast(_element_ptr(context, builder, dty, d, b),
                                         _V16.as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(dst, base, src, k, mask), codegen


@_inline
def _popcount16(m):
    return POPCOUNT[m & np.uint64(0xFF)] + POPCOUNT[m >> _U8]


@_inline
def _word(u, base, amask, thr):
    """Keep bits of u[base:base+64] (bit j = entry base+j); vectorized by LLVM."""
    w = np.uint64(0)
    for j in range(64):
        w |= np.uint64((u[base + j] & amask) >= thr) << np.uint64(j)
    return w


@_inline
def _word2(u, base, amask, ta, tb, split):
    """_word with threshold ta before position `split` and tb from it on."""
    if base >= split:
        return _word(u, base, amask, tb)
    if base + 64 <= split:
        return _word(u, base, amask, ta)
    w = np.uint64(0)
    for j in range(64):
        thr = ta if base + j < split else tb
        w |= np.uint64((u[base + j] & amask) >= thr) << np.uint64(j)
    return w


@_inline
def _keep(u, i, amask, ta, tb, split):
    return (u[i] & amask) >= (ta if i < split else tb)


# ----------------------------------------------------------------------------- the cut


@_jit
def band_scan(u, lo, hi, cand, k):
    """Count entries with |x| < lo; append the |x| in [lo, hi) to cand[k:].

    Returns (below, new k, largest |x| bits); k = -1 when cand is full: the band was
    too wide (and the scan stopped there). The largest |x| comes with the pass, so
    the encoder's NaN/inf refusal costs no extra read of the pruned tensors.
    """
    n = u.size
    below = 0
    top = np.uint32(0)  # largest |x| bits: NaN or inf is refused by the caller
    cap = cand.size - 64
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = np.uint64(0)
        for j in range(64):
            a = u[base + j] & ABS
            below += a < lo
            top = a if a > top else top
            w |= np.uint64((a >= lo) & (a < hi)) << np.uint64(j)
        if w:
            if k > cap:
                return below, -1, top
            while w:
                cand[k] = u[base + _cttz(w)] & ABS
                k += 1
                w &= w - _U1
    for i in range(nw << 6, n):
        a = u[i] & ABS
        below += a < lo
        top = a if a > top else top
        if a >= lo and a < hi:
            if k > cap:
                return below, -1, top
            cand[k] = a
            k += 1
    return below, k, top


@_jit
def band_scan_avx(u, lo, hi, cand, k):
    """band_scan with AVX-512 compress for the gather; cand gets raw bits (caller masks)."""
    n = u.size
    below = 0
    top = np.uint32(0)  # largest |x| bits: NaN or inf is refused by the caller
    cap = cand.size - 64
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = np.uint64(0)
        for j in range(64):
            a = u[base + j] & ABS
            below += a < lo
            top = a if a > top else top
            w |= np.uint64((a >= lo) & (a < hi)) << np.uint64(j)
        if w:
            if k > cap:
                return below, -1, top
            for h in range(4):
                m = (w >> np.uint64(16 * h)) & np.uint64(0xFFFF)
                if m:
                    _compress16(cand, k, u, base + 16 * h, m)
                    k += _popcount16(m)
    for i in range(nw << 6, n):
        a = u[i] & ABS
        below += a < lo
        top = a if a > top else top
        if a >= lo and a < hi:
            if k > cap:
                return below, -1, top
            cand[k] = a
            k += 1
    return below, k, top


@_jit
def histogram_hi(u, hist):
    """hist[|x| >> 15] += 1 (65,536 bins): locates the cut exactly when sampling misses."""
    for i in range(u.size):
        hist[(u[i] & ABS) >> 15] += 1


@_jit
def count_compare(cand, t):
    """(entries < t, entries == t) of cand."""
    lt = 0
    eq = 0
    for i in range(cand.size):
        lt += cand[i] < t
        eq += cand[i] == t
    return lt, eq


# ----------------------------------------------------------------------------- writers


@_jit
def write_bitmap(u, amask, ta, tb, split, bitmap, vals):
    """Bitmap (little-endian bit order) + kept values in position order; returns kept."""
    n = u.size
    k = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = _word2(u, base, amask, ta, tb, split)
        for byte in range(8):
            bitmap[(q << 3) + byte] = (w >> (_U8 * np.uint64(byte))) & np.uint64(0xFF)
        while w:
            vals[k] = u[base + _cttz(w)]
            k += 1
            w &= w - _U1
    i = nw << 6
    while i < n:  # tail, one byte at a time
        b = 0
        for j in range(min(8, n - i)):
            keep = _keep(u, i + j, amask, ta, tb, split)
            b |= np.int64(keep) << j
            if keep:
                vals[k] = u[i + j]
                k += 1
        bitmap[i >> 3] = b
        i += 8
    return k


@_jit
def write_bitmap_avx(u, amask, ta, tb, split, bitmap, vals):
    """write_bitmap with AVX-512 compress; vals needs 16 spare slots."""
    n = u.size
    k = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = _word2(u, base, amask, ta, tb, split)
        for byte in range(8):
            bitmap[(q << 3) + byte] = (w >> (_U8 * np.uint64(byte))) & np.uint64(0xFF)
        for h in range(4):
            m = (w >> np.uint64(16 * h)) & np.uint64(0xFFFF)
            _compress16(vals, k, u, base + 16 * h, m)
            k += _popcount16(m)
    i = nw << 6
    while i < n:  # tail, one byte at a time
        b = 0
        for j in range(min(8, n - i)):
            keep = _keep(u, i + j, amask, ta, tb, split)
            b |= np.int64(keep) << j
            if keep:
                vals[k] = u[i + j]
                k += 1
        bitmap[i >> 3] = b
        i += 8
    return k


@_jit
def write_delta(u, amask, ta, tb, split, gaps, vals):
    """Gap to the previous kept entry (first from -1) + kept values; (kept, largest gap).

    Gaps are stored in gaps' dtype (a narrower one wraps: the caller checks the largest).
    """
    n = u.size
    k = 0
    prev = -1
    big = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = _word2(u, base, amask, ta, tb, split)
        while w:
            p = base + _cttz(w)
            g = p - prev - 1
            big = max(big, g)
            gaps[k] = g
            vals[k] = u[p]
            prev = p
            k += 1
            w &= w - _U1
    for p in range(nw << 6, n):
        if _keep(u, p, amask, ta, tb, split):
            g = p - prev - 1
            big = max(big, g)
            gaps[k] = g
            vals[k] = u[p]
            prev = p
            k += 1
    return k, big


@_jit
def max_gap(u, amask, ta, tb, split):
    """Largest delta gap the kept entries need (0 when none is kept)."""
    n = u.size
    prev = -1
    big = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = _word2(u, base, amask, ta, tb, split)
        while w:
            p = base + _cttz(w)
            big = max(big, p - prev - 1)
            prev = p
            w &= w - _U1
    for p in range(nw << 6, n):
        if _keep(u, p, amask, ta, tb, split):
            big = max(big, p - prev - 1)
            prev = p
    return big


@_jit
def write_masked(u, amask, ta, tb, split, out):
    """Dense layout of a pruned tensor: the bits where kept, +0.0 elsewhere."""
    for i in range(u.size):
        out[i] = u[i] if _keep(u, i, amask, ta, tb, split) else 0


@_jit
def nth_tie(u, t, j):
    """Position of the j-th (0-based) entry with |x| == t, or u.size if there are fewer."""
    n = u.size
    seen = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = np.uint64(0)
        for i in range(64):
            w |= np.uint64((u[base + i] & ABS) == t) << np.uint64(i)
        if w:
            c = 0
            x = w
            while x:
                c += 1
                x &= x - _U1
            if seen + c > j:
                while True:
                    p = base + _cttz(w)
                    if seen == j:
                        return p
                    seen += 1
                    w &= w - _U1
            seen += c
    for p in range(nw << 6, n):
        if (u[p] & ABS) == t:
            if seen == j:
                return p
            seen += 1
    return n


@_jit
def gather_abs(u, pos, offset, out, k):
    """out[k:] = |u[pos - offset]| for the sorted sample positions that fall in u."""
    for i in range(pos.size):
        out[k + i] = u[pos[i] - offset] & ABS
    return k + pos.size


# ----------------------------------------------------------------------------- decode


@_jit
def bitmap_count(bitmap):
    """Set bits of the bitmap (its padding bits are checked to be 0 beforehand)."""
    c = 0
    for i in range(bitmap.size):
        c += POPCOUNT[bitmap[i]]
    return c


_BLOCK = 4096


@_jit
def first_nonfinite(u):
    """Position of the first NaN or inf among float32 bits u, or -1.

    Block by block a max of |x| over `base + j` with a constant trip count (the form
    LLVM vectorizes: about a quarter of a copy's time), so finite data costs one read;
    only a block that holds a non-finite value is searched entry by entry.
    """
    n = u.size
    nb = n // _BLOCK
    for b in range(nb + 1):
        base = b * _BLOCK
        big = np.uint32(0)
        if b < nb:
            for j in range(_BLOCK):
                a = u[base + j] & ABS
                big = a if a > big else big
        else:
            for i in range(base, n):
                a = u[i] & ABS
                big = a if a > big else big
        if big >= _EXP:
            for i in range(base, min(n, base + _BLOCK)):
                if (u[i] & ABS) >= _EXP:
                    return i
    return -1


@_jit
def scatter_bitmap(bitmap, vals, out):
    """Inverse of write_bitmap; vals holds exactly popcount(bitmap) values (validated)."""
    n = out.size
    k = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = np.uint64(0)
        for j in range(8):
            w |= np.uint64(bitmap[(q << 3) + j]) << (_U8 * np.uint64(j))
        for j in range(64):
            out[base + j] = 0
        while w:
            out[base + _cttz(w)] = vals[k]
            k += 1
            w &= w - _U1
    for i in range(nw << 6, n):
        if (bitmap[i >> 3] >> (i & 7)) & 1:
            out[i] = vals[k]
            k += 1
        else:
            out[i] = 0


@_jit
def scatter_bitmap_avx(bitmap, vals, out):
    """scatter_bitmap with AVX-512 expand; reads 16 values ahead only while they exist."""
    n = out.size
    count = vals.size
    k = 0
    nw = n >> 6
    for q in range(nw):
        base = q << 6
        w = np.uint64(0)
        for j in range(8):
            w |= np.uint64(bitmap[(q << 3) + j]) << (_U8 * np.uint64(j))
        for h in range(4):
            m = (w >> np.uint64(16 * h)) & np.uint64(0xFFFF)
            if k + 16 <= count:
                _expand16(out, base + 16 * h, vals, k, m)
                k += _popcount16(m)
            else:  # the last values: one at a time, never past the end
                for j in range(16):
                    if (m >> np.uint64(j)) & _U1:
                        out[base + 16 * h + j] = vals[k]
                        k += 1
                    else:
                        out[base + 16 * h + j] = 0
    for i in range(nw << 6, n):
        if (bitmap[i >> 3] >> (i & 7)) & 1:
            out[i] = vals[k]
            k += 1
        else:
            out[i] = 0


@_jit
def scatter_delta(gaps, vals, out):
    """Inverse of write_delta; False if a position is out of range."""
    n = out.size
    for i in range(n):
        out[i] = 0
    pos = -1
    for j in range(gaps.size):
        pos += np.int64(gaps[j]) + 1
        if pos >= n:
            return False
        out[pos] = vals[j]
    return True


# The kernels fused.py calls: AVX-512 compress/expand where the CPU has it (measured on
# a Zen 5 core: bitmap writer 4.9 -> 2.0 ms, scatter 3.9 -> 3.0 ms on 11M values; the
# band scan gathers only ~2% of the entries and is faster without: band_scan_avx is kept
# for CPUs where that differs, and is tested).
SPARE = 16  # value slots a bitmap writer may store past the last kept value
scan = band_scan
if AVX512:
    bitmap_writer, bitmap_scatter = write_bitmap_avx, scatter_bitmap_avx
else:
    bitmap_writer, bitmap_scatter = write_bitmap, scatter_bitmap


def check_avx512() -> bool:
    """Run the AVX-512 kernels once against the portable ones (fused.py does, on first
    use); on any difference or error switch to the portable kernels and return False."""
    global bitmap_writer, bitmap_scatter
    if bitmap_writer is write_bitmap:
        return True
    try:
        rng = np.random.default_rng(0)
        u = rng.integers(0, 1 << 32, size=1000, dtype=np.uint64).astype(np.uint32)
        thr = np.uint32(np.median(u & ABS))
        bm_a, bm_b = np.empty(125, np.uint8), np.empty(125, np.uint8)
        va, vb = np.zeros(1000 + SPARE, np.uint32), np.zeros(1000 + SPARE, np.uint32)
        ka = write_bitmap(u, ABS, thr, thr, 0, bm_a, va)
        kb = write_bitmap_avx(u, ABS, thr, thr, 0, bm_b, vb)
        oa, ob = np.empty(1000, np.uint32), np.empty(1000, np.uint32)
        scatter_bitmap(bm_a, va[:ka], oa)
        scatter_bitmap_avx(bm_a, va[:ka], ob)
        ok = ka == kb and np.array_equal(bm_a, bm_b) and np.array_equal(va[:ka], vb[:kb]) \
            and np.array_equal(oa, ob)
    except Exception:  # noqa: BLE001 - any failure: the portable kernels
        ok = False
    if not ok:
        bitmap_writer, bitmap_scatter = write_bitmap, scatter_bitmap
    return ok
