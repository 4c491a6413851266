"""Server role (MPI rank 0): the round loop, fixed in this one place.

Round r: the strategy selects clients (with their settings) -> ASSIGN to every
worker -> MODEL (the global model, or with `downlink_target: update` the global
update, encoded once) to each sampled client (and, with update, to every rank
with none, so its replica keeps in step) -> fold each UPDATE into the strategy's
running aggregate as it arrives -> REPORT from every worker (their message log)
-> join the two logs -> evaluate the new global model as clients will hold it
(downlink compression applied) -> write the round, its messages and a checkpoint.

Client compressor state (error feedback) never comes here: on checkpoint rounds
ASSIGN carries SAVE_STATE and each worker writes its clients' state to its own
file before its REPORT (`fedmpi.results.clientstate`), so the server's checkpoint
of a round is written only after the workers' files of that round exist.

Every message goes through `fedmpi.channel`, which logs it; the payloads are
written and read in `fedmpi.protocol`.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from mpi4py import MPI

from fedmpi import accounting, linkmodel, protocol
from fedmpi.channel import Channel, Outgoing, encoded, message, state_message
from fedmpi.experiment import Experiment
from fedmpi.faults import maybe_corrupt, maybe_fail
from fedmpi.signals import StopFlag
from fedmpi.train import evaluate, set_state
from fedmpi.transport import TAG_HELLO, Transport
from fedmpi.protocol import SAVE_STATE
from fedmpi.wire import Kind


@dataclass
class Broadcast:
    """The encoded MODEL for the next round and what clients hold once they decode it."""

    out: Outgoing  # framed for client -1; `.to(client)` readdresses it
    reference: dict  # weights clients start from (update mode: the advanced replica)
    encode_s: float


@dataclass
class RoundTimes:
    encode_s: float = 0.0
    decode_s: float = 0.0
    aggregate_s: float = 0.0
    evaluate_s: float = 0.0
    wait_s: float = 0.0
    dropped: list[int] = field(default_factory=list)  # updates past the round deadline


@dataclass
class RoundStats:
    columns: dict[str, np.ndarray]  # this round's /messages rows
    updates: np.ndarray  # the workers' UPDATE log rows (training loss, compute time, samples)
    max_worker_busy_s: float
    sim_s: float = float("nan")  # the round's simulated time on the link model (NaN: none)


@dataclass
class ServerState:
    """Everything a checkpoint must hold to continue bit-identically."""

    round: int  # last completed round (-1 before the first)
    global_state: dict[str, np.ndarray]
    memory: dict[str, np.ndarray] = field(default_factory=dict)  # downlink compressor state
    cum_bytes: int = 0  # wire bytes through `round`
    segment: int = 0  # process incarnation: 0, then +1 per --resume (keys /messages rows)
    run_id: str = ""  # the run identity (clientstate.run_identity) of the workers' state files
    strategy: dict[str, np.ndarray] = field(default_factory=dict)  # Strategy.state()
    replica: dict[str, np.ndarray] | None = None  # downlink_target update: what clients hold


@dataclass
class Finished:
    """A round whose evaluation, row and checkpoint are still to do (`Server._finish`)."""

    round: int
    stats: RoundStats
    times: RoundTimes
    reference: dict  # the model clients hold next: what round `round` is evaluated on
    new_global: dict
    saved: dict  # the checkpoint's memories
    t_round: float
    checkpoint: bool


class _Background:
    """`fn()` in a daemon thread; `get()` joins it and returns (or raises) its result.
    torch releases the GIL in its kernels, so the main thread goes on polling MPI."""

    def __init__(self, fn):
        self.fn, self.result, self.error = fn, None, None
        self.thread = threading.Thread(target=self._run, name="fedmpi-eval", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed to the main thread by get()
            self.error = exc

    def done(self) -> bool:
        return not self.thread.is_alive()

    def get(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result


class Server:
    def __init__(self, exp: Experiment, transport: Transport, writer, progress,
                 stop: StopFlag):
        self.exp = exp
        self.cfg = exp.cfg
        self.channel = Channel(transport)
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.strategy = exp.strategy
        self.totals = accounting.LinkTotals()
        self.links = linkmodel.from_config(self.cfg.link, self.cfg.seed,
                                           self.cfg.clients.num_clients)  # None: no link model
        self.down_state = exp.downlink.new_state() or {}  # the broadcast's ctx.state
        self.update_down = self.cfg.compression.downlink_target == "update"
        self.replica = None  # update mode: the global model as the clients hold it
        # With a stateful uplink compressor (error feedback) its states live on the
        # workers, in their own files; checkpoint rounds ask them to save (ASSIGN flag
        # SAVE_STATE) and a graceful stop waits for a round that had one.
        self.uplink_state = exp.uplink.new_state() is not None
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
                codecs={Kind.UPDATE: exp.uplink.codec_id})
            for w in self.workers}
        self.placed = {w: list(self.hosted[w]) for w in self.workers}  # the round's placement
        self.rank_of: dict[int, int] = {}  # client -> its rank this round
        self.window = self.cfg.run.reorder_window
        self.x_test = torch.from_numpy(exp.test.x).to(exp.device)
        self.y_test = torch.from_numpy(exp.test.y).to(exp.device)
        self.cum_bytes = 0
        self.dropped_updates: dict[str, list[int]] = {}  # round -> clients past the deadline

    def hellos(self) -> list[dict]:
        """One hello per worker, in rank order (a worker that failed to start sends FAIL)."""
        return [self.channel.recv(Kind.REPORT, w, lambda buf, src: protocol.read_hello(
                    buf, src=src), tag=TAG_HELLO, log_round=-1, what="hello").value
                for w in self.workers]

    # ------------------------------------------------------------------ loop

    def run(self, state: ServerState) -> str:
        """Run rounds after `state.round`; returns 'completed' or 'interrupted'."""
        global_state = self._device(state.global_state)
        self.down_state.update(state.memory)
        self.strategy.load(state.strategy)
        if self.update_down:
            self.replica = self._device(state.replica if state.replica is not None
                                        else state.global_state)
        self.cum_bytes = state.cum_bytes
        self.segment = state.segment
        self.start_up(state)
        bcast = self._encode_broadcast(global_state, state.round + 1)
        last = state.round
        status = "completed"
        every = self.cfg.run.checkpoint_every
        first = state.round + 1
        pending = None  # the previous round's evaluation, row and checkpoint (overlapped)
        for rnd in range(first, self.cfg.rounds):
            t_round = time.perf_counter()
            due = (rnd + 1) % every == 0 or rnd == self.cfg.rounds - 1
            save = self.uplink_state and (due or self.stop.requested)
            # A round counts the broadcast it encodes for the next one; the first round
            # also the one encoded before the loop.
            times = RoundTimes(encode_s=bcast.encode_s if rnd == first else 0.0)
            new_global, stats = self._round(rnd, bcast, times, save, pending)
            # What the next round starts from, before the broadcast encoding changes it.
            saved = {"server": _copy(self.down_state), "strategy": self.strategy.state()}
            if self.update_down:
                saved["replica"] = _copy(self.replica)
            bcast = self._encode_broadcast(new_global, rnd + 1)
            times.encode_s += bcast.encode_s
            last = rnd
            # A stop waits for a round whose client states the workers saved.
            can_stop = save or not self.uplink_state
            interrupted = self.stop.requested and can_stop and rnd < self.cfg.rounds - 1
            pending = Finished(rnd, stats, times, bcast.reference, new_global, saved, t_round,
                               interrupted or due)
            self.channel.liveness.observe_round(time.perf_counter() - t_round)
            if interrupted or not self.cfg.run.overlap_eval or rnd == self.cfg.rounds - 1:
                pending = self._finish(pending)
            if interrupted:
                status = "interrupted"
                break
        self._stop_workers(last + 1, status)
        self.totals.check()
        self.writer.set_attrs(server_peak_rss_bytes=_peak_rss())
        return status

    # ------------------------------------------------------------------ one round

    def _round(self, rnd: int, bcast: Broadcast, times: RoundTimes, save: bool,
               previous=None):
        """One round. `previous`: the last round, evaluated in a thread from the moment
        this round's MODELs are out (the main thread keeps receiving, which also drives
        MPI progress), its row and checkpoint written once this round's updates are in."""
        t_start = time.perf_counter()
        settings = self._select(rnd)  # client -> its settings, in client order
        self._assign(rnd, settings, save)
        first_model = self._send_models(rnd, bcast, list(settings))
        left = [previous] if previous is not None else []  # the round still to write
        if left:
            evaluation = _Background(partial(self._evaluate, previous.reference,
                                             previous.round, previous.times))

        def write_previous(wait: bool = True) -> None:
            """Its row and checkpoint, as soon as its evaluation is done."""
            if left and (wait or evaluation.done()):
                self._finish(left.pop(), end=t_start, result=evaluation.get())

        exp = self.exp
        limit = self.cfg.run.round_deadline_s
        until = None if limit is None else first_model + limit
        try:
            self.strategy.begin(rnd, bcast.reference, fold=exp.uplink.fold(
                bcast.reference if self.cfg.compression.target == "update" else None))
            dropped = self._fold_updates(rnd, settings, times,
                                         between=lambda: write_previous(False), until=until)
        except BaseException:
            with suppress(Exception):  # a failing round still leaves the last one written
                write_previous()
            raise
        write_previous()
        t0 = time.perf_counter()
        if len(dropped) < len(settings):
            new_global = self._device(self.strategy.finish())
        else:  # every update dropped: the model the clients started from
            new_global = self._device(bcast.reference)
        times.aggregate_s += time.perf_counter() - t0
        self._discard_late(rnd, dropped, times)
        times.dropped = dropped

        worker_rows = self._collect_reports(rnd, times)
        times.wait_s += self.channel.complete(round=rnd)
        return new_global, self._account(rnd, worker_rows)

    def _select(self, rnd: int) -> dict[int, dict[str, float]]:
        picks = self.strategy.select(rnd)
        # as the worker reads them from ASSIGN (float32), so both ends' contexts agree
        settings = {int(c): {k: float(np.float32(v)) for k, v in values.items()}
                    for c, values in picks}
        n = self.cfg.clients.num_clients
        if len(settings) != len(picks) or not picks or not all(0 <= c < n for c in settings):
            raise ValueError(f"strategy {self.strategy.key} selected clients "
                             f"{[c for c, _ in picks][:20]} in round {rnd}: expected distinct "
                             f"ids in 0..{n - 1}, at least one")
        return dict(sorted(settings.items()))

    def _by_worker(self, clients) -> dict[int, list[int]]:
        """The round's placement of `clients` (all sampled, or a subset): rank -> clients."""
        keep = set(clients)
        return {w: [c for c in self.placed[w] if c in keep] for w in self.workers}

    def _assign(self, rnd: int, settings: dict[int, dict[str, float]], save: bool) -> None:
        """Place the round's clients on the worker ranks (`Experiment.place`: balanced by
        work when clients are stateless, their home rank otherwise), then ASSIGN to every
        worker its clients of the round and their settings (and SAVE_STATE: write the
        hosted clients' compressor states this round)."""
        self.placed = self.exp.place(list(settings))
        self.rank_of = {c: w for w, cs in self.placed.items() for c in cs}
        names = self.strategy.client_settings
        for w, clients in self.placed.items():
            values = [[settings[c][n] for n in names] for c in clients] if names else ()
            payload = protocol.assign_payload(SAVE_STATE if save else 0, clients, values)
            self.channel.send(message(Kind.ASSIGN, round=rnd, payload=payload), w, post=True)

    def _send_models(self, rnd: int, bcast: Broadcast, sampled: list[int]) -> float:
        """The round's MODEL to each sampled client; with downlink_target update, also to
        every rank with none, so that its replica keeps in step. Returns when the first
        was posted (`time.perf_counter()`; the round deadline counts from there).

        Each copy is the broadcast's payload with the client's own 40-byte header, posted
        without a copy (`Outgoing.to`): the server holds one payload however many clients
        a round has. The broadcast's encode time is logged once, on the first copy.
        """
        cfg = self.cfg
        started = time.perf_counter()
        for i, c in enumerate(sampled):
            tamper = (lambda buf: maybe_corrupt(cfg, 0, rnd, buf, where="corrupt_down")) \
                if i == 0 else None
            out = bcast.out.to(c, codec_s=bcast.encode_s if i == 0 else 0.0)
            self.channel.send(out, self.rank_of[c], post=True,
                              tamper=tamper)
        if self.update_down:
            for w, clients in self._by_worker(sampled).items():
                if not clients:
                    self.channel.send(bcast.out, w, post=True)
        return started

    def _fold_updates(self, rnd: int, settings: dict, times: RoundTimes,
                      between=lambda: None, until: float | None = None) -> list[int]:
        """Receive the round's UPDATEs from any rank as they come, decode each and fold it
        into the strategy; returns the clients dropped by the round deadline.

        Non-deterministic mode folds in arrival order. Deterministic mode folds in client
        order, so the sums do not depend on placement or arrival order, through a bounded
        reorder window: an update that comes before its turn waits decoded, at most
        `run.reorder_window` of them; with the window full the server receives only from
        the rank of the next client in order (a rank sends its clients in ascending order,
        so its next message is that client's). Senders never block on the order.
        `between()` runs after each UPDATE (the last round's row, once it is evaluated).

        With a round deadline (`until`, perf_counter time) the updates not there by then
        are dropped (`_discard_late` receives them later); the ones received are folded,
        in client order in deterministic mode.
        """
        order = list(settings)  # ascending client ids
        expected = set(order)
        waiting: dict[int, dict] = {}  # decoded updates before their turn (deterministic)
        nxt = 0  # deterministic: index in `order` of the next client to fold
        deterministic = self.cfg.run.deterministic
        dropped: list[int] = []
        while expected:
            if deterministic and len(waiting) >= self.window:
                c = order[nxt]
                source, want, what = self.rank_of[c], {c}, f"UPDATE of client {c}"
            else:
                source, want = MPI.ANY_SOURCE, set(expected)
                what = _owing(expected, self.rank_of)
            reader = self._update_reader(rnd, want, settings)
            if until is None:
                got = self.channel.recv(Kind.UPDATE, source, reader, what=what, round=rnd)
            else:
                t0 = time.perf_counter()
                got = self.channel.recv_by(until, Kind.UPDATE, source, reader, what=what,
                                           round=rnd)
                if got is None:
                    times.wait_s += time.perf_counter() - t0
                    dropped = sorted(expected)
                    break
            client, tensors, _ = got.value
            expected.discard(client)
            times.wait_s += got.waited
            times.decode_s += got.read_s
            between()
            if not deterministic:
                self._fold_one(rnd, client, tensors, times)
                continue
            waiting[client] = tensors
            while nxt < len(order) and order[nxt] in waiting:
                self._fold_one(rnd, order[nxt], waiting.pop(order[nxt]), times)
                nxt += 1
        for c in sorted(waiting):  # after a deadline: the ones that came, in client order
            self._fold_one(rnd, c, waiting.pop(c), times)
        return dropped

    def _fold_one(self, rnd: int, client: int, tensors: dict, times: RoundTimes) -> None:
        t0 = time.perf_counter()
        maybe_fail(self.cfg, rank=0, round=rnd, where="aggregate")
        self.strategy.fold(client, tensors, float(self.exp.samples[client]))
        times.aggregate_s += time.perf_counter() - t0

    def _discard_late(self, rnd: int, late: list[int], times: RoundTimes) -> None:
        """Receive the UPDATEs dropped by the round deadline, check their headers and
        discard them: their senders wait for it (and send their REPORT after), and
        every message is accounted, dropped or not."""
        exp, left = self.exp, set(late)
        while left:
            def read(buf, src):
                return protocol.read_late_update(buf, src=src, round=rnd, expected=left,
                                                 hosted=self.placed.get(src, ()),
                                                 codec=exp.uplink, spec=exp.spec)
            got = self.channel.recv(Kind.UPDATE, MPI.ANY_SOURCE, read, round=rnd,
                                    what="late " + _owing(left, self.rank_of))
            left.discard(got.value)
            times.wait_s += got.waited

    def _update_reader(self, rnd: int, expected: set[int], settings: dict):
        exp = self.exp

        def read(buf, src):
            return protocol.read_update(
                buf, src=src, round=rnd, expected=expected, hosted=self.placed[src],
                codec=exp.uplink, spec=exp.spec,
                ctx_of=lambda c: exp.context(rnd, c, "up", settings=settings[c]).for_decode())
        return read

    def _collect_reports(self, rnd: int, times: RoundTimes) -> list[np.ndarray]:
        rows = []
        for w in self.workers:
            got = self.channel.recv(Kind.REPORT, w, lambda buf, src: protocol.read_report(
                buf, src=src, round=rnd, rules=self._rules(src)), what="REPORT", round=rnd)
            times.wait_s += got.waited
            rows.append(got.value)
        return rows

    def _rules(self, w: int) -> accounting.ReportRules:
        """What rank w's REPORT may hold: with stateless clients, only the clients it ran
        this round (the placement changes every round); else the clients it hosts."""
        if self.uplink_state:
            return self.report_rules[w]
        return replace(self.report_rules[w], clients=frozenset(self.placed[w]))

    def _account(self, rnd: int, worker_rows: list[np.ndarray]) -> RoundStats:
        """Join both logs of this round's messages, check them, write /messages."""
        worker_view = (np.concatenate(worker_rows) if worker_rows
                       else np.empty(0, accounting.VIEW_DTYPE))
        server_view = self.channel.drain()
        self.totals.add(server_view, worker_view)  # independent sums, before the join
        columns = accounting.join(server_view, worker_view)
        columns["segment"] = np.full(len(columns["round"]), self.segment, dtype="<i4")
        # Simulated transfer times on the configured client links (fedmpi.linkmodel):
        # per message, and the round's (its slowest client's download + upload).
        columns["sim_s"], sim_s = linkmodel.round_times(
            self.links, columns["kind"], columns["direction"], columns["client"],
            columns["sender_bytes"], worker=columns["worker"])
        self.writer.append_messages(columns)
        # Busy time per worker rank: training plus its own codec work.
        codec = np.where(np.isin(worker_view["kind"], (Kind.UPDATE, Kind.MODEL)),
                         worker_view["codec_s"], 0.0)
        busy = np.bincount(worker_view["worker"], weights=worker_view["compute_s"] + codec,
                           minlength=1)
        return RoundStats(columns, worker_view[worker_view["kind"] == Kind.UPDATE],
                          float(busy.max()), float(sim_s))

    def start_up(self, state: ServerState) -> None:
        """Start-up infrastructure messages (MEMORY, client -1, logged at round -1,
        counted in /rounds infra_bytes): on a fresh run with a stateful uplink
        compressor, the run identity that names every worker's client-state files; on
        --resume with downlink_target update, each worker's replica of the global model.
        (On --resume the workers read the identity and the checkpoint round from the
        result file, and the round from the first ASSIGN.)"""
        if self.uplink_state and state.round < 0:
            ident = state_message(protocol.identity_payload(state.run_id), round=0, client=-1)
            for w in self.workers:
                self.channel.send(ident, w, post=True, log_round=-1)
        if self.update_down and state.round >= 0:
            replica = state_message(_copy(self.replica), round=0, client=-1)
            for w in self.workers:
                self.channel.send(replica, w, post=True, log_round=-1)

    # ------------------------------------------------------------------ helpers

    def _encode_broadcast(self, global_state, rnd: int) -> Broadcast:
        """Encode the next round's MODEL once: the weights, or (update mode) the gap
        Δ = global - replica, after which the replica advances by the decoded Δ
        exactly as every worker's does."""
        exp = self.exp
        t0 = time.perf_counter()
        ctx = exp.context(rnd, -1, "down", state=self.down_state)
        if self.update_down:
            delta = {k: global_state[k] - self.replica[k] for k in self.replica}
            enc = exp.encode(exp.downlink, delta, ctx)
            recon = self._device(enc.reconstructed)
            self.replica = {k: self.replica[k] + recon[k] for k in self.replica}
            reference = self.replica
        else:
            enc = exp.encode(exp.downlink, global_state, ctx)
            reference = enc.reconstructed
        out = encoded(Kind.MODEL, enc, round=rnd, client=-1, codec_id=exp.downlink.codec_id,
                      n_tensors=len(exp.spec))
        encode_s = time.perf_counter() - t0
        return Broadcast(out, reference, encode_s)  # the first copy sent logs encode_s

    def _device(self, state: dict) -> dict:
        """`state` in model order, where the codec works (the GPU with the torch codec)."""
        device = self.exp.codec_device
        out = {}
        for name, _ in self.exp.spec:
            v = state[name]
            if device is not None and not isinstance(v, torch.Tensor):
                v = torch.from_numpy(np.ascontiguousarray(v)).to(device)
            elif device is None and isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            out[name] = v
        return out

    def _finish(self, done: Finished, end=None, result=None) -> None:
        """After a round: evaluate its model (unless `result` has it), write its row,
        its checkpoint if one is due. Returns None (nothing left pending)."""
        rnd, times = done.round, done.times
        acc, loss = self._evaluate(done.reference, rnd, times) if result is None else result
        self._log_round(rnd, done.stats, times, acc, loss, done.t_round, end)
        if done.checkpoint:
            self.writer.save_checkpoint(round=rnd, global_state=_copy(done.new_global),
                                        memories=done.saved, rng={})
        self.writer.flush()

    def _evaluate(self, state, rnd: int, times: RoundTimes) -> tuple[float, float]:
        if (rnd + 1) % self.cfg.run.eval_every and rnd != self.cfg.rounds - 1:
            return float("nan"), float("nan")
        t0 = time.perf_counter()
        set_state(self.exp.model, state)
        acc, loss = evaluate(self.exp.model, self.x_test, self.y_test,
                             self.cfg.run.eval_batch_size, amp=self.cfg.train.amp)
        times.evaluate_s += time.perf_counter() - t0
        return acc, loss

    def _log_round(self, rnd, stats, times: RoundTimes, acc, loss, t_round, end=None) -> None:
        """The round's row; `wall_s` runs from its start to `end` (the next round's start,
        when its evaluation overlaps that round), else to now."""
        cols, updates = stats.columns, stats.updates
        # Startup hellos (round -1) count in the cumulative total only.
        self.cum_bytes += int(cols["sender_bytes"].sum())
        this = cols["round"] == rnd
        up = this & (cols["direction"] == accounting.UP)
        model = this & (cols["kind"] == Kind.MODEL)
        update = this & (cols["kind"] == Kind.UPDATE)
        # Start-up infrastructure (MEMORY) of this segment: with its first round.
        infra = cols["kind"] == Kind.MEMORY
        control = this & ~(model | update | infra)
        trained = updates  # every client that trained; `updates`: those folded
        if times.dropped:
            updates = updates[~np.isin(updates["client"], times.dropped)]
            self.dropped_updates[str(rnd)] = [int(c) for c in times.dropped]
            self.writer.set_attrs(dropped_updates=json.dumps(self.dropped_updates))
        samples = updates["samples"].astype(np.float64)
        encode_s = times.encode_s + float(trained["codec_s"].sum())
        client_decode = float(cols["decode_s"][model].sum())
        row = {
            "round": rnd,
            "test_accuracy": acc,
            "test_loss": loss,
            "train_loss": float((updates["train_loss"] * samples).sum() / samples.sum())
            if len(updates) else float("nan"),
            "participants": int(len(updates)),
            "samples": int(samples.sum()),
            "wall_s": 0.0,
            "compute_s": float(trained["compute_s"].sum()),
            "encode_s": encode_s,
            "decode_s": times.decode_s + client_decode,
            "communicate_s": max(0.0, times.wait_s - stats.max_worker_busy_s),
            "aggregate_s": times.aggregate_s,
            "evaluate_s": times.evaluate_s,
            "wait_s": times.wait_s,
            "up_bytes": int(cols["sender_bytes"][update].sum()),
            "down_bytes": int(cols["sender_bytes"][model].sum()),
            "control_bytes": int(cols["sender_bytes"][control].sum()),
            "infra_bytes": int(cols["sender_bytes"][infra].sum()),
            "dense_up_bytes": int(cols["dense_bytes"][update].sum()),
            "dense_down_bytes": int(cols["dense_bytes"][model].sum()),
            "cum_wire_bytes": self.cum_bytes,
            "up_nnz": int(cols["nnz"][update & up].sum()),
            "down_nnz": int(cols["nnz"][model].sum()),
            "sim_s": stats.sim_s,
        }
        row["wall_s"] = (time.perf_counter() if end is None else end) - t_round
        self.writer.append_round(row)
        self.writer.set_attrs(completed_rounds=rnd + 1, cum_wire_bytes=self.cum_bytes)
        self.progress.update(row)

    def _stop_workers(self, rnd: int, status: str) -> None:
        """STOP every worker, then join their final reports (which log the STOP)."""
        self.channel.complete(round=rnd)  # e.g. start-up messages of a resume with no round left
        stop = message(Kind.STOP, round=rnd, payload=protocol.stop_payload(status))
        for w in self.workers:
            self.channel.send(stop, w, what="STOP")
        times = RoundTimes()
        rows = self._collect_reports(rnd, times)
        stats = self._account(rnd, rows)
        self.cum_bytes += int(stats.columns["sender_bytes"].sum())
        self.writer.set_attrs(cum_wire_bytes=self.cum_bytes)


def _owing(expected: set[int], rank_of: dict[int, int]) -> str:
    """What an any-source wait for updates awaits: which clients, on which ranks."""
    ranks = sorted({rank_of[c] for c in expected})
    return (f"UPDATE of client(s) {', '.join(map(str, sorted(expected)))} from rank(s) "
            f"{', '.join(map(str, ranks))}")


def _peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _copy(state: dict) -> dict[str, np.ndarray]:
    """float32 numpy copies (checkpoints are written from the host; states change later)."""
    return {k: np.array(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v,
                        dtype=np.float32, copy=True) for k, v in state.items()}

