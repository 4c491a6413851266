"""FedZip-like compression (Malekijoo, Fontana, Keshavarzi, Kabbani, Uddin et al. 2021,
"FEDZIP: A Compression Framework for Communication-Efficient Federated Learning",
arXiv 2102.01593).

The paper's three steps, per tensor:
1. top-z sparsification: keep the k = ceil(fraction * n) entries of largest magnitude
   (the non-zero ones; ties to the lower index, as STC's `top_k`);
2. quantization by k-means clustering of the kept values into `clusters` centroids
   (3 in the paper): deterministic initialisation at the quantiles (j + 1/2) / C of the
   kept values, then Lloyd iterations in float64 with float32 centroids, stopping as soon
   as one does not lower the squared quantization error (so the error never exceeds the
   initial centroids'; at most `ITERATIONS`);
3. entropy coding of centroids, per-value cluster indices and positions. The paper uses
   Huffman coding (plus position encoding); here **zstd stands in for Huffman** (its
   entropy stage is Huffman / FSE): the whole payload is one zstd-compressed container
   with the byte shuffle of `fedmpi.compress.zstd`.

Not in the paper: `feedback` (default false) adds error feedback (compressors/feedback.py)
around the three steps; with it the method keeps a residual per (link, owner).

Payload (`Sections` in a zstd(3, shuffle) container):
  header (codec id, spec crc)
  counts:    per tensor u32, the kept entries (<= k)
  centroids: per tensor min(clusters, count) f32, in tensor order
  gaps:      per kept entry u32 index - previous - 1 (the first from -1), in tensor order
  labels:    per kept entry u8, its centroid (< min(clusters, count))
Decoding checks every field: count <= k, each section exactly as long as the counts say,
finite centroids, labels in range, positions inside their tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_of
from fedmpi.compress.zstd import Zstd
from fedmpi.compressors import feedback as ef
from fedmpi.compressors.base import (Compressor, Context, Sections, check_finite, encoded,
                                     numel_of, register)
from fedmpi.compressors.stc import kept_count, top_k
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError

ITERATIONS = 10  # Lloyd steps at most (1-D k-means on a few thousand values converges fast)
_SECTIONS = Sections(Zstd())


def initial_centroids(values: np.ndarray, clusters: int) -> np.ndarray:
    """float32 centroids at the quantiles (j + 1/2) / C of the values (C = min(clusters,
    len(values)))."""
    c = min(clusters, values.size)
    if c == 0:
        return np.empty(0, np.float32)
    return np.quantile(values.astype(np.float64), (np.arange(c) + 0.5) / c).astype(np.float32)


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per value the index of its nearest centroid (uint8)."""
    order = np.argsort(centroids, kind="stable")
    sc = centroids[order].astype(np.float64)
    mids = (sc[1:] + sc[:-1]) / 2
    return order[np.searchsorted(mids, values.astype(np.float64))].astype(np.uint8)


def sq_error(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Squared quantization error, in float64."""
    d = values.astype(np.float64) - centroids.astype(np.float64)[labels]
    return float(d @ d)


def _segments(sorted_values: np.ndarray, centroids: np.ndarray):
    """Nearest-centroid assignment of sorted values as contiguous runs: (centroid order,
    run lengths), the same choice as `nearest` (a value on a midpoint goes to the lower)."""
    order = np.argsort(centroids, kind="stable")
    sc = centroids[order].astype(np.float64)
    ends = np.searchsorted(sorted_values, (sc[1:] + sc[:-1]) / 2, side="right")
    return order, np.diff(ends, prepend=0, append=sorted_values.size)


def kmeans(values: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 centroids, uint8 labels) of 1-D k-means, Lloyd from `initial_centroids`.

    In 1-D every cluster is a run of the sorted values, so a Lloyd step is a few binary
    searches and one pass (no per-value search)."""
    cent = initial_centroids(values, clusters)
    if cent.size == 0:
        return cent, np.empty(0, np.uint8)
    by_value = np.argsort(values, kind="stable")
    v = values[by_value].astype(np.float64)

    def error(cent):
        order, sizes = _segments(v, cent)
        d = v - np.repeat(cent[order].astype(np.float64), sizes)
        return order, sizes, float(d @ d)

    order, sizes, err = error(cent)
    for _ in range(ITERATIONS):
        new = cent.copy()  # an empty cluster keeps its centroid
        full = sizes > 0
        sums = np.add.reduceat(v, (np.cumsum(sizes) - sizes)[full])
        new[order[full]] = (sums / sizes[full]).astype(np.float32)
        new_order, new_sizes, new_err = error(new)
        if not new_err < err:  # converged (or float32 rounding would undo the step)
            break
        cent, order, sizes, err = new, new_order, new_sizes, new_err
    labels = np.empty(values.size, np.uint8)
    labels[by_value] = np.repeat(order.astype(np.uint8), sizes)
    return cent, labels


@register("fedzip")
@dataclass(frozen=True, kw_only=True)
class FedZip(Compressor):
    fraction: float = 0.1
    clusters: int = 3
    feedback: bool = False

    paper = ("Malekijoo et al. 2021, FEDZIP: A Compression Framework for "
             "Communication-Efficient Federated Learning (top-z + k-means + entropy coding)")

    def check(self) -> None:
        if not 0 < self.fraction <= 1:
            raise BadParam("fraction", self.fraction, "a number in (0, 1]")
        if not 1 <= self.clusters <= 256:
            raise BadParam("clusters", self.clusters, "an integer in 1..256")

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self.feedback

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        x = (ef.compensate(tensors, ctx) if self.feedback
             else {k: np.asarray(v, np.float32) for k, v in tensors.items()})
        spec = spec_of(tensors)
        counts, cents, gaps, labels, recon = [], [], [], [], {}
        for name, shape in spec:
            flat = x[name].reshape(-1)
            if flat.size >= 1 << 32:
                raise ValueError(f"tensor {name!r} has too many entries for FedZip "
                                 f"({flat.size})")
            idx = top_k(flat, kept_count(flat.size, self.fraction))
            cent, lab = kmeans(flat[idx], self.clusters)
            counts.append(idx.size)
            cents.append(cent)
            gaps.append((np.diff(idx, prepend=-1) - 1).astype("<u4"))
            labels.append(lab)
            out = np.zeros(flat.size, np.float32)
            out[idx] = cent[lab]
            recon[name] = out.reshape(shape)
        payload = _SECTIONS.pack(self, spec, [
            ([np.array(counts, "<u4")], 4), (cents, 4), (gaps, 4), (labels, 1)])
        if self.feedback:
            ef.keep(ctx, x, recon)
        return encoded(payload, recon, sum(counts))

    def _bounds(self, spec: ModelSpec) -> list[tuple[int, int]]:
        ks = [kept_count(n, self.fraction) for n in numel_of(spec)]
        return [(4, 4 * len(spec)), (4, 4 * sum(min(self.clusters, k) for k in ks)),
                (4, 4 * sum(ks)), (1, sum(ks))]

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        raw_counts, raw_cents, raw_gaps, raw_labels = _SECTIONS.unpack(
            self, payload, spec, self._bounds(spec))
        if raw_counts.nbytes != 4 * len(spec):
            raise WireFormatError(f"FedZip counts section has {raw_counts.nbytes} bytes, "
                                  f"expected {4 * len(spec)}")
        counts = [int(c) for c in raw_counts.view("<u4")]
        numel = numel_of(spec)
        for (name, _), n, count in zip(spec, numel, counts):
            if count > kept_count(n, self.fraction):
                raise WireFormatError(f"{name!r} carries {count} entries, more than k = "
                                      f"{kept_count(n, self.fraction)}")
        ncent = [min(self.clusters, c) for c in counts]
        for what, raw, want in (("centroids", raw_cents, 4 * sum(ncent)),
                                ("gaps", raw_gaps, 4 * sum(counts)),
                                ("labels", raw_labels, sum(counts))):
            if raw.nbytes != want:
                raise WireFormatError(f"FedZip {what} section has {raw.nbytes} bytes, the "
                                      f"counts need {want}")
        cents = raw_cents.view("<f4")
        if not np.isfinite(cents).all():
            raise WireFormatError("FedZip centroids must be finite")
        gaps = raw_gaps.view("<u4")
        out, cpos, vpos = {}, 0, 0
        for (name, shape), n, count, c in zip(spec, numel, counts, ncent):
            lab = raw_labels[vpos: vpos + count]
            if count and int(lab.max()) >= c:
                raise WireFormatError(f"{name!r}: cluster label {int(lab.max())} out of "
                                      f"range for {c} centroids")
            idx = np.cumsum(gaps[vpos: vpos + count].astype(np.int64) + 1) - 1
            if count and int(idx[-1]) >= n:
                raise WireFormatError(f"{name!r}: position {int(idx[-1])} is outside its "
                                      f"{n} entries")
            t = np.zeros(n, np.float32)
            t[idx] = cents[cpos: cpos + c][lab]
            out[name] = t.reshape(shape)
            cpos += c
            vpos += count
        return out
