"""Magnitude pruning (the paper): zero exactly floor(rate * n) entries of smallest |w|.

Ties are broken by position (tensor order, then flat index): the entries that go
are the first floor(rate * n) in ascending (|w|, index) order, so the kept set is
exactly the ceil((1 - rate) * n) largest magnitudes. When the cut falls among
entries that are already zero every zero is dropped; the output is the same
numerically and the kept entries are then all non-zero, which sparse encoding
relies on. NaN counts as the largest magnitude.

Why not a full sort or argpartition: on 11M weights that alone takes several
times longer than everything else in the encoder. |float32| reinterpreted as uint32 is ordered
like the magnitude, so we estimate the cut from a fixed-seed sample, count what
lies below a safe band around it, and select exactly inside the band only
(~1% of the entries). A band that misses (very skewed or heavily tied data)
falls back to partitioning everything, so the result is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.compress.base import BadParam, Pruner, register

_ABS = np.uint32(0x7FFFFFFF)
_SAMPLE = 1 << 16
_EXACT_BELOW = 1 << 17  # below this many entries sampling does not pay
_SEED = 0x9E3779B9


def abs_bits(flats: list[np.ndarray]) -> np.ndarray:
    """|x| of every tensor, concatenated, as uint32 bit patterns (monotonic in |x|)."""
    out = np.empty(sum(f.size for f in flats), dtype=np.uint32)
    pos = 0
    for f in flats:
        np.bitwise_and(f.view(np.uint32), _ABS, out=out[pos: pos + f.size])
        pos += f.size
    return out


def n_drop(rate: float, n: int) -> int:
    """floor(rate * n), tolerant of binary rounding so that 0.3 * 10 drops 3, not 2."""
    return min(n, int(np.floor(rate * n + 1e-6)))


def _select(a: np.ndarray, m: int, lo: int, hi: int) -> np.ndarray | None:
    """Keep-mask if the m-th smallest lies in [lo, hi), else None.

    Only the entries inside the band are gathered and partitioned; everything
    below lo is dropped, everything from hi up is kept.
    """
    lt_lo = np.less(a, np.uint32(lo)) if lo > 0 else np.zeros(a.size, bool)
    below = int(np.count_nonzero(lt_lo))
    keep = np.less(a, np.uint32(hi)) if hi <= int(_ABS) else np.ones(a.size, bool)
    idx = np.flatnonzero(keep ^ lt_lo)  # lo <= a < hi (a < lo implies a < hi)
    r = m - below  # rank of the cut inside the band, 1-based
    if not 1 <= r <= idx.size:
        return None
    cand = a[idx]
    t = np.partition(cand, r - 1)[r - 1]
    survive = cand > t
    if t > 0:  # equal to t: the first d by index go, the rest stay
        d = r - int(np.count_nonzero(cand < t))
        survive[np.flatnonzero(cand == t)[d:]] = True
    np.logical_not(keep, out=keep)  # a >= hi
    keep[idx[survive]] = True
    return keep


def keep_mask(a: np.ndarray, m: int) -> np.ndarray:
    """Bool mask of the entries that survive dropping the m smallest (ties by index)."""
    if m <= 0:
        return a > 0
    n, full = a.size, (0, int(_ABS) + 1)
    if n <= _EXACT_BELOW:
        return _select(a, m, *full)
    sample = np.sort(a[np.random.default_rng(_SEED).integers(0, n, size=_SAMPLE)])
    q = m / n
    # 4.5 standard deviations of a sample quantile, plus a little for q near 0 or 1
    slack = 4.5 * np.sqrt(q * (1 - q) / _SAMPLE) + 8.0 / _SAMPLE
    i_lo, i_hi = int((q - slack) * _SAMPLE), int(np.ceil((q + slack) * _SAMPLE))
    lo = int(sample[i_lo]) if i_lo > 0 else 0
    hi = int(sample[i_hi]) + 1 if i_hi < _SAMPLE else full[1]
    keep = _select(a, m, lo, hi)
    return keep if keep is not None else _select(a, m, *full)  # the sample misled us


@register("prune")
@dataclass(frozen=True, kw_only=True)
class Prune(Pruner):
    rate: float = 0.0
    scope: str = "global"  # global: one cut over all selected tensors; tensor: one each
    tensors: str = "all"  # all | weights (ndim >= 2: conv and linear kernels)

    rank = 10
    choices = {"scope": ("global", "tensor"), "tensors": ("all", "weights")}

    def check(self) -> None:
        if not 0.0 <= self.rate < 1.0:
            raise BadParam("rate", self.rate, "a number in [0, 1)")

    @property
    def lossy(self) -> bool:
        return self.rate > 0

    def label(self) -> str:
        extra = "" if self.scope == "global" else ",tensor"
        extra += "" if self.tensors == "all" else ",weights"
        return f"prune({self.rate:g}{extra})"

    def masks(self, flats, shapes):
        chosen = [i for i, s in enumerate(shapes) if self.tensors == "all" or len(s) >= 2]
        out: list[np.ndarray | None] = [None] * len(flats)
        if self.rate == 0 or not chosen:
            return out
        groups = [chosen] if self.scope == "global" else [[i] for i in chosen]
        for group in groups:
            a = abs_bits([flats[i] for i in group])
            keep = keep_mask(a, n_drop(self.rate, a.size))
            pos = 0
            for i in group:
                out[i] = keep[pos: pos + flats[i].size]
                pos += flats[i].size
        return out
