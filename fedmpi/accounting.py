"""Exact byte accounting: one record per MPI message, from each end's own view.

Each rank logs the messages it sends (bytes = len(buffer)) and receives (bytes =
`Status.Get_count(MPI.BYTE)`). Workers ship their log to the server in a REPORT
message at the end of every round (a raw numpy record array, never pickle); the
server joins both views per message and refuses to go on if any message is
missing on one side or its sizes differ. Pure numpy: testable without MPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from fedmpi.errors import FedMPIError
from fedmpi.wire import HEADER_SIZE, Kind, WireFormatError

DOWN, UP = 0, 1

# One side's view of one message. `bytes` is what this side saw on the wire.
VIEW_DTYPE = np.dtype(
    [
        ("round", "<i4"),
        ("kind", "u1"),
        ("direction", "u1"),
        ("client", "<i4"),
        ("worker", "<i4"),
        ("bytes", "<i8"),
        ("dense_bytes", "<i8"),
        ("numel", "<i8"),
        ("nnz", "<i8"),
        ("codec_id", "<u4"),
        ("codec_s", "<f8"),  # encode time on the sender, decode time on the receiver
        ("xfer_s", "<f8"),  # time blocked in send / receive
        ("compute_s", "<f8"),  # local training (UPDATE rows only)
        ("train_loss", "<f8"),  # local training loss (UPDATE rows only)
        ("samples", "<i8"),  # client's training samples (UPDATE rows only)
    ]
)

# Columns of /messages, in order (see fedmpi.results.schema).
MESSAGE_COLUMNS = (
    "round", "kind", "direction", "client", "worker", "sender_bytes", "receiver_bytes",
    "dense_bytes", "numel", "nnz", "codec_id", "encode_s", "decode_s", "send_s", "recv_s",
)


class AccountingError(FedMPIError):
    """The two ends of a link disagree about what went over the wire."""


def direction_of(kind: Kind) -> int:
    """The direction of a kind (MEMORY: start-up infrastructure, server -> worker)."""
    return UP if kind in (Kind.UPDATE, Kind.REPORT, Kind.FAIL) else DOWN


@dataclass
class Ledger:
    """The message log of one rank (append-only; drained per round)."""

    rows: list[tuple] = field(default_factory=list)

    def log(self, *, round: int, kind: Kind, client: int, worker: int, nbytes: int,
            dense_bytes: int = 0, numel: int = 0, nnz: int = 0, codec_id: int = 0,
            codec_s: float = 0.0, xfer_s: float = 0.0, compute_s: float = 0.0,
            train_loss: float = float("nan"), samples: int = 0,
            direction: int | None = None) -> None:
        way = direction_of(kind) if direction is None else direction
        self.rows.append((round, int(kind), way, client, worker, nbytes,
                          dense_bytes, numel, nnz, codec_id, codec_s, xfer_s, compute_s,
                          train_loss, samples))

    def drain(self) -> np.ndarray:
        out = np.array(self.rows, dtype=VIEW_DTYPE)
        self.rows.clear()
        return out


def report_payload(rows: np.ndarray) -> bytes:
    return np.ascontiguousarray(rows, dtype=VIEW_DTYPE).tobytes()


# What a worker's log may hold. Bounds that no real run reaches keep every sum of a
# round's rows exact in int64/float64 (a row past them is malformed, not big).
WORKER_KINDS = (Kind.ASSIGN, Kind.MODEL, Kind.UPDATE, Kind.REPORT, Kind.STOP, Kind.MEMORY)
MAX_MESSAGE_BYTES = 1 << 48
MAX_SECONDS = 1e9


@dataclass(frozen=True)
class ReportRules:
    """What the rows of one worker's REPORT may contain; the server knows all of it."""

    worker: int  # the sending rank: every row's `worker`
    clients: frozenset[int]  # the clients it hosts
    numel: int  # entries of the model: rows of messages it encodes carry this many
    samples: Mapping[int, int]  # training samples per hosted client (UPDATE rows)
    codecs: Mapping[int, int]  # Kind -> codec id of what it encodes (UPDATE)


def _row_name(row) -> str:
    kind = int(row["kind"])
    name = Kind(kind).name if kind in Kind._value2member_map_ else f"kind {kind}"
    return f"(round {int(row['round'])}, {name}, client {int(row['client'])})"


def _checks(rows: np.ndarray, round: int | None, rules: ReportRules | None):
    """(field, bad-row mask, what is allowed) in the order they are reported."""
    kind, way = rows["kind"].astype(np.int64), rows["direction"].astype(np.int64)
    yield "kind", ~np.isin(kind, WORKER_KINDS), " | ".join(k.name for k in WORKER_KINDS)
    down = np.isin(kind, (Kind.ASSIGN, Kind.MODEL, Kind.STOP, Kind.MEMORY))
    up = np.isin(kind, (Kind.UPDATE, Kind.REPORT))
    yield "direction", ((way != DOWN) & down) | ((way != UP) & up) | ~np.isin(way, (DOWN, UP)), \
        f"{DOWN} (down) for ASSIGN, MODEL, STOP, MEMORY; {UP} (up) for UPDATE, REPORT"
    if round is not None:
        yield "round", ~np.isin(rows["round"], (-1, round)), f"{round} (or -1: start-up)"
    yield "round", (kind == Kind.MEMORY) & (rows["round"] != -1), \
        "-1 for MEMORY (start-up infrastructure only)"
    nbytes = rows["bytes"]
    yield "bytes", (nbytes < HEADER_SIZE) | (nbytes > MAX_MESSAGE_BYTES), \
        f"{HEADER_SIZE}..{MAX_MESSAGE_BYTES} (a whole message)"
    for name in ("codec_s", "xfer_s", "compute_s"):
        t = rows[name]
        yield name, ~((t >= 0) & (t <= MAX_SECONDS)), f"seconds in 0..{MAX_SECONDS:g}"
    update = kind == Kind.UPDATE
    yield "compute_s", ~update & (rows["compute_s"] != 0), "0 except in UPDATE rows"
    loss = rows["train_loss"]
    yield "train_loss", np.where(update, loss < 0, ~np.isnan(loss)), \
        ">= 0 or NaN in UPDATE rows, NaN in the others"
    numel, nnz, dense = rows["numel"], rows["nnz"], rows["dense_bytes"]
    yield "nnz", (nnz < 0) | (nnz > numel), "0..numel"
    yield "dense_bytes", dense != 4 * numel, "4 * numel"
    if rules is None:
        yield "numel", numel < 0, ">= 0"
        return
    yield "worker", rows["worker"] != rules.worker, f"{rules.worker} (the sending rank)"
    # MODEL may also be the rank's own (client -1: its replica of the model); MEMORY
    # (start-up infrastructure) is always the rank's own
    per_client = np.isin(kind, (Kind.MODEL, Kind.UPDATE))
    hosted = np.isin(rows["client"], np.fromiter(rules.clients, np.int64, len(rules.clients)))
    rank_own = (kind == Kind.MODEL) & (rows["client"] == -1)
    yield "client", np.where(per_client, ~hosted & ~rank_own, rows["client"] != -1), \
        "a client this rank hosts (MODEL, UPDATE), or -1"
    yield "numel", numel != np.where(update, rules.numel, 0), \
        f"{rules.numel} for UPDATE, else 0"
    codec = np.array([rules.codecs.get(int(k), 0) for k in kind], dtype=np.int64)
    yield "codec_id", rows["codec_id"] != np.where(update, codec, 0), \
        "the pipeline's codec id for messages the worker encodes, else 0"
    samples = np.array([rules.samples.get(int(c), -1) for c in rows["client"]], dtype=np.int64)
    yield "samples", rows["samples"] != np.where(update, samples, 0), \
        "the client's training samples in UPDATE rows, else 0"


def parse_report(payload: memoryview | bytes, *, round: int | None = None,
                 rules: ReportRules | None = None) -> np.ndarray:
    """A worker's log, every field checked: WireFormatError names the row and the field.

    Without `rules` only what holds for any worker's log is checked (known kind,
    consistent direction, sizes, counts and times in range; `round` if given).
    """
    if len(payload) % VIEW_DTYPE.itemsize:
        raise WireFormatError(
            f"report payload of {len(payload)} bytes is not a multiple of the "
            f"{VIEW_DTYPE.itemsize}-byte record size"
        )
    rows = np.frombuffer(bytes(payload), dtype=VIEW_DTYPE).copy()
    for name, bad, allowed in _checks(rows, round, rules):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise WireFormatError(f"REPORT row {i} {_row_name(rows[i])}: {name} = "
                                  f"{rows[name][i].item()!r}, allowed: {allowed}")
    return rows


def _key(row) -> tuple:
    return int(row["round"]), int(row["kind"]), int(row["client"]), int(row["worker"])


def join(server_rows: np.ndarray, worker_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Join both views per message into /messages columns; raise on any disagreement.

    For a DOWN message the server is the sender; for UP the worker is.
    """
    def index(rows: np.ndarray, side: str) -> dict:
        out = {}
        for row in rows:
            key = _key(row)
            if key in out:
                raise AccountingError(f"{side} logged message {describe(key)} twice")
            out[key] = row
        return out

    s_idx, w_idx = index(server_rows, "server"), index(worker_rows, "worker")
    missing = set(s_idx) ^ set(w_idx)
    if missing:
        key = sorted(missing)[0]
        side = "worker" if key in s_idx else "server"
        raise AccountingError(f"message {describe(key)} missing from the {side}'s log "
                              f"({len(missing)} unmatched)")
    cols = {name: [] for name in MESSAGE_COLUMNS}
    for key in sorted(s_idx):
        s, w = s_idx[key], w_idx[key]
        snd, rcv = (s, w) if s["direction"] == DOWN else (w, s)
        if int(snd["bytes"]) != int(rcv["bytes"]):
            raise AccountingError(
                f"message {describe(key)}: sender logged {int(snd['bytes'])} bytes, "
                f"receiver {int(rcv['bytes'])}"
            )
        for name in ("round", "kind", "direction", "client", "worker"):
            cols[name].append(s[name])
        cols["sender_bytes"].append(snd["bytes"])
        cols["receiver_bytes"].append(rcv["bytes"])
        for name in ("dense_bytes", "numel", "nnz", "codec_id"):
            cols[name].append(snd[name])
        cols["encode_s"].append(snd["codec_s"])
        cols["decode_s"].append(rcv["codec_s"])
        cols["send_s"].append(snd["xfer_s"])
        cols["recv_s"].append(rcv["xfer_s"])
    dtypes = {n: VIEW_DTYPE.fields[n][0] for n in ("round", "kind", "direction", "client",
                                                   "worker", "dense_bytes", "numel", "nnz",
                                                   "codec_id")}
    return {
        name: np.asarray(values, dtype=dtypes.get(name, "<i8" if "bytes" in name else "<f8"))
        for name, values in cols.items()
    }


def describe(key: tuple) -> str:
    rnd, kind, client, worker = key
    return f"(round {rnd}, {Kind(kind).name}, client {client}, worker rank {worker})"


@dataclass
class LinkTotals:
    """Per-(worker, direction) byte totals of each end's own log, compared at the end.

    Built from the raw views before they are joined, so the check is independent of
    the per-message one: it also catches a message one side logged twice under
    different keys, or rows lost between the log and the join.
    """

    sender: dict = field(default_factory=dict)
    receiver: dict = field(default_factory=dict)

    def add(self, server_rows: np.ndarray, worker_rows: np.ndarray) -> None:
        for rows, server_side in ((server_rows, True), (worker_rows, False)):
            for w, d, b in zip(rows["worker"], rows["direction"], rows["bytes"]):
                key = (int(w), int(d))
                sent = (d == DOWN) == server_side  # the server sends DOWN, workers send UP
                book = self.sender if sent else self.receiver
                book[key] = book.get(key, 0) + int(b)

    def check(self) -> None:
        for key in sorted(set(self.sender) | set(self.receiver)):
            s, r = self.sender.get(key, 0), self.receiver.get(key, 0)
            if s != r:
                w, d = key
                raise AccountingError(
                    f"link server<->rank {w} {'up' if d else 'down'}: sender total {s} "
                    f"bytes != receiver total {r} bytes"
                )
