"""Synthetic but self-consistent results files, for tests and report demos.

Rows follow the real accounting rules (per-message rows add up to the per-round
byte columns, cumulative bytes are cumulative), so anything the report computes
from a synthetic file can be recomputed independently from its messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedmpi.results import schema
from fedmpi.results.writer import ResultsWriter

HEADER = 64  # bytes of wire header per model message
CONTROL = 48  # bytes of an assign / report / stop message
NUMEL = 10_000  # values in the model


def config(*, theta: float, local_epochs: int, seed: int, rounds: int,
           name: str = "synthetic", **extra: Any) -> dict[str, Any]:
    uplink = [{"prune": {"rate": theta}}, {"zstd": {"level": 3}}] if theta > 0 else []
    cfg = {
        "name": name,
        "seed": seed,
        "rounds": rounds,
        "output": f"results/{name}.h5",
        "data": {"dataset": "digits", "partition": {"method": "lda", "alpha": 1.0}},
        "clients": {"num_clients": 8, "fraction": 0.5, "per_round": None},
        "train": {"model": "mlp", "local_epochs": local_epochs, "lr": 0.05},
        "compression": {"target": "weights", "uplink": uplink, "downlink": []},
    }
    cfg.update(extra)
    return cfg


def write_run(path: str | os.PathLike, *, theta: float = 0.0, local_epochs: int = 1,
              seed: int = 0, rounds: int = 5, finish: str | None = "completed",
              workers: int = 2, name: str | None = None, overwrite: bool = False,
              exact: Exact | None = None, **extra: Any) -> ResultsWriter | None:
    """Write a run; with finish=None the open writer is returned (status 'running').

    With `exact`, the run's compression config, message sizes, accuracies and codec
    times are the given ones (no random jitter), so that a test can compute what a
    report must print by hand from a few constants.
    """
    name = name or f"theta{theta:g}_e{local_epochs}"
    cfg = config(theta=theta, local_epochs=local_epochs, seed=seed, rounds=rounds,
                 name=name, **extra)
    if exact is not None:
        cfg["compression"].update(exact.compression)
    rng = np.random.default_rng([seed, int(theta * 100), local_epochs])
    w = ResultsWriter(path, overwrite=overwrite, attrs=dict(
        name=name, seed=seed, config_json=json.dumps(cfg), config_yaml=f"name: {name}\n",
        world_size=workers + 1, num_workers=workers, hosts=["node0"] * (workers + 1),
        devices=["cpu"] * (workers + 1), git_commit="0" * 40, mpi_library_version="MPICH 4",
    ))
    w.set_codecs({0: "dense", 1: "prune>zstd"})
    clients = cfg["clients"]["num_clients"]
    w.write_clients(client=np.arange(clients), worker=1 + np.arange(clients) % workers,
                    samples=np.full(clients, 100), class_histogram=np.full((clients, 10), 10))
    cum = 0
    for r in range(rounds):
        cols = messages_for_round(r, theta, rng, clients=clients // 2, workers=workers)
        if exact is not None:
            cols = exact.apply(cols)
        row = round_row(r, cols, theta, local_epochs, rng, cum)
        if exact is not None:
            row["test_accuracy"] = exact.accuracy[r]
        cum = row["cum_wire_bytes"]
        w.append_round(row)
        w.append_messages(cols)
        w.save_checkpoint(round=r, global_state={"fc.weight": rng.random(NUMEL, dtype=np.float32)},
                          memories={}, rng={"numpy": rng.bytes(16)})
        w.flush()
    if finish is None:
        return w
    w.append_messages(stop_messages(rounds, workers))  # after the last round, like the server
    w.finish(finish, "" if finish == "completed" else "synthetic failure")
    return None


@dataclass(frozen=True)
class Exact:
    """What `write_run(exact=...)` fixes: every update (uplink) message is `up` bytes,
    every model (downlink) message `down` bytes, round r's test accuracy is
    `accuracy[r]`, and every model message took `encode_s` / `decode_s` seconds.
    `compression` is merged into the config's `compression` section. `snapshot` > 0
    adds, per round, one error-feedback checkpoint snapshot (kind memory) of that
    many bytes from worker 1, counted in the round's control bytes as the real
    accounting does."""

    up: int
    down: int
    accuracy: Sequence[float]
    compression: dict[str, Any] = field(default_factory=dict)
    encode_s: float = 0.001
    decode_s: float = 0.002
    snapshot: int = 0

    def apply(self, cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        up, down = cols["kind"] == 3, cols["kind"] == 2
        for col in ("sender_bytes", "receiver_bytes"):
            cols[col][up], cols[col][down] = self.up, self.down
        model = up | down
        cols["encode_s"] = np.where(model, self.encode_s, 0.0)
        cols["decode_s"] = np.where(model, self.decode_s, 0.0)
        if not self.snapshot:
            return cols
        extra = {k: v[:1].copy() for k, v in cols.items()}  # a row shaped like the others
        extra.update(kind=np.array([7]), direction=np.array([1]), client=np.array([-1]),
                     worker=np.array([1]), sender_bytes=np.array([self.snapshot]),
                     receiver_bytes=np.array([self.snapshot]), dense_bytes=np.array([0]),
                     numel=np.array([0]), nnz=np.array([0]), codec_id=np.array([0]),
                     encode_s=np.array([0.0]), decode_s=np.array([0.0]))
        return {k: np.concatenate([v, extra[k].astype(v.dtype)]) for k, v in cols.items()}


def messages_for_round(r: int, theta: float, rng: np.random.Generator, *, clients: int,
                       workers: int) -> dict[str, np.ndarray]:
    rows = []
    nnz_up = int(NUMEL * (1 - theta))
    for c in range(clients):
        worker = 1 + c % workers
        up = HEADER + int(nnz_up * 4 * 0.9 + (NUMEL / 8 if theta else 0)) + int(rng.integers(0, 50))
        rows.append((1, 0, c, worker, CONTROL, 0, 0, 0, 0))  # assign
        rows.append((2, 0, c, worker, HEADER + NUMEL * 4, NUMEL * 4, NUMEL, NUMEL, 0))
        rows.append((3, 1, c, worker, up, NUMEL * 4, NUMEL, nnz_up, 1 if theta else 0))
    for k in range(workers):
        rows.append((4, 1, -1, 1 + k, CONTROL, 0, 0, 0, 0))  # report
    a = np.array(rows, dtype=np.int64)
    n = len(a)
    return {
        "round": np.full(n, r), "kind": a[:, 0], "direction": a[:, 1], "client": a[:, 2],
        "worker": a[:, 3], "sender_bytes": a[:, 4], "receiver_bytes": a[:, 4],
        "dense_bytes": a[:, 5], "numel": a[:, 6], "nnz": a[:, 7], "codec_id": a[:, 8],
        "encode_s": rng.random(n) * 1e-3, "decode_s": rng.random(n) * 1e-3,
        "send_s": rng.random(n) * 1e-4, "recv_s": rng.random(n) * 1e-4,
        "segment": np.zeros(n, dtype=np.int32),
    }


def stop_messages(r: int, workers: int) -> dict[str, np.ndarray]:
    """STOP to every worker and their final reports: in /messages, in no /rounds row."""
    kind = np.array([5] * workers + [4] * workers)
    n = len(kind)
    zeros = np.zeros(n)
    return {
        "round": np.full(n, r), "kind": kind, "direction": (kind == 4).astype(int),
        "client": np.full(n, -1), "worker": np.tile(1 + np.arange(workers), 2),
        "sender_bytes": np.full(n, CONTROL), "receiver_bytes": np.full(n, CONTROL),
        "dense_bytes": zeros, "numel": zeros, "nnz": zeros, "codec_id": zeros,
        "encode_s": zeros, "decode_s": zeros, "send_s": zeros, "recv_s": zeros,
        "segment": np.zeros(n, dtype=np.int32),
    }


def round_row(r: int, m: dict[str, np.ndarray], theta: float, local_epochs: int,
              rng: np.random.Generator, cum: int) -> dict[str, float | int]:
    up, down, infra = m["kind"] == 3, m["kind"] == 2, m["kind"] == 7
    control = ~(up | down | infra)
    ceiling = 0.95 - 0.25 * theta**3 + 0.01 * local_epochs
    row: dict[str, float | int] = {
        "round": r,
        "test_accuracy": float(ceiling * (1 - np.exp(-(r + 1) / 3)) + rng.normal(0, 0.005)),
        "test_loss": float(2.3 * np.exp(-(r + 1) / 3)),
        "train_loss": float(2.0 * np.exp(-(r + 1) / 2.5)),
        "participants": int(up.sum()),
        "samples": int(up.sum() * 100),
        "compute_s": 0.2 * local_epochs, "encode_s": float(m["encode_s"].sum()),
        "decode_s": float(m["decode_s"].sum()), "communicate_s": 0.01, "aggregate_s": 0.005,
        "evaluate_s": 0.02, "wait_s": 0.1 * local_epochs,
        "up_bytes": int(m["sender_bytes"][up].sum()),
        "down_bytes": int(m["sender_bytes"][down].sum()),
        "control_bytes": int(m["sender_bytes"][control].sum()),
        "infra_bytes": int(m["sender_bytes"][infra].sum()),
        "dense_up_bytes": int(m["dense_bytes"][up].sum()),
        "dense_down_bytes": int(m["dense_bytes"][down].sum()),
        "up_nnz": int(m["nnz"][up].sum()), "down_nnz": int(m["nnz"][down].sum()),
    }
    row["wall_s"] = 0.3 + row["compute_s"] / 2
    row["cum_wire_bytes"] = (cum + row["up_bytes"] + row["down_bytes"] + row["control_bytes"]
                             + row["infra_bytes"])
    assert set(row) == set(schema.required_columns("rounds"))
    return row
