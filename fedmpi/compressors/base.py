"""The Compressor interface: what every compression method implements.

A compressor turns the float32 tensors of one message (a client's update, the
server's broadcast) into a payload and back:

    enc = comp.encode(tensors, ctx)          # Encoded: payload + what accounting needs
    out = comp.decode(enc.payload, spec, ctx)  # == enc.reconstructed, bit for bit

Why a context: methods need more than the tensors. Shared-seed random-k sends no
indices because the receiver draws the same ones; QSGD rounds stochastically;
PowerSGD warm-starts from last round's factor; error feedback keeps a residual.
`Context` carries who/when/which link, a generator that is a pure function of
(seed, round, client, link), and the per-(link, owner) state dict.

Why the state lives in the context and not in the compressor: one compressor
object serves every client a rank hosts (and the server's broadcast), while the
residual or warm start belongs to one (link, owner). The caller owns one plain
`dict[str, np.ndarray]` per (link, owner), passes it in `ctx.state`, and
checkpoints it as it is; `encode` reads and updates it in place. Decoders are
stateless (every method here sends what the receiver needs), so `decode` gets a
context with an empty state.

Decoding is strict: a payload of another method, parameter set or model is
refused (codec id and spec crc in every payload), every field is checked, and
the only exception is `WireFormatError` (see `read_header`, `Sections`).

Adding a method = one file with a frozen dataclass subclass decorated with
`@register("<key>")`, one import line in `compressors/__init__.py`, and its test.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedmpi.compress.base import Container
from fedmpi.compress.pipeline import Encoded, ModelSpec, spec_crc
from fedmpi.errors import ConfigError
from fedmpi.params import instantiate, registrar
from fedmpi.wire import WireFormatError

__all__ = ["Context", "Compressor", "Encoded", "Fold", "REGISTRY", "Sections", "register",
           "build_compressor", "read_header", "write_header", "check_finite"]

LINKS = ("up", "down")
REGISTRY: dict[str, type["Compressor"]] = {}


register = registrar(REGISTRY, "compressor")


@dataclass
class Context:
    """Everything a compressor may know about one message besides its tensors."""

    seed: int
    round: int
    client: int  # the owner: a client id (uplink), or -1 (the server's broadcast)
    link: str  # "up" | "down"
    state: dict[str, np.ndarray] = field(default_factory=dict)  # per-(link, owner); encode only
    settings: Mapping[str, float] = field(default_factory=dict)  # per-client, from ASSIGN

    def rng(self, *salt: int) -> np.random.Generator:
        """A generator that is a pure function of (seed, round, client, link, salt):
        the sender and the receiver draw the same numbers, whatever the rank layout."""
        return np.random.default_rng([self.seed, self.round, self.client & 0xFFFFFFFF,
                                      LINKS.index(self.link), *salt])

    def for_decode(self) -> "Context":
        """The receiver's context of the same message (no state)."""
        return Context(self.seed, self.round, self.client, self.link, {}, self.settings)


class Fold(ABC):
    """Streaming aggregation of decoded client tensors (one per round).

    The default is the sample-weighted mean (`fedmpi.aggregate.StreamingFedAvg`); a
    compressor whose method aggregates in its own domain (signSGD's majority vote)
    returns its own from `Compressor.fold`.
    """

    @abstractmethod
    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None: ...

    @abstractmethod
    def result(self) -> dict[str, np.ndarray]:
        """As StreamingFedAvg.result(): reference + the aggregate update when the fold was
        made with a reference (clients send updates), else the aggregate weights."""


@dataclass(frozen=True, kw_only=True)
class Compressor(ABC):
    """One compression method with its parameters (the dataclass fields)."""

    key: ClassVar[str] = "?"
    paper: ClassVar[str] = ""  # the method's paper, one line: "Author et al. Year, Title"
    choices: ClassVar[dict[str, tuple]] = {}  # allowed values of string parameters
    stateful: ClassVar[bool] = False  # keeps per-(link, owner) state in ctx.state

    def check(self) -> None:
        """Raise fedmpi.params.BadParam for a value out of range (types are checked)."""

    @property
    def lossy(self) -> bool:
        return True

    @property
    def name(self) -> str:
        return self.key

    def spec(self) -> dict:
        """Canonical form (every parameter, defaults included), hashed into `codec_id`."""
        return {self.key: dataclasses.asdict(self)}

    @property
    def codec_id(self) -> int:
        return zlib.crc32(json.dumps([self.spec()], sort_keys=True).encode())

    @abstractmethod
    def encode(self, tensors: Mapping[str, np.ndarray], ctx: Context) -> Encoded:
        """float32 tensors (numpy) -> Encoded. May read and update `ctx.state`.

        Refuses NaN or inf inputs with ValueError (see `check_finite`).
        """

    @abstractmethod
    def decode(self, payload, spec: ModelSpec, ctx: Context) -> dict[str, np.ndarray]:
        """Payload -> finite float32 tensors in `spec` order; WireFormatError on anything
        malformed and no other exception."""

    def fold(self, reference: Mapping[str, np.ndarray] | None) -> Fold | None:
        """A compressed-domain aggregation, or None for the strategy's weighted mean."""
        return None

    def new_state(self) -> dict[str, np.ndarray] | None:
        """An empty per-(link, owner) state, or None when the method keeps none."""
        return {} if self.stateful else None


def build_compressor(raw: object, *, field: str):
    """A compressor from config: a list of stages (the stage pipeline, e.g.
    `[{prune: {rate: 0.9}}, {sparse: {}}, {zstd: {}}]`) or a one-key mapping naming a
    registered method (`{topk: {fraction: 0.01}}`)."""
    from fedmpi.compressors.stages import StagePipeline  # the adapter imports this module

    if raw is None or isinstance(raw, list):
        return StagePipeline.from_config(raw, field=field)
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(field, raw, "a list of stages, or a one-key mapping {method: {params}} "
                          f"with method in {', '.join(sorted(REGISTRY))}")
    (name, params), = raw.items()
    if name not in REGISTRY:
        raise ConfigError(field, name, f"one of the methods {', '.join(sorted(REGISTRY))} "
                          "(or a list of stages)")
    return instantiate(REGISTRY[name], params, f"{field}.{name}")


# ----------------------------------------------------------------------- payload helpers

_HEAD = struct.Struct("<III")  # codec id, spec crc, reserved (0)


def write_header(comp: Compressor, spec: ModelSpec) -> np.ndarray:
    """The 12 bytes every method payload starts with: who made it, for which model."""
    return np.frombuffer(_HEAD.pack(comp.codec_id, spec_crc(spec), 0), dtype=np.uint8)


def read_header(comp: Compressor, payload, spec: ModelSpec) -> np.ndarray:
    """Check the 12-byte header; returns the rest of the payload (uint8)."""
    buf = as_uint8(payload)
    if buf.nbytes < _HEAD.size:
        raise WireFormatError(f"payload of {buf.nbytes} bytes is shorter than its "
                              f"{_HEAD.size}-byte header")
    codec, crc, reserved = _HEAD.unpack_from(buf, 0)
    if codec != comp.codec_id:
        raise WireFormatError(f"payload made by codec {codec:#010x}, this is "
                              f"{comp.codec_id:#010x} ({comp.name})")
    if crc != spec_crc(spec):
        raise WireFormatError(f"payload is for another model (spec crc {crc:#010x}, "
                              f"expected {spec_crc(spec):#010x})")
    if reserved:
        raise WireFormatError(f"reserved header word is {reserved:#x}, expected 0")
    return buf[_HEAD.size:]


def as_uint8(payload) -> np.ndarray:
    if isinstance(payload, np.ndarray):
        return payload.reshape(-1).view(np.uint8)
    return np.frombuffer(payload, dtype=np.uint8)


class Sections:
    """Byte sections in a payload, bounded by the model before anything is allocated.

    `pack(header, [(parts, itemsize), ...])` and `unpack(rest, [(itemsize, most), ...])`
    wrap a `fedmpi.compress.base.Container` (plain, or zstd when given one), which
    refuses a declared length above `most`: no field of a message can make the
    receiver allocate more than the model needs.
    """

    def __init__(self, container: Container | None = None):
        self.container = container or Container()

    def pack(self, comp: Compressor, spec: ModelSpec,
             sections: list[tuple[list[np.ndarray], int]]) -> np.ndarray:
        body = self.container.pack([([as_uint8(np.ascontiguousarray(p)) for p in parts], size)
                                    for parts, size in sections])
        head = write_header(comp, spec)
        out = np.empty(head.nbytes + body.nbytes, dtype=np.uint8)
        out[:head.nbytes] = head
        out[head.nbytes:] = body
        return out

    def unpack(self, comp: Compressor, payload, spec: ModelSpec,
               sections: list[tuple[int, int]]) -> list[np.ndarray]:
        return self.container.unpack(read_header(comp, payload, spec), sections)


def check_finite(comp: Compressor, tensors: Mapping[str, np.ndarray]) -> None:
    """What every encoder raises for NaN or inf: such values are never sent."""
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            raise ValueError(f"tensor {name!r} holds NaN or inf values, which are never sent "
                             f"({comp.name}; the decoder refuses them)")


def numel_of(spec: ModelSpec) -> list[int]:
    return [int(np.prod(shape, dtype=np.int64)) for _, shape in spec]


def encoded(payload: np.ndarray, recon: dict[str, np.ndarray], nnz: int) -> Encoded:
    """Encoded for a method payload: `nnz` = entries that carry information."""
    numel = sum(int(v.size) for v in recon.values())
    return Encoded(payload=payload, nnz=int(nnz), numel=numel, dense_bytes=4 * numel,
                   reconstructed=recon)
