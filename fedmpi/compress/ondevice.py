"""The codec on the device where the tensors live: only the encoded bytes leave it.

`Pipeline.encode` sends torch tensors here and `Pipeline.decode(..., device=d)`
decodes here. Pruning (exact cut, ties by position), quantization and the
bitmap / delta indices run in torch (torchops.py) on the tensors' device; the
index and value sections are concatenated there and copied to the host once,
into pinned (page-locked) memory, which is what MPI sends. The payload is
byte-for-byte the numpy path's (the tests compare them on CPU tensors, and
jobs/gpu-check.sh on a GPU); the container (zstd) and the wire checksums stay
on the host. Decoding copies the received sections to the device and rebuilds
the tensors there, with the numpy path's checks.

Host staging is used even where the MPI library is CUDA-aware (see
cuda_mpi.py): the frame's CRC-32 and zstd are computed on the host, so the
payload has to be there anyway; what matters is that it is the compact one.

Synchronisation: the per-tensor support counts (and the largest delta gaps,
where a delta layout is possible) are read back in one transfer each, not one
per tensor.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
import torch

from fedmpi.compress import ondevice_batched as batched
from fedmpi.compress import sparse as sp
from fedmpi.compress import torchops as ops
from fedmpi.compress.base import Container
from fedmpi.compress.fused import read_sections
from fedmpi.compress.pipeline import _PRELUDE, TABLE, Encoded, spec_crc
from fedmpi.wire import WireFormatError


def to_host(t: torch.Tensor) -> np.ndarray:
    """A uint8 device tensor as a numpy array in pinned host memory (one copy)."""
    if t.device.type == "cpu":
        return t.numpy()
    host = torch.empty(t.numel(), dtype=torch.uint8, pin_memory=True)
    host.copy_(t)
    return host.numpy()


def encode(pipe, tensors, memory=None) -> Encoded:
    names = list(tensors)
    shapes = [tuple(tensors[k].shape) for k in names]
    flats = [tensors[k].detach().reshape(-1).to(torch.float32).contiguous() for k in names]
    device = flats[0].device if flats else torch.device("cpu")
    if memory is not None:
        flats = [_compensate(memory, k, f) for k, f in zip(names, flats)]
    if flats and batched.applies(pipe, device):  # the hot path on a GPU: all tensors at once
        idx_dev, val_dev, rows, nnz, source, _ = batched.encode(pipe, names, shapes, flats)
        table = np.zeros(len(names), dtype=TABLE)
        table["layout"] = [lt for lt, _ in rows]
        table["count"] = [c for _, c in rows]
        parts = torch.split(source, [f.numel() for f in flats])
        recon = {name: r.reshape(shape) for name, shape, r in zip(names, shapes, parts)}
        if memory is not None:
            for name, shape, flat, r in zip(names, shapes, flats, parts):
                memory.residual[name] = (flat - r).reshape(shape)
    else:
        idx_dev, val_dev, table, nnz, recon = _per_tensor(pipe, names, shapes, flats, memory)
    meta = np.concatenate([np.frombuffer(_PRELUDE.pack(
        pipe.codec_id, spec_crc(list(zip(names, shapes))), len(names), 0), np.uint8),
        table.view(np.uint8)])
    coder = pipe.coder
    if type(pipe.container) is Container:  # the whole payload leaves the device in one copy
        sec = Container._SECTION
        head = struct.pack("<I", 3) + sec.pack(1, b"", meta.size, meta.size) + \
            sec.pack(1, b"", idx_dev.numel(), idx_dev.numel()) + \
            sec.pack(coder.itemsize, b"", val_dev.numel(), val_dev.numel())
        front = torch.from_numpy(np.concatenate([np.frombuffer(head, np.uint8), meta]))
        payload = to_host(torch.cat([front.to(device), idx_dev, val_dev]))
    else:
        host = to_host(torch.cat([idx_dev, val_dev]))
        split = idx_dev.numel()
        payload = pipe.container.pack([([meta], 1), ([host[:split]], 1),
                                       ([host[split:]], coder.itemsize)])
    numel = sum(f.numel() for f in flats)
    return Encoded(payload=payload, nnz=int(nnz), numel=numel, dense_bytes=4 * numel,
                   reconstructed=recon)


def _per_tensor(pipe, names, shapes, flats, memory):
    """Tensor by tensor (any pipeline): (index, values, table, nnz, reconstruction)."""
    device = flats[0].device if flats else torch.device("cpu")
    masks = ops.masks(pipe.pruner, flats, shapes)
    fmt, coder = pipe.layout.format, pipe.coder
    supports = [m if m is not None else f.view(torch.int32) != 0 for f, m in zip(flats, masks)]
    counts = torch.stack([s.sum() for s in supports]).tolist() if flats else []
    delta = [fmt != "dense" and ops.delta_considered(fmt, f.numel(), c)
             for f, c in zip(flats, counts)]
    gaps = iter(torch.stack([ops.max_gap(s) for s, d in zip(supports, delta) if d]).tolist()
                if any(delta) else [])
    table = np.zeros(len(names), dtype=TABLE)
    index, values, recon, nnz = [], [], {}, 0
    for i, (name, flat) in enumerate(zip(names, flats)):
        layout, idx, vals, where = ops.place(pipe.layout, flat, masks[i], coder, counts[i],
                                             next(gaps) if delta[i] else None)
        codes, p0, p1 = ops.quantize(coder, vals)
        table[i] = (layout, b"\0\0\0", vals.numel(), p0, p1)
        index.append(idx)
        values.append(codes)
        if layout != sp.DENSE or masks[i] is not None:
            nnz += counts[i]
        else:  # dense format without pruning counts numeric non-zeros, as numpy does
            nnz += int(torch.count_nonzero(vals)) if fmt == "dense" else counts[i]
        v = ops.dequantize(coder, codes, vals.numel(), p0, p1) if coder.lossy else vals
        r = ops.scatter(flat.numel(), where, v)
        if memory is not None:
            memory.residual[name] = (flat - r).reshape(shapes[i])
        recon[name] = r.reshape(shapes[i])
    empty = torch.empty(0, dtype=torch.uint8, device=device)
    return (torch.cat(index) if index else empty, torch.cat(values) if values else empty,
            table, nnz, recon)


def _compensate(memory, name: str, flat: torch.Tensor) -> torch.Tensor:
    r = memory.residual.get(name)
    if r is None:
        return flat.clone()
    if not isinstance(r, torch.Tensor):  # loaded from a checkpoint
        r = torch.from_numpy(np.ascontiguousarray(r, dtype=np.float32))
    if r.numel() != flat.numel():
        raise ValueError(f"memory for {name!r} has {r.numel()} entries, tensor {flat.numel()}")
    return flat + r.to(flat.device).reshape(-1)


def decode(pipe, payload, spec, device=None) -> dict[str, torch.Tensor]:
    """Payload -> torch tensors on `device`; WireFormatError on anything malformed."""
    device = torch.device("cpu" if device is None else device)
    table, index, values, numels = read_sections(pipe, payload, spec)
    coder = pipe.coder
    with warnings.catch_warnings():  # read-only receive buffers: only read here
        warnings.simplefilter("ignore", UserWarning)
        idx_dev = torch.from_numpy(np.ascontiguousarray(index)).to(device)
        val_dev = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    out, checks, ipos, vpos = {}, [], 0, 0
    for (name, shape), numel, row in zip(spec, numels, table):
        layout, k = int(row["layout"]), int(row["count"])
        if k > numel:
            raise WireFormatError(f"{name}: {k} values for {numel} entries")
        ilen, vlen = sp.index_nbytes(layout, numel, k), coder.nbytes(k)
        if ipos + ilen > index.nbytes or vpos + vlen > values.nbytes:
            raise WireFormatError(f"{name}: sections end before this tensor's data")
        buf = idx_dev[ipos: ipos + ilen]
        if layout == sp.DENSE:
            if k != numel:
                raise WireFormatError(f"dense tensor carries {k} values, expected {numel}")
            where = None
        elif layout == sp.BITMAP:
            bits = ops.unpackbits(buf)
            where = bits[:numel]
            checks.append((name, layout, k, numel, torch.stack([
                bits[numel:].sum(), where.sum()])))
        else:
            where = torch.cumsum(ops.from_le(buf, sp._GAP[layout].itemsize) + 1, 0) - 1
            last = where[-1] if k else torch.tensor(-1, device=device)
            checks.append((name, layout, k, numel, torch.stack([last, last])))
            where = where.clamp(0, max(numel - 1, 0))  # validated below, before use
        v = ops.dequantize(coder, val_dev[vpos: vpos + vlen], k, float(row["p0"]),
                           float(row["p1"]))
        out[name] = (where, v, numel, shape)
        ipos, vpos = ipos + ilen, vpos + vlen
    if ipos != index.nbytes or vpos != values.nbytes:
        raise WireFormatError(f"{index.nbytes - ipos} index and {values.nbytes - vpos} "
                              "value bytes left over after the last tensor")
    if checks:  # every index check of the message in one transfer
        found = torch.stack([c[-1] for c in checks]).tolist()
        for (_, layout, k, numel, _), (a, b) in zip(checks, found):
            if layout == sp.BITMAP and a:
                raise WireFormatError("bitmap padding bits are set")
            if layout == sp.BITMAP and b != k:
                raise WireFormatError(f"bitmap marks {b} entries, header says {k}")
            if layout != sp.BITMAP and a >= numel:
                raise WireFormatError(f"delta index {a} out of range for {numel} entries")
    return {name: ops.scatter(numel, where, v).reshape(shape)
            for name, (where, v, numel, shape) in out.items()}
