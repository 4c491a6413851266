"""Exact byte accounting: one record per MPI message, from each end's own view.

Each rank logs the messages it sends (bytes = len(buffer)) and receives (bytes =
`Status.Get_count(MPI.BYTE)`). Workers ship their log to the server in a REPORT
message at the end of every round (a raw numpy record array, never pickle); the
server joins both views per message and refuses to go on if any message is
missing on one side or its sizes differ. Pure numpy: testable without MPI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedmpi.errors import FedMPIError
from fedmpi.wire import Kind

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
    """The usual direction of a kind (MEMORY goes both ways: callers say which)."""
    return UP if kind in (Kind.UPDATE, Kind.REPORT, Kind.FAIL, Kind.MEMORY) else DOWN


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


def parse_report(payload: memoryview | bytes) -> np.ndarray:
    from fedmpi.wire import WireFormatError

    if len(payload) % VIEW_DTYPE.itemsize:
        raise WireFormatError(
            f"report payload of {len(payload)} bytes is not a multiple of the "
            f"{VIEW_DTYPE.itemsize}-byte record size"
        )
    return np.frombuffer(bytes(payload), dtype=VIEW_DTYPE).copy()


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
