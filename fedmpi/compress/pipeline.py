"""A pipeline built from config: the one place that fixes the order of the stages.

Config: an ordered list of one-key dicts, e.g. `[{prune: {rate: 0.9}}, {sparse: {}},
{zstd: {level: 3}}]`. Rules (a violation is a ConfigError naming the item):
each stage at most once, in the order prune, quantize, memory, sparse, zstd.
Without `sparse` every tensor is sent dense; without `zstd` the sections are
stored as they are; `[]` is plain dense float32.

encode: compensate (memory) -> prune -> place (sparse) -> quantize values ->
reconstruct -> keep residual (memory) -> pack sections (zstd).

Payload = container of three sections:
  meta:   u32 codec_id, u32 spec crc, u32 n_tensors, u32 0, then per tensor
          (u8 layout, 3 pad = 0, u64 count of values, f32 p0, f32 p1)
  index:  the position bytes of every tensor, in order
  values: the coded values of every tensor, in order (byte-shuffled by zstd)
The codec id and spec crc let a decoder refuse a payload made by another
pipeline or for another model instead of decoding garbage.

Decoding is strict, because the checksums only say that the bytes arrived as
sent, not that the sender was right: every field is checked against the model
spec and the pipeline (reserved and pad bytes 0, section item sizes, lengths
bounded by the spec before anything is allocated, layouts this pipeline's
sparse format produces, counts, parameters, no byte left over), and the only
exception it raises is WireFormatError. Only finite values are sent: encode
refuses NaN and inf (ValueError), decode refuses any value that is not finite.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedmpi.compress import sparse as sp
from fedmpi.compress.base import REGISTRY, Container, Pruner, Stage, ValueCoder, build
from fedmpi.compress.memory import ErrorFeedback, Memory
from fedmpi.compress.quantize import Float32
from fedmpi.errors import ConfigError
from fedmpi.wire import WireFormatError

ModelSpec = list[tuple[str, tuple[int, ...]]]
_PRELUDE = struct.Struct("<IIII")
TABLE = np.dtype([("layout", "u1"), ("pad", "V3"), ("count", "<u8"), ("p0", "<f4"),
                  ("p1", "<f4")])


def spec_of(tensors: Mapping[str, np.ndarray]) -> ModelSpec:
    return [(name, tuple(int(d) for d in np.shape(t))) for name, t in tensors.items()]


def spec_crc(spec: ModelSpec) -> int:
    return zlib.crc32(json.dumps([[n, list(s)] for n, s in spec]).encode())


@dataclass(frozen=True)
class Span:
    """One tensor of a received payload whose table row passed `Pipeline.read`: where
    its index and value bytes lie in their sections, and its two parameters."""

    name: str
    shape: tuple[int, ...]
    numel: int
    layout: int
    count: int
    p0: float
    p1: float
    ipos: int
    ilen: int
    vpos: int
    vlen: int


@dataclass
class Encoded:
    payload: np.ndarray  # uint8; frame with codec_id=pipeline.codec_id, n_tensors=len(tensors)
    nnz: int  # non-zero entries sent (kept by pruning; before quantization)
    numel: int
    dense_bytes: int  # numel * 4
    reconstructed: dict[str, np.ndarray]  # bit-identical to decode(payload)


def build_pipeline(stages: list[dict] | None, *, field: str = "compression.uplink") -> Pipeline:
    if stages is None:
        stages = []
    if not isinstance(stages, list):
        raise ConfigError(field, stages, "a list of stages such as [{prune: {rate: 0.5}}]")
    built: list[Stage] = []
    for i, item in enumerate(stages):
        where = f"{field}[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(where, item, "a one-key mapping {stage: {params}} with stage in "
                              + ", ".join(sorted(REGISTRY)))
        (name, params), = item.items()
        stage = build(name, params, field=where)
        if built and stage.rank <= built[-1].rank:
            order = ", ".join(sorted(REGISTRY, key=lambda k: REGISTRY[k].rank))
            raise ConfigError(where, name, f"each stage at most once, in the order {order}")
        built.append(stage)
    return Pipeline(built)


class Pipeline:
    def __init__(self, stages: list[Stage]):
        self.stages = list(stages)
        self.pruner: Pruner | None = next((s for s in stages if isinstance(s, Pruner)), None)
        self.coder: ValueCoder = next((s for s in stages if isinstance(s, ValueCoder)),
                                      Float32())
        self.layout: sp.Sparse = next((s for s in stages if isinstance(s, sp.Sparse)),
                                      sp.DENSE_ONLY)
        self.container: Container = next((s for s in stages if isinstance(s, Container)),
                                         Container())
        self.feedback = any(isinstance(s, ErrorFeedback) for s in stages)
        canonical = json.dumps([s.spec() for s in self.stages], sort_keys=True)
        self.codec_id: int = zlib.crc32(canonical.encode())
        self.name: str = "+".join(s.label() for s in self.stages) or "dense"
        self.lossy: bool = any(s.lossy for s in self.stages)

    def __repr__(self) -> str:
        return f"Pipeline({self.name}, codec_id={self.codec_id:#010x})"

    def new_memory(self) -> Memory | None:
        return Memory() if self.feedback else None

    # ------------------------------------------------------------------ encode

    def encode(self, tensors: Mapping[str, np.ndarray], *,
               memory: Memory | None = None) -> Encoded:
        if self.feedback and memory is None:
            raise ValueError(f"pipeline {self.name} has error feedback: pass "
                             "memory=pipeline.new_memory() (one per sender)")
        if memory is not None and not self.feedback:
            raise ValueError(f"pipeline {self.name} has no memory stage; pass memory=None")
        fast = _fast_path(self, tensors)
        if fast is not None:  # torch tensors (on their device) or the fused CPU codec
            return fast.encode(self, tensors, memory=memory)
        names = list(tensors)
        shapes = [tuple(np.shape(tensors[k])) for k in names]
        flats = [np.ascontiguousarray(tensors[k], dtype=np.float32).reshape(-1) for k in names]
        if memory is not None:
            flats = [memory.compensate(k, f) for k, f in zip(names, flats)]
        for name, flat in zip(names, flats):
            if not np.isfinite(flat).all():
                raise nonfinite_input(self, name)
        masks = self.pruner.masks(flats, shapes) if self.pruner else [None] * len(flats)

        table = np.zeros(len(names), dtype=TABLE)
        index, values, recon, nnz = [], [], {}, 0
        for i, (name, flat) in enumerate(zip(names, flats)):
            placed = self.layout.place(flat, masks[i], self.coder)
            codes, p0, p1 = self.coder.encode(placed.values)
            table[i] = (placed.layout, b"\0\0\0", placed.values.size, p0, p1)
            index.append(placed.index)
            values.append(codes)
            nnz += placed.nnz
            r = self._reconstruct(flat, placed, codes, p0, p1)
            if memory is not None:
                memory.update(name, shapes[i], flat, r)
            recon[name] = r.reshape(shapes[i])
        meta = _PRELUDE.pack(self.codec_id, spec_crc(list(zip(names, shapes))), len(names), 0)
        payload = self.container.pack([
            ([np.frombuffer(meta, np.uint8), table.view(np.uint8)], 1),
            (index, 1),
            (values, self.coder.itemsize)])
        numel = sum(f.size for f in flats)
        return Encoded(payload=payload, nnz=nnz, numel=numel, dense_bytes=4 * numel,
                       reconstructed=recon)

    def _reconstruct(self, flat, placed: sp.Placed, codes, p0, p1) -> np.ndarray:
        if self.coder.lossy:
            v = self.coder.decode(codes, placed.values.size, p0, p1)
            return sp.scatter(flat.size, placed.where, v)
        # lossless values: the same bits as the decoder's scatter, in one pass
        if placed.where is None:
            return placed.values.copy() if placed.values is flat else placed.values
        if placed.where.dtype == bool:
            return sp.masked(flat, placed.where)
        return sp.scatter(flat.size, placed.where, placed.values)

    # ------------------------------------------------------------------ decode

    def decode(self, payload, spec: ModelSpec, *, device=None) -> dict[str, np.ndarray]:
        """Payload -> finite float32 tensors in `spec` order; WireFormatError on anything
        malformed, and no other exception. With a torch `device` the tensors are decoded
        there (torch tensors)."""
        fast = _fast_path(self, None, device)
        if fast is not None:
            return fast.decode(self, payload, spec, **({"device": device} if device else {}))
        index, values, spans = self.read(payload, spec)
        out = {}
        for s in spans:
            try:
                where = sp.positions(s.layout, index[s.ipos: s.ipos + s.ilen], s.numel, s.count)
                v = self.coder.decode(values[s.vpos: s.vpos + s.vlen], s.count, s.p0, s.p1)
            except WireFormatError as exc:
                raise WireFormatError(f"{s.name}: {exc}") from None
            out[s.name] = sp.scatter(s.numel, where, v).reshape(s.shape)
        return out

    def read(self, payload, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray, list[Span]]:
        """(index section, value section, one Span per tensor): every decode check that
        needs no pass over the index or value bytes.

        Why one function: the numpy decoder above, the fused and the on-device ones
        all start here, so they refuse the same messages; what is left to each is the
        bulk work and the few rules on the data itself, which they check through the
        same functions (sparse.check_marked / check_gaps, the coder's finite and code
        rules).
        """
        buf = np.frombuffer(payload, dtype=np.uint8) if not isinstance(payload, np.ndarray) \
            else payload.reshape(-1).view(np.uint8)
        n = len(spec)
        numels = [math.prod(s) for _, s in spec]
        meta_len = _PRELUDE.size + n * TABLE.itemsize
        # Largest raw section sizes this model can need: a delta32 index (4 bytes per
        # entry) is the widest, and at most every entry has a value.
        meta, index, values = self.container.unpack(buf, [
            (1, meta_len), (1, 4 * sum(numels)),
            (self.coder.itemsize, sum(self.coder.nbytes(k) for k in numels))])
        if meta.nbytes != meta_len:
            raise WireFormatError(f"meta section of {meta.nbytes} bytes does not fit "
                                  f"{n} tensors ({meta_len} bytes)")
        codec, crc, count, reserved = _PRELUDE.unpack_from(meta, 0)
        if codec != self.codec_id:
            raise WireFormatError(f"payload made by codec {codec:#010x}, this pipeline is "
                                  f"{self.codec_id:#010x} ({self.name})")
        if count != n or crc != spec_crc(spec):
            raise WireFormatError(f"payload is for another model ({count} tensors, "
                                  f"spec crc {crc:#010x}; expected {n}, {spec_crc(spec):#010x})")
        if reserved:
            raise WireFormatError(f"reserved meta word is {reserved:#x}, expected 0")
        table = np.frombuffer(meta[_PRELUDE.size:].tobytes(), dtype=TABLE)
        layouts = self.layout.layouts()
        spans, ipos, vpos = [], 0, 0
        for (name, shape), numel, row in zip(spec, numels, table):
            layout, k = int(row["layout"]), int(row["count"])
            if layout not in layouts:
                raise WireFormatError(f"{name}: layout {sp.NAMES.get(layout, layout)} is not "
                                      f"one that {self.layout.label()} produces")
            if row["pad"].tobytes() != b"\0\0\0":
                raise WireFormatError(f"{name}: table padding bytes "
                                      f"{row['pad'].tobytes().hex()} are not zero")
            if k > numel:
                raise WireFormatError(f"{name}: {k} values for {numel} entries")
            ilen, vlen = sp.index_nbytes(layout, numel, k), self.coder.nbytes(k)
            if ipos + ilen > index.nbytes or vpos + vlen > values.nbytes:
                raise WireFormatError(f"{name}: sections end before this tensor's data")
            span = Span(name, tuple(shape), numel, layout, k, float(row["p0"]),
                        float(row["p1"]), ipos, ilen, vpos, vlen)
            try:
                sp.check_header(layout, index[ipos: ipos + ilen], numel, k)
                self.coder.check_side(values[vpos: vpos + vlen], k, span.p0, span.p1)
            except WireFormatError as exc:
                raise WireFormatError(f"{name}: {exc}") from None
            spans.append(span)
            ipos, vpos = ipos + ilen, vpos + vlen
        if ipos != index.nbytes or vpos != values.nbytes:
            raise WireFormatError(f"{index.nbytes - ipos} index and {values.nbytes - vpos} "
                                  "value bytes left over after the last tensor")
        return index, values, spans


def nonfinite_input(pipe: Pipeline, name: str) -> ValueError:
    """What every encoder (numpy, fused, on-device) raises for a tensor holding NaN or
    inf, after error-feedback compensation: such values are never sent."""
    return ValueError(f"tensor {name!r} holds NaN or inf values, which are never sent "
                      f"(pipeline {pipe.name}; the decoder refuses them)")


def _fast_path(pipe: Pipeline, tensors, device=None):
    """The module that encodes/decodes faster with the same bytes, or None (numpy here).

    torch tensors (or a torch `device` to decode to) go to `ondevice`; numpy ones
    to the fused numba codec when it supports the pipeline.
    """
    if device is not None or (tensors and type(next(iter(tensors.values()))).__module__
                              == "torch"):
        from fedmpi.compress import ondevice

        return ondevice
    from fedmpi.compress import fused

    return fused if fused.applies(pipe) else None
