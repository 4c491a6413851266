"""The pipeline's stages as torch operations, on whatever device the tensors are.

Each function mirrors a numpy function of prune.py, sparse.py or quantize.py
bit for bit (tests compare them on CPU tensors; the GPU runs the same code):
magnitudes are float32 bits, ties at the pruning cut go first by position,
rounding is round-half-to-even, arithmetic that numpy does in float64 is done
in float64, and bytes are little-endian.
"""

from __future__ import annotations

import numpy as np
import torch

from fedmpi.compress import sparse as sp
from fedmpi.compress.pipeline import nonfinite_input
from fedmpi.compress.quantize import BF16_MAX, Float32, Quantize, refuse_nonfinite

ABS = 0x7FFFFFFF


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (little-endian on every device torch supports), flat uint8."""
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=t.device)
    return t.contiguous().view(torch.uint8)


def from_bytes(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if b.numel() == 0:
        return torch.empty(0, dtype=dtype, device=b.device)
    return b.contiguous().view(dtype)


def abs_bits(flat: torch.Tensor) -> torch.Tensor:
    """|x| as int32 bit patterns (monotonic in |x|, NaN above inf)."""
    return flat.view(torch.int32) & ABS


def keep_mask(a: torch.Tensor, m: int) -> torch.Tensor:
    """prune.keep_mask: drop the m smallest (ties by position); every kept entry is > 0."""
    if m <= 0:
        return a > 0
    t = int(torch.kthvalue(a, m).values)  # exact m-th smallest (a radix select on CUDA)
    if t == 0:  # the cut is at zero: every zero goes, nothing else
        return a > 0
    d = m - int((a < t).sum())  # ties at t that go: the first d by position
    eq = a == t
    return (a > t) | (eq & (torch.cumsum(eq, 0, dtype=torch.int64) > d))


def masks(pruner, flats: list[torch.Tensor], shapes) -> list[torch.Tensor | None]:
    """Prune.masks for torch tensors (global or per tensor, all or weights only)."""
    from fedmpi.compress.prune import n_drop

    out: list[torch.Tensor | None] = [None] * len(flats)
    if pruner is None or pruner.rate == 0:
        return out
    chosen = [i for i, s in enumerate(shapes) if pruner.tensors == "all" or len(s) >= 2]
    groups = [chosen] if pruner.scope == "global" else [[i] for i in chosen]
    for group in (g for g in groups if g):
        a = torch.cat([abs_bits(flats[i]) for i in group])
        keep = keep_mask(a, n_drop(pruner.rate, a.numel()))
        for i, part in zip(group, torch.split(keep, [flats[i].numel() for i in group])):
            out[i] = part
    return out


# ----------------------------------------------------------------------------- bytes


def le_bytes(x: torch.Tensor, width: int) -> torch.Tensor:
    """Non-negative integers -> `width` little-endian bytes each (uint8, flat)."""
    x = x.to(torch.int64)
    shifts = torch.arange(0, 8 * width, 8, device=x.device, dtype=torch.int64)
    return ((x[:, None] >> shifts) & 0xFF).to(torch.uint8).reshape(-1)


def from_le(b: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of le_bytes (int64)."""
    b = b.reshape(-1, width).to(torch.int64)
    shifts = torch.arange(0, 8 * width, 8, device=b.device, dtype=torch.int64)
    return (b << shifts).sum(1)


def packbits(bits: torch.Tensor) -> torch.Tensor:
    """np.packbits(bits, bitorder='little') for a flat bool tensor."""
    n = bits.numel()
    padded = torch.zeros((n + 7) // 8 * 8, dtype=torch.uint8, device=bits.device)
    padded[:n] = bits
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=bits.device)
    return (padded.reshape(-1, 8) * weights).sum(1, dtype=torch.uint8)


def unpackbits(buf: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=buf.device, dtype=torch.uint8)
    return ((buf[:, None] >> shifts) & 1).reshape(-1).to(torch.bool)


def pack_codes(codes: torch.Tensor, k: int) -> torch.Tensor:
    """quantize.pack_bits: unsigned k-bit codes -> bytes, little-endian bit order."""
    if k == 8:
        return codes.to(torch.uint8)
    if k == 16:
        return le_bytes(codes, 2)
    shifts = torch.arange(k, device=codes.device, dtype=torch.int64)
    return packbits(((codes.to(torch.int64)[:, None] >> shifts) & 1).reshape(-1).to(torch.bool))


def unpack_codes(buf: torch.Tensor, count: int, k: int) -> torch.Tensor:
    if k == 8:
        return buf.to(torch.int64)
    if k == 16:
        return from_le(buf, 2)
    bits = unpackbits(buf)[: count * k].reshape(count, k).to(torch.int64)
    return (bits << torch.arange(k, device=buf.device, dtype=torch.int64)).sum(1)


# ----------------------------------------------------------------------------- layout


def place(layout_stage, flat: torch.Tensor, mask: torch.Tensor | None, coder, count: int,
          big: int | None):
    """sparse.Sparse.place: (layout, index bytes, values, where) given the support count
    and, when delta is considered, the largest gap (both computed for all tensors at once)."""
    n = flat.numel()
    fmt = layout_stage.format
    empty = torch.empty(0, dtype=torch.uint8, device=flat.device)
    if fmt == "dense":
        return sp.DENSE, empty, flat if mask is None else torch.where(mask, flat, 0.0), None
    if mask is None:
        mask = flat.view(torch.int32) != 0
    cost = {sp.DENSE: coder.nbytes(n), sp.BITMAP: (n + 7) // 8 + coder.nbytes(count)}
    layout = sp.BITMAP
    if big is not None:
        layout = sp.DELTA8 if big < 1 << 8 else sp.DELTA16 if big < 1 << 16 else sp.DELTA32
        cost[layout] = count * sp._GAP[layout].itemsize + coder.nbytes(count)
    if fmt == "auto":
        layout = min(cost, key=lambda k: (cost[k], k))
    elif fmt == "bitmap":
        layout = sp.BITMAP
    if layout == sp.DENSE:
        return sp.DENSE, empty, flat if count == n else torch.where(mask, flat, 0.0), None
    if layout == sp.BITMAP:
        return sp.BITMAP, packbits(mask), flat[mask], mask
    idx = torch.nonzero(mask).reshape(-1)
    gaps = torch.diff(idx, prepend=idx.new_full((1,), -1)) - 1
    return layout, le_bytes(gaps, sp._GAP[layout].itemsize), flat[idx], idx


def delta_considered(fmt: str, n: int, count: int) -> bool:
    return fmt == "delta" or (fmt == "auto" and count < (n + 7) // 8)


def max_gap(mask: torch.Tensor) -> torch.Tensor:
    """Largest delta gap of a support mask (a 0-d tensor; 0 when empty)."""
    idx = torch.nonzero(mask).reshape(-1)
    if idx.numel() == 0:
        return torch.zeros((), dtype=torch.int64, device=mask.device)
    return (torch.diff(idx, prepend=idx.new_full((1,), -1)) - 1).max()


def scatter(numel: int, where, values: torch.Tensor) -> torch.Tensor:
    if where is None:
        return values.clone()
    out = torch.zeros(numel, dtype=torch.float32, device=values.device)
    if where.dtype == torch.bool:
        return out.masked_scatter_(where, values)
    out[where] = values
    return out


# ----------------------------------------------------------------------------- values


def check_finite_inputs(pipe, names, flats: list[torch.Tensor]) -> None:
    """ValueError naming the first tensor with NaN or inf, as the numpy encoder raises
    (one read-back for the whole model)."""
    if flats:
        finite = torch.stack([torch.isfinite(f).all() for f in flats]).tolist()
        if not all(finite):
            raise nonfinite_input(pipe, names[finite.index(False)])


def quantize(coder, v: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """ValueCoder.encode in torch: (uint8 codes, p0, p1). The values are finite (the
    encoder refused NaN and inf before pruning)."""
    if type(coder) is Float32:
        return as_bytes(v), 0.0, 0.0
    if not isinstance(coder, Quantize):
        raise TypeError(f"no torch path for {type(coder).__name__}")
    method = coder.method
    if method == "float16":
        return as_bytes(torch.clamp(v, -65504, 65504).to(torch.float16)), 0.0, 0.0
    if method == "bfloat16":
        b = from_bytes(as_bytes(v), torch.int32).to(torch.int64) & 0xFFFFFFFF
        r = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
        # rounding can carry the largest float32 values into inf: the largest bfloat16
        r = torch.where((r & 0x7F80) == 0x7F80, (r & 0x8000) | BF16_MAX, r)
        return le_bytes(r, 2), 0.0, 0.0
    empty = torch.empty(0, dtype=torch.uint8, device=v.device)
    if v.numel() == 0:
        return empty, 0.0, 0.0
    if method == "uniform":
        lo, hi = np.float32(v.min().item()), np.float32(v.max().item())
        levels = (1 << coder.k) - 1
        scale = coder.uniform_scale(lo, hi)  # the numpy encoder's step, same rules
        if scale > 0:
            codes = torch.round((v.double() - float(lo)) / float(np.float64(scale)))
            codes = torch.clamp(codes, 0, levels).to(torch.int64)
        else:
            codes = torch.zeros(v.numel(), dtype=torch.int64, device=v.device)
        return pack_codes(codes, coder.k), float(lo), float(scale)
    if method == "sign":
        scale = coder.sign_scale(float(v.double().abs().mean()))
        codes = (v < 0) if scale > 0 else torch.zeros_like(v, dtype=torch.bool)
        return pack_codes(codes.to(torch.int64), 1), scale, 0.0
    # pow2
    e = coder.k - 1
    a = v.double().abs()
    nz = a > 0
    exp = torch.minimum(torch.frexp(a * (4.0 / 3.0)).exponent.to(torch.int64) - 1,
                        torch.tensor(127, device=v.device))
    emax = int(exp[nz].max()) if bool(nz.any()) else 0
    m = torch.where(nz, emax - exp + 1, 0)
    m = torch.where(m > (1 << e) - 1, 0, m)
    codes = m | ((torch.signbit(v) & (m > 0)).to(torch.int64) << e)
    return pack_codes(codes, coder.k), float(emax), 0.0


def dequantize(coder, codes: torch.Tensor, count: int, p0: float, p1: float) -> torch.Tensor:
    """ValueCoder.decode's arithmetic in torch (a new float32 tensor)."""
    return decode_values(coder, codes, count, p0, p1)[0]


def decode_values(coder, codes: torch.Tensor, count: int, p0: float, p1: float
                  ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(float32 values, what the coder's rules on its codes need), on the codes' device.

    The side information was checked on the host first (`coder.check_side`, through
    `Pipeline.read`); the facts are 0-d int64 tensors read back with the rest of the
    message's in one transfer and judged by `check_values`: for float32, float16 and
    bfloat16 the position of the first non-finite value (count when none), for pow2
    whether a code has a sign and no magnitude and the largest magnitude code. The
    uniform parameters bound its values, as in the numpy decoder.
    """
    if type(coder) is Float32:
        v = from_bytes(codes, torch.float32).clone()
        return v, [_first_nonfinite(v, count)]
    if count == 0:
        return torch.empty(0, dtype=torch.float32, device=codes.device), []
    method = coder.method
    if method == "float16":
        v = from_bytes(codes, torch.float16).to(torch.float32)
        return v, [_first_nonfinite(v, count)]
    if method == "bfloat16":
        v = from_bytes(as_bytes((from_le(codes, 2) << 16).to(torch.int32)), torch.float32)
        return v, [_first_nonfinite(v, count)]
    if method == "uniform":
        c = unpack_codes(codes, count, coder.k)
        return (float(np.float64(p0)) + c.double() * float(np.float64(p1))).to(torch.float32), []
    if method == "sign":
        c = unpack_codes(codes, count, 1)
        s = torch.tensor(p0, dtype=torch.float32, device=codes.device)
        return torch.where(c > 0, -s, s), [(c > 0).any().to(torch.int64)]
    e = coder.k - 1
    c = unpack_codes(codes, count, coder.k)
    m = c & ((1 << e) - 1)
    # 2^(emax - m + 1) built from its float64 bits: exact (torch.ldexp goes through pow);
    # codes that check_values refuses may build garbage here, never an error
    power = ((int(p0) - m + 1 + 1023) << 52).view(torch.float64)
    mag = torch.where(m > 0, power, 0.0).to(torch.float32)
    v = torch.where((c >> e) > 0, -mag, mag)
    return v, [(c == 1 << e).any().to(torch.int64), m.max()]


def _first_nonfinite(v: torch.Tensor, count: int) -> torch.Tensor:
    bad = ~torch.isfinite(v)
    if v.numel() == 0:
        return torch.tensor(count, dtype=torch.int64, device=v.device)
    return torch.where(bad.any(), bad.to(torch.uint8).argmax(), count)


def check_values(coder, facts: list[int], v: torch.Tensor, count: int, p0: float) -> None:
    """The numpy decoder's rules on the codes, applied to what decode_values found."""
    if not facts:
        return
    if type(coder) is Float32 or coder.method in ("float16", "bfloat16"):
        if facts[0] < count:
            label = "float32" if type(coder) is Float32 else coder.method
            refuse_nonfinite(label, facts[0], float(v[facts[0]]))
    elif coder.method == "sign":
        coder.check_sign_codes(bool(facts[0]), p0)
    else:  # pow2
        coder.check_pow2_codes(bool(facts[0]), facts[1], p0)
