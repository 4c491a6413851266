"""Local training and evaluation with torch, plus model <-> numpy state conversion.

Only floating-point state tensors travel (they are what the paper prunes);
every model in the registry keeps all of its state in float tensors.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def get_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's floating-point state as float32 numpy arrays (copies)."""
    return {
        name: t.detach().to("cpu", torch.float32).numpy().copy()
        for name, t in model.state_dict().items()
        if t.is_floating_point()
    }


def set_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    current = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            current[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                batch_size: int, lr: float, momentum: float, weight_decay: float,
                generator: torch.Generator) -> tuple[float, float]:
    """SGD for `epochs` over (x, y); a fresh optimizer per call, as a new FL client would.

    Returns (mean training loss over all batches, seconds).
    """
    t0 = time.perf_counter()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    total, batches = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
    return total / max(batches, 1), time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int) -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy loss)."""
    model.eval()
    correct, loss_sum = 0, 0.0
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        loss_sum += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
    return correct / len(y), loss_sum / len(y)
