"""Client worker role (MPI ranks 1..N): hosts virtual clients, trains them in turn.

Per round: receive ASSIGN (the clients to run, with their settings) or STOP; for
each assigned client receive its MODEL, train, encode and send its UPDATE; on a
checkpoint round (ASSIGN flag SAVE_STATE) write each hosted client's compressor
state to this rank's own client-state file (`fedmpi.results.clientstate`; it never
crosses MPI), durably, before the REPORT; finally send a REPORT with this rank's own
log of every message it sent or received, which the server joins with its own log
(exact byte accounting).

With `compression.downlink_target: update` the MODEL carries the global update
Δ, not the weights: the rank keeps one replica of the global model and advances
it by the decoded Δ once per round (every copy of the round's MODEL carries the
same bytes); a rank with no client this round still receives the MODEL (client -1).

Every message goes through `fedmpi.channel`, which logs it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedmpi import protocol, wire
from fedmpi.channel import SERVER, Channel, encoded, message
from fedmpi.experiment import Experiment, client_generator
from fedmpi.faults import maybe_corrupt, maybe_fail, maybe_sleep
from fedmpi.results.clientstate import ClientStateStore
from fedmpi.train import set_state, train_local
from fedmpi.transport import TAG_HELLO, Transport
from fedmpi.wire import Kind

SAVE_STATE = protocol.SAVE_STATE  # ASSIGN flag: save every hosted client's state this round


@dataclass(frozen=True)
class Resume:
    """Where a resumed run continues (read from the result file by every rank, see
    `fedmpi.run`): the checkpoint round, the run identity, this rank's client states."""

    round: int
    run: str
    states: dict  # client -> its compressor state at `round` (empty: stateless uplink)


class ClientWorker:
    def __init__(self, exp: Experiment, transport: Transport, result=None,
                 resume: Resume | None = None):
        self.exp = exp
        self.channel = Channel(transport)
        self.rank = transport.rank
        # The clients this rank may run: every client when clients are stateless (the
        # server places each round's clients by their work), else its home clients.
        self.hosted = exp.clients_of(self.rank)
        self.stateful = exp.stateful
        # Per hosted client: its uplink compressor state (ctx.state), if the method keeps one.
        self.states = {c: exp.uplink.new_state() or {} for c in self.hosted}
        self.result, self.resume = result, resume  # the result file's path: state files beside it
        self.store: ClientStateStore | None = None  # opened by start() if stateful
        # UPDATE sends in flight while the next client trains (bounded: their buffers live)
        self.in_flight = max(1, exp.cfg.run.reorder_window)
        self.replica = None  # the global model as this rank's clients hold it (update mode)
        if exp.cfg.compression.downlink_target == "update":
            self.replica = _on(exp.codec_device, exp.initial_state())
        self.broadcast = None  # update mode: (round, payload) of the MODEL decoded last
        # Training data moves to the device once; clients index into it.
        self.x = torch.from_numpy(exp.train.x).to(exp.device)
        self.y = torch.from_numpy(exp.train.y).to(exp.device)
        self.parts = {c: torch.from_numpy(exp.parts[c]).to(exp.device) for c in self.hosted}

    def run(self) -> str:
        """Serve rounds until STOP; returns the run status the server sent with it."""
        try:
            return self._serve_rounds()
        finally:
            if self.store is not None:
                self.store.close()

    def _serve_rounds(self) -> str:
        # The last round assigned (rounds go up by one), when. Resumed: the first ASSIGN
        # (or STOP) must be the round after the checkpoint whose states this rank loaded.
        last = None if self.resume is None else self.resume.round
        last_at = None
        while True:
            msg = self.channel.recv(
                Kind.ASSIGN, SERVER, lambda buf, _, last=last: self._read_control(buf, last),
                what="ASSIGN or STOP", round=None if last is None else last + 1).value
            now = time.perf_counter()
            if last_at is not None:  # a round, as a worker sees it: control to control
                self.channel.liveness.observe_round(now - last_at)
            last_at = now
            if msg.kind == Kind.STOP:
                self.channel.report(msg.round)
                if msg.status == "completed" and self.store is not None:
                    self.store.discard()  # a completed run is not resumed (README policy)
                return msg.status
            last = msg.round
            settings = msg.settings or ({},) * len(msg.clients)
            if self.replica is not None and not msg.clients:
                self._model(msg.round, -1)  # keep the replica in step
            for client, values in zip(msg.clients, settings):
                self._serve(msg.round, client, values)
            self.channel.settle(round=msg.round)
            if msg.flags & SAVE_STATE:  # durable before the REPORT lets rank 0 checkpoint
                self.store.save(msg.round, {c: _host(s) for c, s in self.states.items()})
            self.channel.report(msg.round)

    def _read_control(self, buf, last: int | None) -> protocol.Control:
        return protocol.read_control(
            buf, rank=self.rank, hosted=self.parts, rounds=self.exp.cfg.rounds, last=last,
            feedback=self.stateful, settings=self.exp.strategy.client_settings)

    def hello(self) -> None:
        """Tell the server where this worker runs (JSON, read with json.loads only).

        Logged as round -1 ("startup") so that even this message is accounted.
        """
        payload = protocol.hello_payload(socket.gethostname(), self.exp.device_label)
        self.channel.send(message(Kind.REPORT, round=0, payload=payload), SERVER,
                          tag=TAG_HELLO, log_round=-1, what="hello")

    # -------------------------------------------------- start-up: client state, replica

    def start(self) -> None:
        """After the hello: open this rank's client-state store (stateful uplink) and, on
        --resume, take the states of the checkpoint round; receive the start-up MEMORY
        (a fresh run's identity, or on --resume with downlink_target update the
        replica). Must mirror `Server.start_up`."""
        resume = self.resume
        run = None if resume is None else resume.run
        if self.stateful and resume is None:
            run = self.channel.recv(
                Kind.MEMORY, SERVER, lambda buf, _: protocol.read_identity(buf, rank=self.rank),
                log_round=-1, what="run identity").value
        if self.stateful:
            self.store = ClientStateStore(self.result, self.rank, run)
            for client in self.hosted:
                if resume is not None:
                    self.states[client].clear()
                    self.states[client].update(resume.states[client])
        if self.replica is not None and resume is not None:
            got = self.channel.recv(
                Kind.MEMORY, SERVER, lambda buf, _: protocol.read_restore(
                    buf, rank=self.rank, spec=self.exp.spec), log_round=-1,
                what="replica of the global model").value
            self.replica = _on(self.exp.codec_device, got)

    # -------------------------------------------------- one client

    def _model(self, rnd: int, client: int) -> dict:
        """Receive this round's MODEL for `client`: the weights it starts from."""
        exp = self.exp
        first = self.broadcast is None or self.broadcast[0] != rnd
        same_as = None if first or self.replica is None else self.broadcast[1]

        def read(buf, _):
            tensors, _ = protocol.read_model(
                buf, rank=self.rank, round=rnd, client=client, codec=exp.downlink,
                spec=exp.spec, ctx=exp.context(rnd, -1, "down").for_decode(), same_as=same_as)
            if same_as is None and self.replica is not None:
                self.broadcast = (rnd, bytes(buf[wire.HEADER_SIZE:]))
            return tensors

        tensors = self.channel.recv(Kind.MODEL, SERVER, read, what=f"MODEL of client {client}",
                                    round=rnd).value
        if self.replica is None:
            return tensors
        if tensors is not None:  # the round's Δ, decoded once
            self.replica = {k: self.replica[k] + tensors[k] for k in self.replica}
        return self.replica

    def _serve(self, rnd: int, client: int, settings: dict) -> None:
        exp, cfg = self.exp, self.exp.cfg
        start = self._model(rnd, client)

        maybe_fail(cfg, rank=self.rank, round=rnd, where="train")
        maybe_sleep(cfg, rank=self.rank, round=rnd)
        set_state(exp.model, start)
        t = cfg.train
        loss, compute_s = train_local(
            exp.model, self.x[self.parts[client]], self.y[self.parts[client]],
            epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay, generator=client_generator(cfg.seed, rnd, client),
            amp=t.amp, **exp.strategy.local_options(settings))
        local = exp.model_state()  # with the torch codec: device tensors, encoded there
        if cfg.compression.target == "update":
            local = {k: local[k] - start[k] for k in local}

        t0 = time.perf_counter()
        ctx = exp.context(rnd, client, "up", state=self.states[client] if self.stateful else {},
                          settings=settings)
        enc = exp.encode(exp.uplink, local, ctx)
        out = encoded(Kind.UPDATE, enc, round=rnd, client=client, codec_id=exp.uplink.codec_id,
                      n_tensors=len(local))
        out = replace(out, codec_s=time.perf_counter() - t0)
        _test_delay(cfg.seed, rnd, client)
        # Posted: the next client trains while it travels (the server may take it late).
        self.channel.send_later(out, SERVER, tamper=lambda buf: maybe_corrupt(cfg, self.rank,
                                rnd, buf), compute_s=compute_s, train_loss=loss,
                                samples=len(self.parts[client]))
        self.channel.settle(keep=self.in_flight, round=rnd)


def _host(state: dict) -> dict[str, np.ndarray]:
    """A compressor state as host arrays in their own dtype (saved bit for bit)."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
            for k, v in state.items()}


def _on(device, state: dict) -> dict:
    """`state` on the codec device (torch tensors), or as float32 numpy arrays."""
    if device is None:
        return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in state.items()}


TEST_DELAY = "FEDMPI_TEST_DELAY"  # tests only: at most this many seconds before each UPDATE


def _test_delay(seed: int, rnd: int, client: int) -> None:
    """Tests only: hold each UPDATE back by a random time (a pure function of seed, round
    and client), so that updates reach the server in another order than client order."""
    top = float(os.environ.get(TEST_DELAY) or 0)
    if top > 0:
        time.sleep(top * np.random.default_rng([seed, rnd, client, 0xDE1A]).random())
