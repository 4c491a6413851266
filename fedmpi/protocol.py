"""What each received message must be: strict readers with the receiver's context.

A checksum says that the bytes arrived as they were sent, not that the sender was
right (a bug, a version mismatch or a hostile peer can send a well-framed message
with a valid CRC). Each `read_*` function here takes one received buffer, checks
every header field the receiver can know (kind, round, client, codec id, tensor
count) and every payload field, and returns plain values. The only exception that
leaves a reader is `WireFormatError`, whose message names the receiving rank, the
round and the client where they are known. The payload decoders check explicitly;
the readers also turn any other exception a decoder might raise into a
WireFormatError with the same context (a last resort: the fuzz tests call the
decoders without it).

The control payloads are also written here, so that each format is defined once:

- ASSIGN: int32 little-endian flags (only SAVE_STATE is defined), then the ids of the
  clients to run this round, strictly increasing, each hosted by the receiver, then
  per client (in that order) its settings as float32, one per name of the strategy's
  `client_settings` (both ends know the names from the config; none: no bytes), each
  finite;
- MEMORY (start-up only, server -> worker, client -1, round 0): named float32 arrays:
  u32 count, then per array u16 name length, the UTF-8 name, u8 ndim, u32 dims; then
  every array's values in that order (see `state_payload`). Two uses, never both in
  one start-up: the run identity of a fresh run whose uplink compressor keeps client
  state (one array `run`, the 32 bytes of the sha256 as values 0..255; the worker
  names its client-state files with it), and on --resume with
  `downlink_target: update` the rank's replica of the global model. Client state
  itself never travels (`fedmpi.results.clientstate`);
- STOP: the run status as ASCII, one of STATUSES;
- hello (kind REPORT, round 0, on TAG_HELLO): a UTF-8 JSON object with exactly
  the string keys "host" and "device" (printable, at most MAX_NAME characters).

Pure (no MPI, no torch), so every rule is unit-tested with crafted buffers.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import zstandard

from fedmpi import accounting, wire
from fedmpi.wire import Kind, WireFormatError

SAVE_STATE = 1  # ASSIGN flag: write every hosted client's compressor state to the rank's
#                 client-state file at the end of this round (before its REPORT)
FLAGS = SAVE_STATE  # every defined ASSIGN flag bit
STATUSES = ("completed", "interrupted")  # what a STOP can carry
HELLO_KEYS = ("host", "device")
MAX_NAME = 255  # characters of a hello field (a host name has at most 253)
MAX_HELLO_BYTES = 4096

# What a decoder bug could raise on a malformed payload (the last resort of `context`).
_DECODER_ERRORS = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
                   ZeroDivisionError, RecursionError, MemoryError, struct.error,
                   zstandard.ZstdError)


@contextmanager
def context(where: str) -> Iterator[None]:
    """Prefix every error of the block with `where`; anything else becomes a WireFormatError."""
    try:
        yield
    except WireFormatError as exc:
        raise WireFormatError(f"{where}: {exc}") from None
    except _DECODER_ERRORS as exc:
        raise WireFormatError(f"{where}: undecodable message "
                              f"({type(exc).__name__}: {exc})") from exc


def claimed_client(buf) -> str:
    """The client id a message claims, when at least its header is intact."""
    try:
        return str(wire.parse_header(buf).client)
    except WireFormatError:
        return "unknown: header damaged"


# ---------------------------------------------------------------- control payloads


def assign_payload(flags: int, clients: list[int],
                   settings: Sequence[Sequence[float]] = ()) -> bytes:
    """flags, client ids, then each client's settings (float32, in client order)."""
    head = np.asarray([flags, *clients], dtype="<i4").tobytes()
    if not settings:
        return head
    if len(settings) != len(clients) or len({len(v) for v in settings}) > 1:
        raise ValueError(f"ASSIGN settings: {len(settings)} rows of unequal or wrong length "
                         f"for {len(clients)} clients")
    values = np.asarray(settings, dtype="<f4").reshape(-1)
    if not np.isfinite(values).all():
        raise ValueError(f"ASSIGN settings must be finite, got {values.tolist()}")
    return head + values.tobytes()


# ---------------------------------------------------------------- compressor state (MEMORY)

STATE_CODEC = zlib.crc32(b"fedmpi state v1")  # codec id of MEMORY messages
RUN_BYTES = 32  # a run identity (sha256) in a start-up MEMORY
MAX_STATE_ARRAYS = 1 << 16
MAX_NDIM = 8
_STATE_HEAD = struct.Struct("<I")


def state_payload(state: Mapping[str, np.ndarray]) -> tuple[bytes, int]:
    """(payload, entries) of a compressor's state: named float32 arrays, any shapes."""
    if len(state) > MAX_STATE_ARRAYS:
        raise ValueError(f"a compressor state of {len(state)} arrays (at most "
                         f"{MAX_STATE_ARRAYS} travel in a MEMORY message)")
    parts, values, numel = [_STATE_HEAD.pack(len(state))], [], 0
    for name, value in state.items():
        arr = np.ascontiguousarray(_host(value), dtype="<f4")
        raw = name.encode("utf-8")
        if not name or not name.isprintable() or len(raw) > 0xFFFF or arr.ndim > MAX_NDIM:
            raise ValueError(f"compressor state array {name[:80]!r} of shape {arr.shape}: "
                             f"names are printable, 1..65535 bytes, at most {MAX_NDIM} dims")
        if not np.isfinite(arr).all():
            raise ValueError(f"compressor state array {name!r} holds NaN or inf values")
        parts.append(struct.pack(f"<H{len(raw)}sB{arr.ndim}I", len(raw), raw, arr.ndim,
                                 *arr.shape))
        values.append(arr.tobytes())
        numel += arr.size
    return b"".join(parts + values), numel


def _state(payload) -> dict[str, np.ndarray]:
    raw = bytes(payload)
    if len(raw) < _STATE_HEAD.size:
        raise WireFormatError(f"state payload of {len(raw)} bytes (u32 count first)")
    (count,), pos = _STATE_HEAD.unpack_from(raw), _STATE_HEAD.size
    if count > MAX_STATE_ARRAYS:
        raise WireFormatError(f"state declares {count} arrays (at most {MAX_STATE_ARRAYS})")
    shapes = []
    for i in range(count):
        if pos + 2 > len(raw):
            raise WireFormatError(f"state array {i}: truncated name")
        (n,), pos = struct.unpack_from("<H", raw, pos), pos + 2
        if pos + n + 1 > len(raw):
            raise WireFormatError(f"state array {i}: truncated name")
        try:
            name = raw[pos:pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise WireFormatError(f"state array {i}: name is not UTF-8") from None
        if not name or not name.isprintable() or any(name == s for s, _ in shapes):
            raise WireFormatError(f"state array {i}: name {name[:80]!r} is empty, not "
                                  "printable or repeated")
        ndim, pos = raw[pos + n], pos + n + 1
        if ndim > MAX_NDIM or pos + 4 * ndim > len(raw):
            raise WireFormatError(f"state array {name!r}: {ndim} dimensions "
                                  f"(at most {MAX_NDIM}, within the payload)")
        shape = struct.unpack_from(f"<{ndim}I", raw, pos)
        pos += 4 * ndim
        shapes.append((name, shape))
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in shapes]
    if 4 * sum(sizes) != len(raw) - pos:
        raise WireFormatError(f"state arrays hold {sum(sizes)} float32 values, the payload "
                              f"has {len(raw) - pos} bytes for them")
    values = np.frombuffer(raw, dtype="<f4", offset=pos)
    if not np.isfinite(values).all():
        raise WireFormatError("state holds NaN or inf values")
    out, at = {}, 0
    for (name, shape), size in zip(shapes, sizes):
        out[name] = values[at:at + size].reshape(shape).astype(np.float32)
        at += size
    return out


def _host(value) -> np.ndarray:
    """numpy of a numpy array or a torch tensor on any device."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def stop_payload(status: str) -> bytes:
    if status not in STATUSES:
        raise ValueError(f"STOP status {status!r} is not one of {', '.join(STATUSES)}")
    return status.encode("ascii")


def _printable(text: str) -> str:
    """What a hello field may hold (the sender cleans its own, so a valid one is never refused)."""
    return "".join(ch for ch in text if ch.isprintable())[:MAX_NAME]


def hello_payload(host: str, device: str) -> bytes:
    return json.dumps({"host": _printable(host), "device": _printable(device)}).encode()


@dataclass(frozen=True)
class Control:
    """An ASSIGN (flags, clients, their settings) or a STOP (status) as a worker received it."""

    kind: Kind
    round: int
    flags: int = 0
    clients: tuple[int, ...] = ()
    status: str = ""
    settings: tuple[dict[str, float], ...] = ()  # per client, by setting name


def _assign(payload, *, hosted: Collection[int], feedback: bool, names: Sequence[str] = ()
            ) -> tuple[int, tuple[int, ...], tuple[dict[str, float], ...]]:
    k = len(names)
    words, odd = divmod(len(payload), 4)
    if odd or not words or (words - 1) % (1 + k):
        raise WireFormatError(f"ASSIGN payload of {len(payload)} bytes (int32 flags, then "
                              f"int32 client ids, then {k} float32 setting(s) per client)")
    n = (words - 1) // (1 + k)
    raw = bytes(payload)
    flags, *clients = np.frombuffer(raw, dtype="<i4", count=1 + n).tolist()
    values = np.frombuffer(raw, dtype="<f4", offset=4 * (1 + n)).reshape(n, k)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise WireFormatError(f"ASSIGN settings of client {clients[i]} are "
                              f"{values[i].tolist()}: every value must be finite "
                              f"({', '.join(names)})")
    if flags & ~FLAGS:
        raise WireFormatError(f"ASSIGN flags {flags:#x} have unknown bits "
                              f"(defined: SAVE_STATE={SAVE_STATE})")
    if flags & SAVE_STATE and not feedback:
        raise WireFormatError("ASSIGN asks to save client compressor states, but the uplink "
                              "compressor keeps no state")
    if any(b <= a for a, b in zip(clients, clients[1:])):
        raise WireFormatError(f"assigned clients {clients} are not strictly increasing "
                              "(duplicated or out of order)")
    bad = [c for c in clients if c not in hosted]
    if bad:
        raise WireFormatError(f"assigned clients {bad} it does not host")
    settings = tuple({name: float(v) for name, v in zip(names, row)} for row in values.tolist())
    return flags, tuple(clients), settings


def _status(payload) -> str:
    raw = bytes(payload)
    for status in STATUSES:
        if raw == status.encode("ascii"):
            return status
    raise WireFormatError(f"STOP status {raw[:64]!r} is not one of {', '.join(STATUSES)}")


_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise WireFormatError(f"hello repeats a key: {keys}")
    return dict(pairs)


def _hello(payload) -> dict[str, str]:
    if len(payload) > MAX_HELLO_BYTES:
        raise WireFormatError(f"hello of {len(payload)} bytes (at most {MAX_HELLO_BYTES})")
    try:
        info = json.loads(bytes(payload).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireFormatError(f"hello is not UTF-8 JSON: {exc}") from None
    if not isinstance(info, dict):
        raise WireFormatError(f"hello is a JSON {_JSON_TYPES.get(type(info), 'value')}, "
                              f"expected an object with the keys {', '.join(HELLO_KEYS)}")
    if sorted(info) != sorted(HELLO_KEYS):
        raise WireFormatError(f"hello has the keys {sorted(info)[:8]}, expected exactly "
                              f"{', '.join(HELLO_KEYS)}")
    for key in HELLO_KEYS:
        value = info[key]
        if not isinstance(value, str) or len(value) > MAX_NAME or not value.isprintable():
            shown = repr(value)[:80]
            raise WireFormatError(f"hello field {key!r} is {shown}: expected a printable "
                                  f"string of at most {MAX_NAME} characters")
    return {key: info[key] for key in HELLO_KEYS}


# ---------------------------------------------------------------- server side (rank 0)


def _server(what: str, rnd: int | str, src: int, client: object = None) -> str:
    who = f" (client {client})" if client is not None else ""
    return f"server (rank 0), round {rnd}, {what} from rank {src}{who}"


def read_hello(buf, *, src: int) -> dict[str, str]:
    """A worker's start-up hello: {"host": ..., "device": ...}."""
    with context(_server("hello", "-1 (start-up)", src)):
        _, payload = wire.parse(buf, expect_kind=Kind.REPORT, round=0, client=-1, codec_id=0,
                                n_tensors=0)
        return _hello(payload)


def read_update(buf, *, src: int, round: int, expected: Collection[int],
                hosted: Collection[int], codec, spec, ctx_of: Callable[[int], object]
                ) -> tuple[int, dict, float]:
    """An UPDATE of this round from rank `src`: (client, tensors, decode seconds).

    `ctx_of(client)` is the decoder's context of that client's message (the client is
    known once the header is read: updates arrive in any order)."""
    with context(_server("update", round, src, claimed_client(buf))):
        h, payload = wire.parse(buf, expect_kind=Kind.UPDATE, round=round, client=expected,
                                codec_id=codec.codec_id, n_tensors=len(spec))
        if h.client not in hosted:
            raise WireFormatError(f"client {h.client} is not hosted by rank {src}")
        t0 = time.perf_counter()
        tensors = codec.decode(payload, spec, ctx_of(h.client))
        return h.client, tensors, time.perf_counter() - t0


def read_late_update(buf, *, src: int, round: int, expected: Collection[int],
                     hosted: Collection[int], codec, spec) -> int:
    """An UPDATE of this round that came after the round deadline: its client, from a
    fully checked header (the payload is not decoded: the update is dropped, but its
    sender and its bytes must be the ones owed)."""
    with context(_server("late update", round, src, claimed_client(buf))):
        h, _ = wire.parse(buf, expect_kind=Kind.UPDATE, round=round, client=expected,
                          codec_id=codec.codec_id, n_tensors=len(spec))
        if h.client not in hosted:
            raise WireFormatError(f"client {h.client} is not hosted by rank {src}")
        return h.client


def read_report(buf, *, src: int, round: int, rules: accounting.ReportRules) -> np.ndarray:
    """A worker's REPORT (its message log) for `round`, every row checked."""
    with context(_server("report", round, src)):
        _, payload = wire.parse(buf, expect_kind=Kind.REPORT, round=round, client=-1,
                                codec_id=0, n_tensors=0)
        return accounting.parse_report(payload, round=round, rules=rules)


def _counted(h: wire.Header, state: dict) -> dict:
    if h.n_tensors != len(state):
        raise WireFormatError(f"MEMORY declares {h.n_tensors} arrays, its payload has "
                              f"{len(state)}")
    return state


# ---------------------------------------------------------------- worker side (ranks 1..N)


def read_control(buf, *, rank: int, hosted: Collection[int], rounds: int, last: int | None,
                 feedback: bool, settings: Sequence[str] = ()) -> Control:
    """ASSIGN or STOP. Rounds go up by one from the first ASSIGN (which may be any round
    below `rounds`: a resumed run starts late); STOP comes after the last ASSIGN."""
    with context(f"rank {rank}, control message"):
        h, payload = wire.parse(buf, client=-1, codec_id=0, n_tensors=0)
        if h.kind not in (Kind.ASSIGN, Kind.STOP):
            raise WireFormatError(f"expected ASSIGN or STOP, got {h.kind.name}")
        top = rounds - 1 if h.kind == Kind.ASSIGN else rounds
        if not 0 <= h.round <= top or (last is not None and h.round != last + 1):
            after = "" if last is None else f", after round {last}: {last + 1}"
            raise WireFormatError(f"{h.kind.name} for round {h.round}; expected 0..{top}{after}")
    with context(f"rank {rank}, round {h.round}"):
        if h.kind == Kind.STOP:
            return Control(Kind.STOP, h.round, status=_status(payload))
        flags, clients, values = _assign(payload, hosted=hosted, feedback=feedback,
                                         names=settings)
        return Control(Kind.ASSIGN, h.round, flags=flags, clients=clients, settings=values)


def read_model(buf, *, rank: int, round: int, client: int, codec, spec, ctx,
               same_as=None) -> tuple[dict | None, float]:
    """The MODEL of `round` for `client`: (tensors, decode seconds).

    `same_as`: the payload of a MODEL of this round already decoded (a rank with a
    replica decodes one per round): this one must carry the very same bytes, and is
    not decoded again (tensors None)."""
    with context(f"rank {rank}, round {round} client {client}"):
        _, payload = wire.parse(buf, expect_kind=Kind.MODEL, round=round, client=client,
                                codec_id=codec.codec_id, n_tensors=len(spec))
        if same_as is not None:
            if bytes(payload) != bytes(same_as):
                raise WireFormatError("MODEL payload differs from the round's broadcast")
            return None, 0.0
        t0 = time.perf_counter()
        tensors = codec.decode(payload, spec, ctx)
        return tensors, time.perf_counter() - t0


def identity_payload(run: str) -> dict[str, np.ndarray]:
    """The start-up MEMORY arrays that carry a run identity (a sha256 in hex)."""
    try:
        raw = bytes.fromhex(run)
    except ValueError:
        raw = b""
    if len(raw) != RUN_BYTES:
        raise ValueError(f"run identity {run[:80]!r}: expected {2 * RUN_BYTES} hex digits")
    return {"run": np.frombuffer(raw, dtype=np.uint8).astype(np.float32)}


def read_identity(buf, *, rank: int) -> str:
    """At start-up of a fresh run: the run identity (hex) for the rank's client-state files."""
    with context(f"rank {rank}, start-up (round -1), run identity"):
        h, payload = wire.parse(buf, expect_kind=Kind.MEMORY, round=0, client=-1,
                                codec_id=STATE_CODEC)
        state = _counted(h, _state(payload))
        values = state.get("run")
        if list(state) != ["run"] or values.shape != (RUN_BYTES,):
            got = [(name, tuple(v.shape)) for name, v in state.items()][:4]
            raise WireFormatError(f"arrays {got}: expected exactly 'run' of shape "
                                  f"({RUN_BYTES},)")
        if not ((values >= 0) & (values <= 255) & (values == np.round(values))).all():
            raise WireFormatError("run identity values are not bytes (integers 0..255)")
        return values.astype(np.uint8).tobytes().hex()


def read_restore(buf, *, rank: int, spec) -> dict:
    """On --resume with downlink_target update: the rank's replica of the global model
    (client -1, round 0), whose arrays must be the model's (`spec`: names, order and
    shapes)."""
    with context(f"rank {rank}, resume (round -1), replica of the global model"):
        h, payload = wire.parse(buf, expect_kind=Kind.MEMORY, round=0, client=-1,
                                codec_id=STATE_CODEC)
        state = _counted(h, _state(payload))
        got = [(name, tuple(v.shape)) for name, v in state.items()]
        if got != [(name, tuple(shape)) for name, shape in spec]:
            raise WireFormatError(f"arrays {got[:4]}... are not the model's tensors "
                                  f"{list(spec)[:4]}...")
        return state
