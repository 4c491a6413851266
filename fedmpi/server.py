"""Server role (MPI rank 0): the round loop, fixed in this one place.

Round r: sample clients -> ASSIGN to every worker -> MODEL (the encoded global
model, encoded once) to each sampled client -> fold each UPDATE into the running
FedAvg as it arrives -> REPORT from every worker (their message log) -> join the
two logs -> evaluate the new global model as clients will receive it (downlink
compression applied) -> write the round, its messages and a checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from fedmpi import accounting, protocol, wire
from fedmpi.aggregate import StreamingFedAvg
from fedmpi.compress import build_pipeline
from fedmpi.experiment import Experiment, sample_clients, worker_of
from fedmpi.faults import maybe_corrupt, maybe_fail
from fedmpi.signals import StopFlag
from fedmpi.train import evaluate, set_state
from fedmpi.transport import (
    TAG_CONTROL,
    TAG_HELLO,
    TAG_MEMORY,
    TAG_MODEL,
    TAG_REPORT,
    TAG_UPDATE,
    Transport,
)
from fedmpi.protocol import SNAPSHOT
from fedmpi.wire import Kind, WireFormatError


@dataclass
class Broadcast:
    """The encoded global model for the next round and what clients decode from it."""

    buffer: np.ndarray
    reference: dict[str, np.ndarray]
    encoded: object
    encode_s: float


@dataclass
class RoundTimes:
    encode_s: float = 0.0
    decode_s: float = 0.0
    aggregate_s: float = 0.0
    evaluate_s: float = 0.0
    wait_s: float = 0.0


@dataclass
class RoundStats:
    columns: dict[str, np.ndarray]  # this round's /messages rows
    updates: np.ndarray  # the workers' UPDATE log rows (training loss, compute time, samples)
    max_worker_busy_s: float


@dataclass
class ServerState:
    """Everything a checkpoint must hold to continue bit-identically."""

    round: int  # last completed round (-1 before the first)
    global_state: dict[str, np.ndarray]
    memory: dict[str, np.ndarray] = field(default_factory=dict)  # downlink residual
    cum_bytes: int = 0  # wire bytes through `round`
    segment: int = 0  # process incarnation: 0, then +1 per --resume (keys /messages rows)
    client_memories: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # uplink


class Server:
    def __init__(self, exp: Experiment, transport: Transport, writer, progress,
                 stop: StopFlag):
        self.exp = exp
        self.cfg = exp.cfg
        self.net = transport
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.ledger = accounting.Ledger()
        self.totals = accounting.LinkTotals()
        self.memory = exp.downlink.new_memory()
        # With uplink error feedback the residuals live on the workers; checkpoints need
        # them, so checkpoint rounds ask for a snapshot (ASSIGN flag) and a graceful stop
        # waits for a round that had one.
        self.uplink_memory = exp.uplink.new_memory() is not None
        self.dense = build_pipeline([], field="(checkpoint)")
        self.client_memories: dict[int, dict[str, np.ndarray]] = {}
        self.segment = 0
        self.workers = list(range(1, exp.num_workers + 1))
        # What each worker may send: its clients, and the rules its REPORT rows follow.
        self.hosted = {w: frozenset(exp.clients_of(w)) for w in self.workers}
        samples = exp.samples
        numel = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in exp.spec)
        self.report_rules = {
            w: accounting.ReportRules(
                worker=w, clients=self.hosted[w], numel=numel,
                samples={c: int(samples[c]) for c in self.hosted[w]},
                codecs={Kind.UPDATE: exp.uplink.codec_id, Kind.MEMORY: self.dense.codec_id})
            for w in self.workers}
        self.x_test = torch.from_numpy(exp.test.x).to(exp.device)
        self.y_test = torch.from_numpy(exp.test.y).to(exp.device)
        self.cum_bytes = 0

    def hellos(self) -> list[dict]:
        """One hello per worker, in rank order (a worker that failed to start sends FAIL)."""
        out = []
        for w in self.workers:
            buf, _, waited = self.net.recv(w, TAG_HELLO, what="hello")
            info = protocol.read_hello(buf, src=w)
            self.ledger.log(round=-1, kind=Kind.REPORT, client=-1, worker=w, nbytes=len(buf),
                            xfer_s=waited)
            out.append(info)
        return out

    # ------------------------------------------------------------------ loop

    def run(self, state: ServerState) -> str:
        """Run rounds after `state.round`; returns 'completed' or 'interrupted'."""
        # A checkpoint stores tensors by name; the wire format wants the model's order.
        state.global_state = {name: state.global_state[name] for name, _ in self.exp.spec}
        if self.exp.codec_device is not None:  # decode, aggregate, encode on the GPU
            state.global_state = {k: torch.from_numpy(np.ascontiguousarray(v)).to(
                self.exp.codec_device) for k, v in state.global_state.items()}
        if self.memory is not None and state.memory:
            self.memory.load(state.memory)
        self.cum_bytes = state.cum_bytes
        self.segment = state.segment
        if state.round >= 0:  # resumed
            self.restore_client_memories(state.client_memories)
        bcast = self._encode_broadcast(state.global_state, state.round + 1)
        last = state.round
        status = "completed"
        every = self.cfg.run.checkpoint_every
        first = state.round + 1
        for rnd in range(first, self.cfg.rounds):
            t_round = time.perf_counter()
            due = (rnd + 1) % every == 0 or rnd == self.cfg.rounds - 1
            snapshot = self.uplink_memory and (due or self.stop.requested)
            # A round counts the broadcast it encodes for the next one; the first round
            # also the one encoded before the loop.
            times = RoundTimes(encode_s=bcast.encode_s if rnd == first else 0.0)
            new_global, stats = self._round(rnd, bcast, times, snapshot)
            memory_before = self.memory.state() if self.memory is not None else {}
            bcast = self._encode_broadcast(new_global, rnd + 1)
            times.encode_s += bcast.encode_s
            acc, loss = self._evaluate(bcast.reference, rnd, times)
            self._log_round(rnd, stats, times, acc, loss, bcast, t_round)
            last = rnd
            can_stop = snapshot or not self.uplink_memory
            interrupted = self.stop.requested and can_stop and rnd < self.cfg.rounds - 1
            if interrupted or due:
                memories = {"server": memory_before}
                memories.update({f"client_{c}": m for c, m in self.client_memories.items()})
                self.writer.save_checkpoint(round=rnd, global_state=_host(new_global),
                                            memories=memories, rng={})
            self.writer.flush()
            self.net.liveness.observe_round(time.perf_counter() - t_round)
            if interrupted:
                status = "interrupted"
                break
        self._stop_workers(last + 1, status)
        self.totals.check()
        return status

    # ------------------------------------------------------------------ one round

    def _round(self, rnd: int, bcast: Broadcast, times: RoundTimes, snapshot: bool):
        exp, cfg = self.exp, self.cfg
        sampled = sample_clients(cfg.seed, rnd, cfg.clients.num_clients, cfg.clients_per_round())
        by_worker = {w: [int(c) for c in sampled if worker_of(c, exp.num_workers) == w]
                     for w in self.workers}
        for w, clients in by_worker.items():
            flags = SNAPSHOT if snapshot else 0
            buf = wire.frame(Kind.ASSIGN, round=rnd, client=-1,
                             payload=protocol.assign_payload(flags, clients))
            xfer = self.net.post(buf, w, TAG_CONTROL)
            self.ledger.log(round=rnd, kind=Kind.ASSIGN, client=-1, worker=w,
                            nbytes=len(buf), xfer_s=xfer)
        enc = bcast.encoded
        for i, c in enumerate(sampled):
            buf = wire.reframe(bcast.buffer, client=int(c))
            if i == 0:
                buf = maybe_corrupt(cfg, 0, rnd, buf, where="corrupt_down")
            w = worker_of(int(c), exp.num_workers)
            xfer = self.net.post(buf, w, TAG_MODEL)
            self.ledger.log(round=rnd, kind=Kind.MODEL, client=int(c), worker=w,
                            nbytes=len(buf), dense_bytes=enc.dense_bytes, numel=enc.numel,
                            nnz=enc.nnz, codec_id=exp.downlink.codec_id,
                            codec_s=bcast.encode_s)

        reference = bcast.reference if cfg.compression.target == "update" else None
        fedavg = StreamingFedAvg(reference)
        expected = {int(c) for c in sampled}
        order = [int(c) for c in sampled]
        for i in range(len(order)):
            if cfg.run.deterministic:  # fixed summation order, whatever the arrival order
                source = worker_of(order[i], exp.num_workers)
                what = f"UPDATE of client {order[i]}"
            else:
                source = MPI.ANY_SOURCE
                what = _owing(expected, exp.num_workers)
            buf, src, waited = self.net.recv(source, TAG_UPDATE, what=what, round=rnd)
            times.wait_s += waited
            # deterministic: this very client's update (fixed summation order)
            client, tensors, decode_s = protocol.read_update(
                buf, src=src, round=rnd, hosted=self.hosted[src], pipeline=exp.uplink,
                spec=exp.spec, device=exp.codec_device,
                expected={order[i]} if cfg.run.deterministic else expected)
            expected.discard(client)
            times.decode_s += decode_s
            t0 = time.perf_counter()
            maybe_fail(cfg, rank=0, round=rnd, where="aggregate")
            fedavg.add(tensors, weight=float(exp.samples[client]))
            times.aggregate_s += time.perf_counter() - t0
            self.ledger.log(round=rnd, kind=Kind.UPDATE, client=client, worker=src,
                            nbytes=len(buf), codec_s=decode_s, xfer_s=waited)
        t0 = time.perf_counter()
        new_global = fedavg.result()
        times.aggregate_s += time.perf_counter() - t0

        worker_rows = self._collect_reports(rnd, times, snapshot)
        times.wait_s += self.net.complete(round=rnd)
        return new_global, self._account(rnd, worker_rows)

    def _collect_reports(self, rnd: int, times: RoundTimes,
                         snapshot: bool = False) -> list[np.ndarray]:
        rows = []
        for w in self.workers:
            if snapshot:
                self._receive_memories(rnd, w, times)
            buf, _, waited = self.net.recv(w, TAG_REPORT, what="REPORT", round=rnd)
            times.wait_s += waited
            rows.append(protocol.read_report(buf, src=w, round=rnd, rules=self.report_rules[w]))
            self.ledger.log(round=rnd, kind=Kind.REPORT, client=-1, worker=w,
                            nbytes=len(buf), xfer_s=waited)
        return rows

    def _account(self, rnd: int, worker_rows: list[np.ndarray]) -> RoundStats:
        """Join both logs of this round's messages, check them, write /messages."""
        worker_view = (np.concatenate(worker_rows) if worker_rows
                       else np.empty(0, accounting.VIEW_DTYPE))
        server_view = self.ledger.drain()
        self.totals.add(server_view, worker_view)  # independent sums, before the join
        columns = accounting.join(server_view, worker_view)
        columns["segment"] = np.full(len(columns["round"]), self.segment, dtype="<i4")
        self.writer.append_messages(columns)
        # Busy time per worker rank: training plus its own codec work.
        codec = np.where(np.isin(worker_view["kind"], (Kind.UPDATE, Kind.MODEL)),
                         worker_view["codec_s"], 0.0)
        busy = np.bincount(worker_view["worker"], weights=worker_view["compute_s"] + codec,
                           minlength=1)
        return RoundStats(columns, worker_view[worker_view["kind"] == Kind.UPDATE],
                          float(busy.max()))

    def _receive_memories(self, rnd: int, w: int, times: RoundTimes) -> None:
        for client in self.exp.clients_of(w):
            buf, _, waited = self.net.recv(w, TAG_MEMORY, round=rnd,
                                           what=f"error-feedback residual of client {client}")
            times.wait_s += waited
            self.client_memories[client] = protocol.read_snapshot(
                buf, src=w, round=rnd, client=client, pipeline=self.dense, spec=self.exp.spec)
            self.ledger.log(round=rnd, kind=Kind.MEMORY, client=client, worker=w,
                            nbytes=len(buf), xfer_s=waited, direction=accounting.UP)

    def restore_client_memories(self, memories: dict[int, dict[str, np.ndarray]]) -> None:
        """On --resume: give every worker its clients' residuals back (rank order)."""
        if not self.uplink_memory:
            return
        for c in range(self.cfg.clients.num_clients):
            if c not in memories:
                raise WireFormatError(f"checkpoint has no error-feedback residual for client {c}")
            state = {name: memories[c][name] for name, _ in self.exp.spec}
            enc = self.dense.encode(state)
            buf = wire.frame(Kind.MEMORY, round=0, client=c, payload=enc.payload,
                             codec_id=self.dense.codec_id, n_tensors=len(state))
            w = worker_of(c, self.exp.num_workers)
            xfer = self.net.post(buf, w, TAG_MEMORY)
            self.ledger.log(round=-1, kind=Kind.MEMORY, client=c, worker=w, nbytes=len(buf),
                            dense_bytes=enc.dense_bytes, numel=enc.numel, nnz=enc.nnz,
                            codec_id=self.dense.codec_id, xfer_s=xfer, direction=accounting.DOWN)
        self.client_memories = dict(memories)

    # ------------------------------------------------------------------ helpers

    def _encode_broadcast(self, global_state, rnd: int) -> Broadcast:
        t0 = time.perf_counter()
        enc = self.exp.downlink.encode(global_state, memory=self.memory)
        buf = wire.frame(Kind.MODEL, round=rnd, client=-1, payload=enc.payload,
                         codec_id=self.exp.downlink.codec_id, n_tensors=len(global_state))
        return Broadcast(buf, enc.reconstructed, enc, time.perf_counter() - t0)

    def _evaluate(self, state, rnd: int, times: RoundTimes) -> tuple[float, float]:
        if (rnd + 1) % self.cfg.run.eval_every and rnd != self.cfg.rounds - 1:
            return float("nan"), float("nan")
        t0 = time.perf_counter()
        set_state(self.exp.model, state)
        acc, loss = evaluate(self.exp.model, self.x_test, self.y_test,
                             self.cfg.run.eval_batch_size, amp=self.cfg.train.amp)
        times.evaluate_s += time.perf_counter() - t0
        return acc, loss

    def _log_round(self, rnd, stats, times: RoundTimes, acc, loss, bcast, t_round) -> None:
        cols, updates = stats.columns, stats.updates
        # Startup hellos (round -1) count in the cumulative total only.
        self.cum_bytes += int(cols["sender_bytes"].sum())
        this = cols["round"] == rnd
        up = this & (cols["direction"] == accounting.UP)
        model = this & (cols["kind"] == Kind.MODEL)
        update = this & (cols["kind"] == Kind.UPDATE)
        control = this & ~(model | update)
        samples = updates["samples"].astype(np.float64)
        encode_s = times.encode_s + float(updates["codec_s"].sum())
        client_decode = float(cols["decode_s"][model].sum())
        row = {
            "round": rnd,
            "test_accuracy": acc,
            "test_loss": loss,
            "train_loss": float((updates["train_loss"] * samples).sum() / samples.sum()),
            "participants": int(len(updates)),
            "samples": int(samples.sum()),
            "wall_s": 0.0,
            "compute_s": float(updates["compute_s"].sum()),
            "encode_s": encode_s,
            "decode_s": times.decode_s + client_decode,
            "communicate_s": max(0.0, times.wait_s - stats.max_worker_busy_s),
            "aggregate_s": times.aggregate_s,
            "evaluate_s": times.evaluate_s,
            "wait_s": times.wait_s,
            "up_bytes": int(cols["sender_bytes"][update].sum()),
            "down_bytes": int(cols["sender_bytes"][model].sum()),
            "control_bytes": int(cols["sender_bytes"][control].sum()),
            "dense_up_bytes": int(cols["dense_bytes"][update].sum()),
            "dense_down_bytes": int(cols["dense_bytes"][model].sum()),
            "cum_wire_bytes": self.cum_bytes,
            "up_nnz": int(cols["nnz"][update & up].sum()),
            "down_nnz": int(cols["nnz"][model].sum()),
        }
        row["wall_s"] = time.perf_counter() - t_round
        self.writer.append_round(row)
        self.writer.set_attrs(completed_rounds=rnd + 1, cum_wire_bytes=self.cum_bytes)
        self.progress.update(row)

    def _stop_workers(self, rnd: int, status: str) -> None:
        """STOP every worker, then join their final reports (which log the STOP)."""
        self.net.complete(round=rnd)  # e.g. residual restores of a resume with no round left
        for w in self.workers:
            buf = wire.frame(Kind.STOP, round=rnd, client=-1,
                             payload=protocol.stop_payload(status))
            xfer = self.net.send(buf, w, TAG_CONTROL, what="STOP", round=rnd)
            self.ledger.log(round=rnd, kind=Kind.STOP, client=-1, worker=w, nbytes=len(buf),
                            xfer_s=xfer)
        times = RoundTimes()
        rows = self._collect_reports(rnd, times)
        stats = self._account(rnd, rows)
        self.cum_bytes += int(stats.columns["sender_bytes"].sum())
        self.writer.set_attrs(cum_wire_bytes=self.cum_bytes)


def _owing(expected: set[int], num_workers: int) -> str:
    """What an any-source wait for updates awaits: which clients, on which ranks."""
    ranks = sorted({worker_of(c, num_workers) for c in expected})
    return (f"UPDATE of client(s) {', '.join(map(str, sorted(expected)))} from rank(s) "
            f"{', '.join(map(str, ranks))}")


def _host(state: dict) -> dict[str, np.ndarray]:
    """numpy copies of device tensors (checkpoints are written from the host)."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in state.items()}
