"""Error feedback for any compressor (Seide et al. 2014; Stich et al. 2018;
Karimireddy et al. 2019): what compression dropped is added back next time.

    c = x + e          (compensate: e is ctx.state, empty at first)
    send C(c)
    e = c - decode(C(c))  (keep)

so that sent + residual = input + previous residual (EF conservation; exact in
float32 wherever the subtraction is, up to one rounding of c elsewhere).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedmpi.compressors.base import Context


def compensate(tensors: Mapping[str, np.ndarray], ctx: Context) -> dict[str, np.ndarray]:
    """x + residual, float32, as new arrays (the inputs are not changed)."""
    out = {}
    for name, x in tensors.items():
        x = np.asarray(x, dtype=np.float32)
        r = ctx.state.get(name)
        if r is not None and r.shape != x.shape:
            raise ValueError(f"residual of {name!r} has shape {r.shape}, tensor {x.shape}")
        out[name] = x + r if r is not None else x.copy()
    return out


def keep(ctx: Context, compensated: Mapping[str, np.ndarray],
         reconstructed: Mapping[str, np.ndarray]) -> None:
    """Store residual = compensated - reconstructed in ctx.state."""
    for name, c in compensated.items():
        ctx.state[name] = (c - reconstructed[name]).astype(np.float32, copy=False)
