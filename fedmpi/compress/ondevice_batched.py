"""The on-device encoder for the hot path, over all tensors at once.

Why: ondevice.encode works tensor by tensor, which on a GPU means ~10 kernel
launches and a host synchronisation per tensor (boolean indexing has to learn
its output size): for a ResNet that is hundreds of launches and ~60 round
trips for a few milliseconds of actual work. Here the model is one flat vector:
one exact cut over it, per-tensor counts from one cumulative sum, one gather of
the values, all bitmaps packed in one go and all delta gaps in another, so a
message costs a few dozen launches and three synchronisations, whatever the
number of tensors.

Covers float32 values (no quantize stage) with no pruning or global pruning of
all tensors (the paper's setting), any sparse format and container, with or
without error feedback; ondevice.encode handles everything else. The bytes are
the numpy path's (tests compare them, and both torch encoders, on CPU tensors).
"""

from __future__ import annotations

import numpy as np
import torch

from fedmpi.compress import sparse as sp
from fedmpi.compress import torchops as ops
from fedmpi.compress.prune import n_drop
from fedmpi.compress.quantize import Float32

FORCE = False  # tests set it to run this encoder on CPU tensors too


def applies(pipe, device: torch.device) -> bool:
    """Hot-path pipeline on a GPU. On the CPU the tensor-by-tensor encoder is faster (no
    launch or sync cost to save, and this one moves more bytes), so it stays there."""
    p = pipe.pruner
    hot = type(pipe.coder) is Float32 and (
        p is None or p.rate == 0 or (p.scope == "global" and p.tensors == "all"))
    return hot and (device.type == "cuda" or FORCE)


def _segments(sizes: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(start offsets, end offsets) of the tensors in the flat vector, as device int64."""
    ends = torch.tensor(np.cumsum(sizes, dtype=np.int64), device=device)
    starts = ends - torch.tensor(sizes, dtype=torch.int64, device=device)
    return starts, ends


_OWNERS: dict = {}


def _owners(sizes: tuple[int, ...], device) -> torch.Tensor:
    """Tensor index of every entry of the flat model (kept per model and device: the
    same model comes back every round)."""
    key = (sizes, str(device))
    if key not in _OWNERS:
        if len(_OWNERS) > 4:
            _OWNERS.clear()
        _OWNERS[key] = torch.repeat_interleave(
            torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device),
            output_size=sum(sizes))
    return _OWNERS[key]


def _segment_sum(cs: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Per-segment sums from an inclusive cumulative sum (with a leading 0)."""
    return cs[ends] - cs[starts]


def keep_all(pipe, flat: torch.Tensor) -> torch.Tensor:
    """The kept entries of the whole model: torchops.keep_mask without host round trips."""
    bits = flat.view(torch.int32)
    p = pipe.pruner
    if p is None or p.rate == 0:
        return bits != 0  # no pruning: everything that is not +0.0 is sent
    a = bits & ops.ABS
    m = n_drop(p.rate, a.numel())
    if m <= 0:
        return a > 0
    t = torch.kthvalue(a, m).values
    d = m - (a < t).sum()
    eq = a == t
    # t == 0: the cut is at zero, every zero goes (eq entries are the zeros): a > 0
    return (a > t) | (eq & (torch.cumsum(eq, 0, dtype=torch.int64) > d) & (t > 0))


def encode(pipe, names, shapes, flats: list[torch.Tensor]):
    """(index section, value section, table rows, nnz, reconstruction) for `flats`.

    Index and values are uint8 device tensors; the table rows are (layout, count).
    The reconstruction is one flat float32 device tensor (split by the caller).
    """
    device = flats[0].device
    sizes = [f.numel() for f in flats]
    flat = torch.cat(flats)
    n_all = flat.numel()
    keep = keep_all(pipe, flat)
    starts, ends = _segments(sizes, device)
    zero = torch.zeros(1, dtype=torch.int64, device=device)
    cs_keep = torch.cat([zero, torch.cumsum(keep, 0)])
    cs_nz = torch.cat([zero, torch.cumsum(flat != 0, 0)])
    finite = torch.isfinite(flat).all().to(torch.int64).expand(len(sizes))
    counts, nonzeros, ok = torch.stack([_segment_sum(cs_keep, starts, ends),
                                        _segment_sum(cs_nz, starts, ends),
                                        finite]).tolist()  # sync 1
    if not ok[0]:  # NaN or inf (the cut above is integer work: no harm done)
        ops.check_finite_inputs(pipe, names, flats)
    fmt = pipe.layout.format
    pruned = pipe.pruner is not None and pipe.pruner.rate > 0
    consider = [fmt != "dense" and ops.delta_considered(fmt, n, c)
                for n, c in zip(sizes, counts)]
    delta = [d and c > 0 for d, c in zip(consider, counts)]  # gaps needed (else largest 0)
    tid = _owners(tuple(sizes), device)
    idx = gaps = None
    bigs = [0] * len(sizes)
    if any(delta):
        is_delta = torch.tensor(delta, device=device)
        idx = torch.nonzero(keep & is_delta[tid]).reshape(-1)  # kept entries of those tensors
        owner = tid[idx]
        prev = torch.cat([zero - 1, idx[:-1]])
        first = torch.cat([torch.ones(1, dtype=torch.bool, device=device),
                           owner[1:] != owner[:-1]])
        prev = torch.where(first, starts[owner] - 1, prev)
        gaps = idx - prev - 1
        big = torch.zeros(len(sizes), dtype=torch.int64, device=device)
        big.scatter_reduce_(0, owner, gaps, reduce="amax")
        bigs = big.tolist()  # sync 2
    layouts, nnz = [], 0
    coder = pipe.coder
    for n, c, nz, dl, big in zip(sizes, counts, nonzeros, consider, bigs):
        if fmt == "dense":
            layouts.append(sp.DENSE)
            nnz += c if pruned else nz
            continue
        cost = {sp.DENSE: coder.nbytes(n), sp.BITMAP: (n + 7) // 8 + coder.nbytes(c)}
        layout = sp.BITMAP
        if dl:
            layout = sp.DELTA8 if big < 1 << 8 else sp.DELTA16 if big < 1 << 16 else sp.DELTA32
            cost[layout] = c * sp._GAP[layout].itemsize + coder.nbytes(c)
        if fmt == "auto":
            layout = min(cost, key=lambda k: (cost[k], k))
        elif fmt == "bitmap":
            layout = sp.BITMAP
        layouts.append(layout)
        nnz += c
    lay = torch.tensor(layouts, device=device)
    dense_t = lay == sp.DENSE
    source = torch.where(keep, flat, 0.0)  # sent values and reconstruction, bit for bit
    sent = keep | dense_t[tid]
    values = ops.as_bytes(source[sent])  # sync 3 (size of the gather)
    vcounts = [n if lt == sp.DENSE else c for n, c, lt in zip(sizes, counts, layouts)]
    ilens = [sp.index_nbytes(lt, n, c) for lt, n, c in zip(layouts, sizes, vcounts)]
    index = torch.empty(sum(ilens), dtype=torch.uint8, device=device)
    ioff = torch.tensor(np.concatenate([[0], np.cumsum(ilens)[:-1]]).astype(np.int64)
                        if ilens else np.zeros(0, np.int64), device=device)
    _bitmaps(index, ioff, keep, tid, starts, layouts, sizes, device)
    if gaps is not None:
        _gap_bytes(index, ioff, gaps, owner, layouts, device)
    return index, values, list(zip(layouts, vcounts)), nnz, source, n_all


def _bitmaps(index, ioff, keep, tid, starts, layouts, sizes, device) -> None:
    """Pack the bitmap of every BITMAP tensor into its place in the index section."""
    bm = [i for i, lt in enumerate(layouts) if lt == sp.BITMAP]
    if not bm:
        return
    nbytes = np.array([(sizes[i] + 7) // 8 for i in bm], dtype=np.int64)
    pstart = np.concatenate([[0], np.cumsum(8 * nbytes)[:-1]])  # padded bit offsets
    padded = torch.zeros(int(8 * nbytes.sum()), dtype=torch.bool, device=device)
    is_bm = torch.zeros(len(layouts), dtype=torch.bool, device=device)
    is_bm[bm] = True
    pbase = torch.zeros(len(layouts), dtype=torch.int64, device=device)
    pbase[bm] = torch.tensor(pstart, device=device)
    elems = torch.nonzero(is_bm[tid]).reshape(-1)
    owner = tid[elems]
    padded[pbase[owner] + elems - starts[owner]] = keep[elems]
    packed = ops.packbits(padded)
    local = torch.arange(packed.numel(), device=device)
    byte_owner = torch.repeat_interleave(torch.tensor(bm, device=device),
                                         torch.tensor(nbytes, device=device),
                                         output_size=packed.numel())
    first_byte = torch.zeros(len(layouts), dtype=torch.int64, device=device)
    first_byte[bm] = torch.tensor(pstart // 8, device=device)
    index[ioff[byte_owner] + local - first_byte[byte_owner]] = packed


def _gap_bytes(index, ioff, gaps, owner, layouts, device) -> None:
    """Write the gaps of every delta tensor, little-endian in its width, into place."""
    width = torch.tensor([sp._GAP[lt].itemsize if lt in sp._GAP else 0 for lt in layouts],
                         device=device)
    w = width[owner]
    sel = w > 0
    g, o, w = gaps[sel], owner[sel], w[sel]
    if g.numel() == 0:
        return
    # rank of each gap inside its tensor -> byte position = ioff + rank * width + byte
    first = torch.cat([torch.ones(1, dtype=torch.bool, device=device), o[1:] != o[:-1]])
    pos = torch.arange(g.numel(), device=device)
    start_pos = torch.cummax(torch.where(first, pos, 0), 0).values
    rank = pos - start_pos
    b = ops.le_bytes(g, 4).reshape(-1, 4)
    byte = torch.arange(4, device=device)
    mask = byte[None, :] < w[:, None]
    dst = ioff[o][:, None] + rank[:, None] * w[:, None] + byte[None, :]
    index[dst[mask]] = b[mask]
