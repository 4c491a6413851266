"""Local training and evaluation with torch, plus model <-> numpy state conversion.

Only floating-point state tensors travel (they are what the paper prunes);
every model in the registry keeps all of its state in float tensors.
"""

from __future__ import annotations

import contextlib
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


def device_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point state as float32 tensors where the model lives (no copy when
    already float32): what the on-device codec encodes, so only its output leaves the GPU."""
    return {name: t.detach().to(torch.float32)
            for name, t in model.state_dict().items() if t.is_floating_point()}


def set_state(model: nn.Module, state: dict[str, np.ndarray | torch.Tensor]) -> None:
    current = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                value = torch.from_numpy(np.ascontiguousarray(value))
            current[name].copy_(value)


def autocast(device: torch.device, amp: str):
    """Mixed precision for the forward pass (`train.amp`); a no-op when off."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def train_local(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                batch_size: int, lr: float, momentum: float, weight_decay: float,
                generator: torch.Generator, amp: str = "off",
                prox_mu: float = 0.0) -> tuple[float, float]:
    """SGD for `epochs` over (x, y); a fresh optimizer per call, as a new FL client would.

    `prox_mu` > 0 adds FedProx's proximal term (mu/2)·||w − w_start||² to the loss
    (Li et al. 2020), w_start being the parameters at the call: it keeps a client
    near the global model it received on heterogeneous data.

    Returns (mean training loss over all batches, seconds). The loss is summed on
    the device in float64 (the same sum as Python floats) and read once at the end:
    reading it per batch would stall a GPU after every step.
    """
    t0 = time.perf_counter()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    scaler = torch.amp.GradScaler(x.device.type) if amp == "fp16" else None
    loss_fn = nn.CrossEntropyLoss()
    anchor = ([p.detach().clone() for p in model.parameters()] if prox_mu > 0 else None)
    n = len(y)
    total, batches = torch.zeros((), dtype=torch.float64, device=x.device), 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            opt.zero_grad(set_to_none=True)
            with autocast(x.device, amp):
                loss = loss_fn(model(x[idx]), y[idx])
            if anchor is not None:
                loss = loss + 0.5 * prox_mu * sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
            if scaler is None:
                loss.backward()
                opt.step()
            else:  # float16 gradients underflow without loss scaling
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            total += loss.detach()
            batches += 1
    mean = float(total) / max(batches, 1)  # synchronizes: the time below is the real one
    return mean, time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int, amp: str = "off") -> tuple[float, float]:
    """(accuracy in [0, 1], mean cross-entropy loss).

    On the CPU, image batches go in channels-last (NHWC): oneDNN's convolutions run
    ResNet-12 about 1.5x faster so, and the server's evaluation shares the cores with
    the next round's training (`fedmpi bench round`). The values are the same up to
    float rounding. Training keeps the default layout (its results stay bit for bit)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    nhwc = x.device.type == "cpu" and x.dim() == 4
    for start in range(0, len(y), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        if nhwc:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, amp):
            out = model(xb)
        loss_sum += loss_fn(out.float(), yb)
        correct += (out.argmax(1) == yb).sum()
    return int(correct) / len(y), float(loss_sum) / len(y)
