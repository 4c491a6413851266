"""EF-signSGD: the scaled sign of the error-compensated input, with error feedback.

Karimireddy, Rebjock, Stich, Jaggi 2019, "Error feedback fixes SignSGD and other
gradient compression schemes" (ICML), Algorithm 1 (EF-SIGNSGD). Per tensor of d
entries, with e the residual kept in `ctx.state` (per link and owner):

    c = x + e,   C(c) = (||c||_1 / d) * sign(c),   send C(c),   e <- c - C(c)

so sent + new residual = input + previous residual (up to the float32 rounding of
c and of the subtraction; `feedback.py`). Same wire layout and decoder as signSGD
(`signsgd.py`: one f32 scale per tensor + one sign bit per entry, sign(0) = +1), under
its own codec id; the aggregate is the strategy's weighted mean.

What differs from the paper: the paper's learning rate multiplies the compensated
input before compression (p = lr * g + e); here the input is the client's model
update (the learning rate is already in it), so c = x + e. The error feedback
works on either link: a client's residual for its updates, the server's for its
broadcast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress.pipeline import Encoded, ModelSpec
from fedmpi.compressors import feedback
from fedmpi.compressors.base import Compressor, Context, check_finite, register
from fedmpi.compressors.signsgd import decode_signs, encode_signs


@register("efsignsgd")
@dataclass(frozen=True, kw_only=True)
class EFSignSGD(Compressor):
    """Scaled sign (||c||_1 / d per tensor) with error feedback (see the module)."""

    paper = ("Karimireddy, Rebjock, Stich, Jaggi 2019, Error feedback fixes SignSGD and "
             "other gradient compression schemes")
    stateful = True

    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        check_finite(self, tensors)
        with np.errstate(over="ignore"):  # refused just below
            c = feedback.compensate(tensors, ctx)
        for name, t in c.items():
            if not np.isfinite(t).all():
                raise ValueError(f"tensor {name!r} plus its error-feedback residual overflows "
                                 f"float32 ({self.name})")
        enc = encode_signs(self, c)
        feedback.keep(ctx, c, enc.reconstructed)
        return enc

    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        return decode_signs(self, payload, spec)
