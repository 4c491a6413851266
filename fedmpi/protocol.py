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

- ASSIGN: int32 little-endian flags (only SNAPSHOT is defined), then the ids of the
  clients to run this round, strictly increasing, each hosted by the receiver;
- STOP: the run status as ASCII, one of STATUSES;
- hello (kind REPORT, round 0, on TAG_HELLO): a UTF-8 JSON object with exactly
  the string keys "host" and "device" (printable, at most MAX_NAME characters).

Pure (no MPI, no torch), so every rule is unit-tested with crafted buffers.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import zstandard

from fedmpi import accounting, wire
from fedmpi.wire import Kind, WireFormatError

SNAPSHOT = 1  # ASSIGN flag: send every hosted client's error-feedback residual this round
FLAGS = SNAPSHOT  # every defined ASSIGN flag bit
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


def assign_payload(flags: int, clients: list[int]) -> bytes:
    return np.asarray([flags, *clients], dtype="<i4").tobytes()


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
    """An ASSIGN (flags, clients) or a STOP (status) as a worker received it."""

    kind: Kind
    round: int
    flags: int = 0
    clients: tuple[int, ...] = ()
    status: str = ""


def _assign(payload, *, hosted: Collection[int], feedback: bool) -> tuple[int, tuple[int, ...]]:
    if len(payload) % 4 or not len(payload):
        raise WireFormatError(f"ASSIGN payload of {len(payload)} bytes (int32 flags, then "
                              "int32 client ids)")
    flags, *clients = np.frombuffer(bytes(payload), dtype="<i4").tolist()
    if flags & ~FLAGS:
        raise WireFormatError(f"ASSIGN flags {flags:#x} have unknown bits "
                              f"(defined: SNAPSHOT={SNAPSHOT})")
    if flags & SNAPSHOT and not feedback:
        raise WireFormatError("ASSIGN asks for error-feedback snapshots, but the uplink "
                              "pipeline has no memory stage")
    if any(b <= a for a, b in zip(clients, clients[1:])):
        raise WireFormatError(f"assigned clients {clients} are not strictly increasing "
                              "(duplicated or out of order)")
    bad = [c for c in clients if c not in hosted]
    if bad:
        raise WireFormatError(f"assigned clients {bad} it does not host")
    return flags, tuple(clients)


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
                hosted: Collection[int], pipeline, spec, device=None) -> tuple[int, dict, float]:
    """An UPDATE of this round from rank `src`: (client, tensors, decode seconds)."""
    with context(_server("update", round, src, claimed_client(buf))):
        h, payload = wire.parse(buf, expect_kind=Kind.UPDATE, round=round, client=expected,
                                codec_id=pipeline.codec_id, n_tensors=len(spec))
        if h.client not in hosted:
            raise WireFormatError(f"client {h.client} is not hosted by rank {src}")
        t0 = time.perf_counter()
        tensors = pipeline.decode(payload, spec, device=device)
        return h.client, tensors, time.perf_counter() - t0


def read_report(buf, *, src: int, round: int, rules: accounting.ReportRules) -> np.ndarray:
    """A worker's REPORT (its message log) for `round`, every row checked."""
    with context(_server("report", round, src)):
        _, payload = wire.parse(buf, expect_kind=Kind.REPORT, round=round, client=-1,
                                codec_id=0, n_tensors=0)
        return accounting.parse_report(payload, round=round, rules=rules)


def read_snapshot(buf, *, src: int, round: int, client: int, pipeline, spec) -> dict:
    """One hosted client's error-feedback residual (dense), for a checkpoint."""
    with context(_server("residuals", round, src, client)):
        _, payload = wire.parse(buf, expect_kind=Kind.MEMORY, round=round, client=client,
                                codec_id=pipeline.codec_id, n_tensors=len(spec))
        return pipeline.decode(payload, spec)


# ---------------------------------------------------------------- worker side (ranks 1..N)


def read_control(buf, *, rank: int, hosted: Collection[int], rounds: int, last: int | None,
                 feedback: bool) -> Control:
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
        flags, clients = _assign(payload, hosted=hosted, feedback=feedback)
        return Control(Kind.ASSIGN, h.round, flags=flags, clients=clients)


def read_model(buf, *, rank: int, round: int, client: int, pipeline, spec,
               device=None) -> tuple[dict, float]:
    """The MODEL of `round` for `client`: (tensors, decode seconds)."""
    with context(f"rank {rank}, round {round} client {client}"):
        _, payload = wire.parse(buf, expect_kind=Kind.MODEL, round=round, client=client,
                                codec_id=pipeline.codec_id, n_tensors=len(spec))
        t0 = time.perf_counter()
        tensors = pipeline.decode(payload, spec, device=device)
        return tensors, time.perf_counter() - t0


def read_restore(buf, *, rank: int, client: int, pipeline, spec) -> dict:
    """On --resume: a hosted client's error-feedback residual from the checkpoint (round 0)."""
    with context(f"rank {rank}, resume (round -1), residuals of client {client}"):
        _, payload = wire.parse(buf, expect_kind=Kind.MEMORY, round=0, client=client,
                                codec_id=pipeline.codec_id, n_tensors=len(spec))
        return pipeline.decode(payload, spec)
