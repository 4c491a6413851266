"""PowerSGD adapted to federated learning (Vogels, Karimireddy, Jaggi 2019, "PowerSGD:
Practical Low-Rank Gradient Compression for Distributed Optimization", NeurIPS;
arXiv 1905.13727).

Per tensor with ndim >= 2, reshaped to a matrix M (rows = first dimension, n x m), with
r = min(rank, n, m), one step of subspace (power) iteration from the warm-started Q:

    P = M Q;  P <- orthonormal basis of P (QR);  Q' = M^T P;  send P and Q' (float32)
    receiver: M~ = P Q'^T                        (rank <= r)

and Q' is kept in `ctx.state` as the next warm start. A tensor is factored only when
its factors are smaller than it (r (n + m) < n m); 1-D tensors (biases, norm scales) and
the others travel dense. With `feedback` (the paper's error feedback, on by default) M
is the compensated update, and M - M~ is kept for next time (compressors/feedback.py).

What differs from the allreduce original (Algorithm 1 of the paper):
- no allreduce of P and Q across workers: every sampled client computes its own P and Q'
  from its own update and sends both; the server decodes each client's reconstruction
  P Q'^T and averages reconstructions (in the allreduce original the workers average P,
  then Q, so all share one low-rank factorisation of the mean);
- one power iteration per round per client, on the client's update (the model delta of
  its local epochs), not on one minibatch gradient per step;
- the warm start is per client and survives across the rounds it is sampled in (its
  `ctx.state`), not shared by all workers; the first time a client (or the server, on the
  downlink) compresses a tensor, Q is drawn N(0, 1) from `ctx.rng`, a pure function of
  (seed, round, client, link). Warm-start columns that collapsed to zero (a rank-
  deficient update) are redrawn, and columns are scaled to unit norm before use (the
  column space of P is unchanged, and the iterates cannot overflow over rounds);
- the product P Q'^T is formed as a sum of r outer products in float64, rounded once to
  float32: element-wise numpy operations, so sender and receiver get the same bits on
  any machine (a BLAS matmul may sum in another order elsewhere).
On the downlink the server compresses its global update the same way, with its own
residual and warm start.

Payload (`Sections`, plain, one float32 section): per tensor in model order, P (n x r,
row-major) then Q' (m x r, row-major) when factored, else its n values dense. Its length
is fixed by the model and `rank`; decoding checks it, finite factors and a finite
product.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_of
from fedmpi.compressors import feedback as ef
from fedmpi.compressors.base import (Compressor, Context, Sections, check_finite, encoded,
                                     register)
from fedmpi.params import BadParam
from fedmpi.wire import WireFormatError

STATE_PREFIX = "powersgd.q:"  # ctx.state key of a tensor's warm-start Q (m x r); no "/" (HDF5 paths)


def factor_shape(shape: tuple[int, ...], rank: int) -> tuple[int, int, int] | None:
    """(n, m, r) when a tensor of `shape` is sent as rank-r factors, else None (dense)."""
    if len(shape) < 2:
        return None
    n = shape[0]
    m = int(np.prod(shape[1:], dtype=np.int64))
    r = min(rank, n, m)
    return (n, m, r) if 0 < r and r * (n + m) < n * m else None


def product(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """P Q^T as float32 from float32 factors: float64 sum of outer products, one rounding."""
    acc = np.zeros((p.shape[0], q.shape[0]), np.float64)
    for j in range(p.shape[1]):
        acc += np.multiply.outer(p[:, j].astype(np.float64), q[:, j].astype(np.float64))
    with np.errstate(over="ignore"):
        return acc.astype(np.float32)


def warm_start(ctx: Context, name: str, index: int, m: int, r: int) -> np.ndarray:
    """Q (m x r, float64, unit columns): the stored one, with zero columns redrawn."""
    q = ctx.state.get(STATE_PREFIX + name)
    if q is not None and q.shape != (m, r):
        raise ValueError(f"warm start of {name!r} has shape {q.shape}, expected {(m, r)}")
    q = np.zeros((m, r)) if q is None else q.astype(np.float64)
    norms = np.linalg.norm(q, axis=0)
    dead = ~(norms > 1e-30)
    if dead.any():
        q[:, dead] = ctx.rng(index).standard_normal((m, int(dead.sum())))
        norms = np.linalg.norm(q, axis=0)
    return q / norms


@register("powersgd")
@dataclass(frozen=True, kw_only=True)
class PowerSGD(Compressor):
    rank: int = 4
    feedback: bool = True

    paper = ("Vogels et al. 2019, PowerSGD: Practical Low-Rank Gradient Compression for "
             "Distributed Optimization (per-client factors, warm start, error feedback)")
    stateful = True  # the warm start, with or without feedback

    def check(self) -> None:
        if self.rank < 1:
            raise BadParam("rank", self.rank, "an integer >= 1")

    def _length(self, spec: ModelSpec) -> int:
        total = 0
        for _, shape in spec:
            f = factor_shape(shape, self.rank)
            total += (f[0] + f[1]) * f[2] if f else int(np.prod(shape, dtype=np.int64))
        return total

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        x = (ef.compensate(tensors, ctx) if self.feedback
             else {k: np.asarray(v, np.float32) for k, v in tensors.items()})
        spec = spec_of(tensors)
        parts, recon, warm = [], {}, {}
        for i, (name, shape) in enumerate(spec):
            f = factor_shape(shape, self.rank)
            if f is None:
                parts.append(x[name].reshape(-1))
                recon[name] = x[name].copy()
                continue
            n, m, r = f
            mat = x[name].reshape(n, m).astype(np.float64)
            p, _ = np.linalg.qr(mat @ warm_start(ctx, name, i, m, r))
            q = mat.T @ p
            with np.errstate(over="ignore"):
                p32, q32 = p.astype(np.float32), q.astype(np.float32)
            out = product(p32, q32)
            if not (np.isfinite(q32).all() and np.isfinite(out).all()):
                raise ValueError(f"tensor {name!r}: values too large for float32 rank-{r} "
                                 "factors")
            parts += [p32.reshape(-1), q32.reshape(-1)]
            recon[name] = out.reshape(shape)
            warm[STATE_PREFIX + name] = q32
        payload = Sections().pack(self, spec, [(parts, 4)])
        if self.feedback:
            ef.keep(ctx, x, recon)
        ctx.state.update(warm)
        return encoded(payload, recon, sum(p.size for p in parts))

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        length = self._length(spec)
        (raw,) = Sections().unpack(self, payload, spec, [(4, 4 * length)])
        if raw.nbytes != 4 * length:
            raise WireFormatError(f"PowerSGD payload holds {raw.nbytes // 4} numbers, this "
                                  f"model and rank need {length}")
        values = raw.view("<f4")
        if not np.isfinite(values).all():
            raise WireFormatError("PowerSGD factors and dense values must be finite")
        out, pos = {}, 0
        for name, shape in spec:
            f = factor_shape(shape, self.rank)
            if f is None:
                size = int(np.prod(shape, dtype=np.int64))
                out[name] = values[pos: pos + size].astype(np.float32).reshape(shape)
                pos += size
                continue
            n, m, r = f
            p = values[pos: pos + n * r].reshape(n, r)
            q = values[pos + n * r: pos + (n + m) * r].reshape(m, r)
            pos += (n + m) * r
            t = product(p, q)
            if not np.isfinite(t).all():
                raise WireFormatError(f"{name!r}: the product of its factors overflows "
                                      "float32")
            out[name] = t.reshape(shape)
        return out
