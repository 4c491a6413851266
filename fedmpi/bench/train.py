"""`fedmpi bench train`: local-training throughput (images/s) of one process on a device.

What a client rank does in a round, without MPI: the data set's training images
moved to the device once, a model from the registry, `train_local` (SGD, the
run's batch size) for a fixed number of steps after a warm-up, with the
options a run has (`--amp`, `--compile`). Several processes started together
on one GPU measure the sharing (jobs/gpu-check.sh does this where MPI is missing).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dataset", default="cifar10", help="cifar10 | digits")
    parser.add_argument("--path", default=None, help="data set path (cifar10: as data.path)")
    parser.add_argument("--subset", type=int, default=5000, help="training images loaded")
    parser.add_argument("--model", default="resnet12")
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300, help="timed SGD steps")
    parser.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--compile", default="off",
                        choices=("off", "default", "reduce-overhead", "max-autotune"))


def run(args: argparse.Namespace) -> list[dict]:
    from fedmpi import data, models
    from fedmpi.train import train_local

    device = torch.device(args.device)
    train, _ = data.load(args.dataset, path=args.path, train_subset=args.subset, test_subset=None)
    x = torch.from_numpy(train.x).to(device)
    y = torch.from_numpy(train.y).to(device)
    torch.manual_seed(0)
    model = models.build(args.model, input_shape=train.input_shape,
                         num_classes=train.num_classes).to(device)
    if args.compile != "off":
        model.compile(mode=args.compile)
    n = min(len(y), args.steps * args.batch_size)
    g = torch.Generator().manual_seed(0)
    warm = min(len(y), 20 * args.batch_size)
    t0 = time.perf_counter()
    train_local(model, x[:warm], y[:warm], epochs=1, batch_size=args.batch_size, lr=0.01,
                momentum=0.9, weight_decay=0.0, generator=g, amp=args.amp)
    warmup_s = time.perf_counter() - t0
    epochs = max(1, args.steps * args.batch_size // n)
    loss, seconds = train_local(model, x[:n], y[:n], epochs=epochs, batch_size=args.batch_size,
                                lr=0.01, momentum=0.9, weight_decay=0.0, generator=g,
                                amp=args.amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return [{"device": str(device), "card": name, "model": args.model, "amp": args.amp,
             "compile": args.compile, "batch_size": args.batch_size, "images": n * epochs,
             "seconds": seconds, "images_per_s": n * epochs / seconds, "warmup_s": warmup_s,
             "loss": loss, "finite": bool(np.isfinite(loss))}]


def print_rows(rows: list[dict]) -> None:
    for r in rows:
        print(f"{r['device']} ({r['card']}): {r['model']}, batch {r['batch_size']}, amp "
              f"{r['amp']}, compile {r['compile']}: {r['images_per_s']:.0f} images/s "
              f"({r['images']} images in {r['seconds']:.2f} s; warm-up {r['warmup_s']:.1f} s)")
