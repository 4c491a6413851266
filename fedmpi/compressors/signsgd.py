"""signSGD with majority vote: one bit per entry and one scale per tensor.

Bernstein, Wang, Azizzadenesheli, Anandkumar 2018, "signSGD: Compressed optimisation
for non-convex problems" (ICML), and its majority vote (Bernstein, Zhao,
Azizzadenesheli, Anandkumar 2019, "signSGD with majority vote is communication
efficient and fault tolerant", ICLR).

Each client sends, per tensor x of d entries, the signs of x (bit 1 = negative; 0 and
positive entries send 0, so sign(0) = +1 here) and scale = ||x||_1 / d = mean |x|
(float64, rounded once to float32). Decoded, every entry is +-scale.

With `vote: true` the server folds the clients' messages by majority vote
(`MajorityVote`), per tensor and per entry:

    aggregate = sign(sum_i sign_i) * (sum_i scale_i) / m        (m = clients folded)

where sign_i in {-1, 0, +1} and scale_i = max |entry| are read back from client i's
decoded tensor (a client with scale 0 abstains: its signs are 0, its scale counts as
0), one client one vote (the sample weights are checked > 0 and otherwise ignored, as
in the paper's vote), a tie (sum 0) gives 0, and the sums are exact (integers, float64
scales). With a reference (clients send updates) the result is reference + aggregate,
in float64 then rounded to float32, as the weighted mean does. With `vote: false` the
strategy's weighted mean of the decoded tensors applies.

What differs from the paper: the paper sends bare signs and the server applies
lr * sign(vote); in federated learning a client sends a model update, not a gradient,
so a magnitude must travel: the per-tensor scale (the mean |x| of EF-signSGD's
scaled sign, Karimireddy et al. 2019), and the vote is scaled by the clients' mean
scale.

Payload (after the 12-byte method header, sections of base.Sections), shared with
EF-signSGD (`efsignsgd.py`):
  [0] f32 per tensor: scale (finite, >= +0.0; +0.0 for an empty or all-zero tensor);
  [1] 1 bit per entry, all tensors in spec order, little-endian bit order, zero
      padding; a tensor of scale 0 has only 0 bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_of
from fedmpi.compressors import coding
from fedmpi.compressors.base import (Compressor, Context, Fold, Sections, check_finite,
                                     encoded, numel_of, register)
from fedmpi.wire import WireFormatError


def encode_signs(comp: Compressor, tensors: Mapping[str, np.ndarray]) -> Encoded:
    """Scaled signs (scale = mean |x| per tensor) of finite float32 tensors."""
    recon, scales, bits = {}, [], []
    nnz = 0
    for name, x in tensors.items():
        x = np.asarray(x, dtype=np.float32)
        flat = x.reshape(-1)
        scale = np.float32(np.abs(flat, dtype=np.float64).mean()) if flat.size else np.float32(0)
        neg = (flat < 0) & (scale > 0)
        recon[name] = np.where(neg, -scale, scale).astype(np.float32).reshape(x.shape)
        nnz += flat.size if scale > 0 else 0
        scales.append(scale)
        bits.append(neg)
    payload = Sections().pack(comp, spec_of(tensors), [
        ([np.asarray(scales, "<f4")], 4),
        ([coding.pack_bits(np.concatenate(bits) if bits else np.empty(0, bool), 1)], 1)])
    return encoded(payload, recon, nnz)


def tensor_scales(comp: Compressor, section: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The per-tensor f32 scales section, checked: one per tensor, finite, >= +0.0."""
    if section.nbytes != 4 * len(spec):
        raise WireFormatError(f"{comp.name}: {section.nbytes // 4} scales, expected {len(spec)}")
    scales = section.view("<f4")
    if not np.isfinite(scales).all() or np.any(np.signbit(scales)):
        raise WireFormatError(f"{comp.name}: a tensor scale is not finite or is negative "
                              "(scales are finite and >= +0.0)")
    return scales


def decode_signs(comp: Compressor, payload, spec: ModelSpec) -> dict[str, np.ndarray]:
    numels = numel_of(spec)
    total = sum(numels)
    scales, bits = Sections().unpack(comp, payload, spec, [(4, 4 * len(spec)),
                                                           (1, (total + 7) // 8)])
    scales = tensor_scales(comp, scales, spec)
    neg = coding.unpack_bits(bits, total, 1, f"{comp.name} sign bits").astype(bool)
    out, e0 = {}, 0
    for (name, shape), n, scale in zip(spec, numels, scales):
        if n == 0 and scale != 0:
            raise WireFormatError(f"{comp.name}: empty tensor {name!r} has scale {scale}, "
                                  "expected +0.0")
        t = neg[e0: e0 + n]
        if scale == 0 and t.any():
            raise WireFormatError(f"{comp.name}: tensor {name!r} of scale 0 has sign bits set")
        out[name] = np.where(t, -scale, scale).astype(np.float32).reshape(shape)
        e0 += n
    return out


class MajorityVote(Fold):
    """sign(sum of the clients' signs) * (mean of their scales), per tensor (see module)."""

    def __init__(self, reference: Mapping[str, np.ndarray] | None = None):
        self.reference = reference
        self.votes: dict[str, np.ndarray] = {}
        self.scales: dict[str, float] = {}
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"client weight must be > 0, got {weight}")
        if self.votes and set(tensors) != set(self.votes):
            raise ValueError("client tensors do not match the tensors aggregated so far")
        for name, t in tensors.items():
            t = np.asarray(t)
            vote = np.sign(t).astype(np.int64)
            scale = float(np.abs(t).max()) if t.size else 0.0
            if name in self.votes:
                self.votes[name] += vote
                self.scales[name] += scale
            else:
                self.votes[name], self.scales[name] = vote, scale
        self.count += 1

    def result(self) -> dict[str, np.ndarray]:
        if not self.count:
            raise ValueError("no client tensors were aggregated")
        out = {}
        for name, votes in self.votes.items():
            agg = np.sign(votes) * (self.scales[name] / self.count)
            if self.reference is not None:
                agg = np.asarray(self.reference[name], dtype=np.float64) + agg
            out[name] = agg.astype(np.float32)
        return out


@register("signsgd")
@dataclass(frozen=True, kw_only=True)
class SignSGD(Compressor):
    """signSGD: signs + mean |x| per tensor; majority vote at the server when `vote`."""

    vote: bool = True

    paper = ("Bernstein, Wang, Azizzadenesheli, Anandkumar 2018, signSGD: Compressed "
             "optimisation for non-convex problems (majority vote)")

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        return encode_signs(self, tensors)

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        return decode_signs(self, payload, spec)

    def fold(self, reference: Mapping[str, np.ndarray] | None) -> Fold | None:
        return MajorityVote(reference) if self.vote else None
