"""The codec on the device where the tensors live: only the encoded bytes leave it.

`Pipeline.encode` sends torch tensors here and `Pipeline.decode(..., device=d)`
decodes here. Pruning (exact cut, ties by position), quantization and the
bitmap / delta indices run in torch (torchops.py) on the tensors' device; the
index and value sections are concatenated there and copied to the host once,
into pinned (page-locked) memory, which is what MPI sends. The payload is
byte-for-byte the numpy path's (the tests compare them on CPU tensors, and
jobs/gpu-check.sh on a GPU); the container (zstd) and the wire checksums stay
on the host. Encoding refuses NaN/inf as the numpy path does. Decoding starts
from the numpy path's `Pipeline.read` (every check that needs no pass over the
data), copies the sections to the device, rebuilds the tensors there and judges
what the device found (popcounts, gaps, non-finite values, pow2 codes) with the
numpy path's rule functions: it refuses exactly the messages the numpy decoder
refuses (tests: every valid-CRC forgery of tests/forgery.py, both decoders).

Host staging is used even where the MPI library is CUDA-aware (see
cuda_mpi.py): the frame's CRC-32 and zstd are computed on the host, so the
payload has to be there anyway; what matters is that it is the compact one.

Synchronisation: the per-tensor support counts (and the largest delta gaps,
where a delta layout is possible) are read back in one transfer each, not one
per tensor; so are the decoder's findings.
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
        # (refuses NaN and inf as the numpy encoder does, in its first read-back)
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
    ops.check_finite_inputs(pipe, names, flats)
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
    """Payload -> torch tensors on `device`; WireFormatError on anything malformed.

    `Pipeline.read` (the numpy decoder's own function) checks everything that needs
    no pass over the data, on the host; the device computes what the remaining
    rules need (bitmap popcounts, largest delta gap and last index, the first
    non-finite value, pow2 code facts), all read back in one transfer and judged
    by the numpy decoder's rule functions (sparse.check_marked / check_gaps, the
    coder's). So this decoder refuses exactly what the numpy one refuses.
    """
    device = torch.device("cpu" if device is None else device)
    index, values, spans = pipe.read(payload, spec)
    coder = pipe.coder
    with warnings.catch_warnings():  # read-only receive buffers: only read here
        warnings.simplefilter("ignore", UserWarning)
        idx_dev = torch.from_numpy(np.ascontiguousarray(index)).to(device)
        val_dev = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    none = torch.tensor(-1, dtype=torch.int64, device=device)
    decoded, facts = [], []
    for s in spans:
        buf = idx_dev[s.ipos: s.ipos + s.ilen]
        found = []
        if s.layout == sp.DENSE:
            where = None
        elif s.layout == sp.BITMAP:
            where = ops.unpackbits(buf)[: s.numel]
            found.append(where.sum())
        else:
            gaps = ops.from_le(buf, sp._GAP[s.layout].itemsize)
            idx = torch.cumsum(gaps + 1, 0) - 1
            found += [gaps.max(), idx[-1]] if s.count else [none + 1, none]
            where = idx.clamp(0, max(s.numel - 1, 0))  # judged below, before use
        v, vfound = ops.decode_values(coder, val_dev[s.vpos: s.vpos + s.vlen], s.count,
                                      s.p0, s.p1)
        decoded.append((where, v))
        facts.append((len(found), found + vfound))
    flat = [f for _, fs in facts for f in fs]
    known = iter(torch.stack(flat).tolist() if flat else [])  # one transfer
    for s, (n_index, fs), (_, v) in zip(spans, facts, decoded):
        got = [next(known) for _ in fs]
        try:
            if s.layout == sp.BITMAP:
                sp.check_marked(got[0], s.count)
            elif s.layout != sp.DENSE:
                sp.check_gaps(s.layout, got[0], got[1], s.numel, s.count)
            ops.check_values(coder, got[n_index:], v, s.count, s.p0)
        except WireFormatError as exc:
            raise WireFormatError(f"{s.name}: {exc}") from None
    return {s.name: ops.scatter(s.numel, where, v).reshape(s.shape)
            for s, (where, v) in zip(spans, decoded)}
