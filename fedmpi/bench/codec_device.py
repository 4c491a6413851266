"""`fedmpi bench codec --device cuda`: the on-device codec vs a device-to-device copy.

The model's tensors live on the device, as a client's state does after training.
Encode = everything a sender does until the payload is in (pinned) host memory,
ready for MPI: pruning, quantization, indices on the device, one device-to-host
copy of the encoded bytes, zstd on the host where the pipeline has it. Decode =
receiving host bytes to tensors on the device. Both are compared with a
device-to-device copy of the same dense bytes (`flat.clone()`, allocating like
the codecs), timed in the same loop; GB/s count the dense float32 bytes once.
`same_bytes_as_cpu` says whether the payload equals the numpy/numba path's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedmpi import wire
from fedmpi.compress import build_pipeline, spec_of


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, repeat: int, copy, device) -> tuple[float, float, object]:
    result = fn()
    copy()
    t_fn, t_cp = [], []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        t1 = time.perf_counter()
        copy()
        _sync(device)
        t_cp.append(time.perf_counter() - t1)
        t_fn.append(t1 - t0)
    return float(np.median(t_fn)), float(np.median(t_cp)), result


def bench_pipeline(label, stages, host_tensors, tensors, flat, repeat, device) -> dict:
    pipe = build_pipeline(stages, field=f"bench[{label}]")
    spec = spec_of(host_tensors)
    copy = flat.clone
    t_enc, cp_enc, enc = _median_time(lambda: pipe.encode(tensors, memory=pipe.new_memory()),
                                      repeat, copy, device)
    t_dec, cp_dec, dec = _median_time(lambda: pipe.decode(enc.payload, spec, device=device),
                                      repeat, copy, device)
    cpu = pipe.encode(host_tensors, memory=pipe.new_memory())
    gb = enc.dense_bytes / 1e9
    copy_s = float(np.median([cp_enc, cp_dec]))
    exact = all(torch.equal(dec[k].view(torch.int32), enc.reconstructed[k].view(torch.int32))
                for k in dec)
    return {
        "pipeline": label, "name": pipe.name, "device": str(device),
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "numel": enc.numel, "nnz": enc.nnz, "density": enc.nnz / max(enc.numel, 1),
        "dense_bytes": enc.dense_bytes, "wire_bytes": wire.HEADER_SIZE + enc.payload.nbytes,
        "ratio": (wire.HEADER_SIZE + enc.payload.nbytes) / enc.dense_bytes,
        "encode_s": t_enc, "decode_s": t_dec, "copy_s": copy_s,
        "encode_gbps": gb / t_enc, "decode_gbps": gb / t_dec, "copy_gbps": gb / copy_s,
        "encode_vs_copy": cp_enc / t_enc, "decode_vs_copy": cp_dec / t_dec,
        "roundtrip_exact": exact,
        "same_bytes_as_cpu": bool(np.array_equal(cpu.payload, enc.payload)),
    }


def run(args: argparse.Namespace, host_tensors: dict[str, np.ndarray], pipelines) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"fedmpi bench codec: --device {args.device}, but no CUDA device is "
                         "visible to torch")
    if device.type == "cuda":
        if device.index is None:  # plain "cuda": the current device (set_device needs an index)
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    tensors = {k: torch.from_numpy(v).to(device) for k, v in host_tensors.items()}
    flat = torch.cat([t.reshape(-1) for t in tensors.values()])
    chosen = [(k, s) for k, s in pipelines
              if (not args.only or k in args.only) and not k.endswith("(numpy)")]
    return [bench_pipeline(k, s, host_tensors, tensors, flat, max(1, args.repeat), device)
            for k, s in chosen]


def print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    r0 = rows[0]
    print(f"device: {r0['device']} ({r0['card']}); model: {r0['numel']:,} float32 parameters "
          f"({r0['dense_bytes'] / 1e6:.1f} MB dense); device copy {r0['copy_gbps']:.1f} GB/s")
    head = (f"{'pipeline':26} {'wire MB':>9} {'ratio':>7} {'enc GB/s':>9} {'x copy':>7} "
            f"{'dec GB/s':>9} {'x copy':>7} {'copy GB/s':>9} {'= CPU bytes':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['pipeline']:26} {r['wire_bytes'] / 1e6:9.3f} {r['ratio']:7.2%} "
              f"{r['encode_gbps']:9.2f} {r['encode_vs_copy']:7.3f} {r['decode_gbps']:9.2f} "
              f"{r['decode_vs_copy']:7.3f} {r['copy_gbps']:9.1f} "
              f"{'yes' if r['same_bytes_as_cpu'] else 'NO':>11}")
    for r in rows:
        if not r["same_bytes_as_cpu"] or not r["roundtrip_exact"]:
            print(f"FAIL: {r['pipeline']}: payload equals CPU: {r['same_bytes_as_cpu']}, "
                  f"decode equals reconstruction: {r['roundtrip_exact']}")
