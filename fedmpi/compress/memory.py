"""Error feedback: what the lossy stages dropped is added back before the next encode.

Why: pruning and quantization are biased; without feedback the small weights (or
update entries) that are pruned every round never reach the receiver. With a
`memory` stage the pipeline encodes c = x + residual and keeps
residual = c - reconstructed, all in float32. Mass conservation:
reconstructed + residual == c exactly wherever the subtraction is exact (pruned
entries, where reconstructed is 0, and every value within a factor 2 of its
reconstruction, by Sterbenz's lemma); elsewhere up to one float32 rounding of c.
c itself is x + residual rounded to float32.

One Memory per sender: per virtual client for the uplink, the server's for the
downlink. Its state is plain arrays so checkpoints can hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.compress.base import Stage, register


@register("memory")
@dataclass(frozen=True, kw_only=True)
class ErrorFeedback(Stage):
    rank = 25  # after every lossy stage, before the lossless encoders

    def label(self):
        return "ef"


class Memory:
    """Residual per tensor name (float32, tensor-shaped); empty until the first encode."""

    def __init__(self) -> None:
        self.residual: dict[str, np.ndarray] = {}

    def compensate(self, name: str, flat: np.ndarray) -> np.ndarray:
        r = self.residual.get(name)
        if r is None:
            return flat.copy()
        if r.size != flat.size:
            raise ValueError(f"memory for {name!r} has {r.size} entries, tensor {flat.size}")
        return flat + r.reshape(-1)

    def update(self, name: str, shape: tuple[int, ...], compensated: np.ndarray,
               reconstructed: np.ndarray) -> None:
        self.residual[name] = (compensated - reconstructed).reshape(shape)

    def state(self) -> dict[str, np.ndarray]:
        # residuals of the on-device codec are torch tensors on their device
        return {k: v.detach().cpu().numpy().copy() if hasattr(v, "detach") else v.copy()
                for k, v in self.residual.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        self.residual = {k: np.array(v, dtype=np.float32, copy=True) for k, v in state.items()}
