"""Top-k sparsification with error feedback.

Aji & Heafield 2017, "Sparse Communication for Distributed Gradient Descent" (send
the largest-magnitude entries, keep the rest locally); Stich, Cordonnier & Jaggi 2018,
"Sparsified SGD with Memory" (the error feedback that makes it converge).

What differs from the papers: they sparsify gradients every step; here the message is
a whole round's model update (uplink) or the server's global update (downlink), with
one residual per (link, owner) in `ctx.state`. Aji & Heafield pick a global threshold
from a sample and send about k entries; here exactly k are sent, found exactly (a
partition, not a sample), ties broken by position (lower index first, tensors in
spec order), so a message is a pure function of its input. k is `count`, or
`fraction` of the entries (rounded, at least one per non-empty scope), per tensor
(`scope: tensor`) or over all tensors at once (`scope: global`, one threshold).

Payload: `positions.py` (per tensor the smallest of bitmap / delta / varint
positions + float32 values, zstd). The decoder also checks the count: k(n) per
tensor, or k in total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors import feedback, positions
from fedmpi.compressors.base import Compressor, Context, encoded, numel_of, register
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError


def k_of(n: int, fraction: float, count: int | None) -> int:
    """Entries to send out of `n`: `count` (at most n), else round(fraction * n),
    at least 1 when n > 0."""
    if n == 0:
        return 0
    if count is not None:
        return min(count, n)
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def largest(mag: np.ndarray, k: int) -> np.ndarray:
    """Sorted positions of the k largest of `mag`; among equal values the lowest
    positions win (deterministic, unlike argpartition)."""
    n = mag.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, np.int64)
    t = np.partition(mag, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(mag > t)
    ties = np.flatnonzero(mag == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


@register("topk")
@dataclass(frozen=True, kw_only=True)
class TopK(Compressor):
    fraction: float = 0.01
    count: int | None = None
    scope: str = "tensor"
    feedback: bool = True

    paper = ("Aji & Heafield 2017, Sparse Communication for Distributed Gradient Descent; "
             "Stich et al. 2018, Sparsified SGD with Memory")
    choices = {"scope": ("tensor", "global")}

    def check(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise BadParam("fraction", self.fraction, "a number in (0, 1]")
        if self.count is not None and self.count < 1:
            raise BadParam("count", self.count, "an integer >= 1 (or null to use fraction)")

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.feedback

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        spec, x = positions.inputs(self, tensors, ctx)
        flats = [x[name].reshape(-1) for name, _ in spec]
        if self.scope == "global":
            mag = np.abs(np.concatenate(flats)) if flats else np.zeros(0, np.float32)
            k = k_of(mag.size, self.fraction, self.count)
            chosen = largest(mag, k)
            bounds = np.cumsum([0] + [f.size for f in flats])
            cut = np.searchsorted(chosen, bounds)
            idxs = [chosen[cut[i]: cut[i + 1]] - bounds[i] for i in range(len(flats))]
        else:
            idxs = [largest(np.abs(f), k_of(f.size, self.fraction, self.count)) for f in flats]
        picks = [(idx, f[idx]) for idx, f in zip(idxs, flats)]
        payload = positions.pack(self, spec, picks)
        recon = {name: positions.scatter(shape, idx, v)
                 for (name, shape), (idx, v) in zip(spec, picks)}
        if self.feedback:
            feedback.keep(ctx, x, recon)
        return encoded(payload, recon, sum(idx.size for idx in idxs))

    def _counts(self, spec: ModelSpec) -> tuple[list[int] | None, int]:
        """The per-tensor counts a tensor-scope payload must have (None for global),
        and the total."""
        numels = numel_of(spec)
        if self.scope == "global":
            return None, k_of(sum(numels), self.fraction, self.count)
        ks = [k_of(n, self.fraction, self.count) for n in numels]
        return ks, sum(ks)

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        ks, total = self._counts(spec)
        picks = positions.unpack(self, payload, spec, total)
        got = [v.size for _, v in picks]
        if ks is not None:
            for (name, _), want, have in zip(spec, ks, got):
                if have != want:
                    raise WireFormatError(f"{name}: {have} values, top-k sends {want}")
        elif sum(got) != total:
            raise WireFormatError(f"{sum(got)} values in all, global top-k sends {total}")
        return {name: positions.scatter(shape, idx, v)
                for (name, shape), (idx, v) in zip(spec, picks)}
