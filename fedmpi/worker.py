"""Client worker role (MPI ranks 1..N): hosts virtual clients, trains them in turn.

Per round: receive ASSIGN (the clients to run, with their settings) or STOP; for
each assigned client receive its MODEL, train, encode and send its UPDATE; on a
checkpoint round send each hosted client's compressor state (MEMORY); finally
send a REPORT with this rank's own log of every message it sent or received,
which the server joins with its own log (exact byte accounting).

With `compression.downlink_target: update` the MODEL carries the global update
Δ, not the weights: the rank keeps one replica of the global model and advances
it by the decoded Δ once per round (every copy of the round's MODEL carries the
same bytes); a rank with no client this round still receives the MODEL (client -1).

Every message goes through `fedmpi.channel`, which logs it.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace

import numpy as np
import torch

from fedmpi import protocol, wire
from fedmpi.channel import SERVER, Channel, encoded, message, state_message
from fedmpi.experiment import Experiment, client_generator
from fedmpi.faults import maybe_corrupt, maybe_fail, maybe_sleep
from fedmpi.train import set_state, train_local
from fedmpi.transport import TAG_HELLO, Transport
from fedmpi.wire import Kind

SNAPSHOT = protocol.SNAPSHOT  # ASSIGN flag: send every hosted client's state this round


class ClientWorker:
    def __init__(self, exp: Experiment, transport: Transport):
        self.exp = exp
        self.channel = Channel(transport)
        self.rank = transport.rank
        self.hosted = exp.clients_of(self.rank)
        # Per hosted client: its uplink compressor state (ctx.state), if the method keeps one.
        self.states = {c: exp.uplink.new_state() or {} for c in self.hosted}
        self.stateful = exp.uplink.new_state() is not None
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
        last, last_at = None, None  # the last round assigned (rounds go up by one), when
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
                return msg.status
            last = msg.round
            settings = msg.settings or ({},) * len(msg.clients)
            if self.replica is not None and not msg.clients:
                self._model(msg.round, -1)  # keep the replica in step
            for client, values in zip(msg.clients, settings):
                self._serve(msg.round, client, values)
            if msg.flags & SNAPSHOT:
                self._send_states(msg.round)
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

    # -------------------------------------------------- compressor state for checkpoints

    def _send_states(self, rnd: int) -> None:
        """Ship every hosted client's compressor state so rank 0 can checkpoint it."""
        for client in sorted(self.states):
            self.channel.send(state_message(self.states[client], round=rnd, client=client),
                              SERVER, what=f"compressor state of client {client}")

    def restore(self) -> None:
        """On --resume: each hosted client's compressor state, then the replica."""
        if self.stateful:
            for client in sorted(self.states):
                got = self.channel.recv(
                    Kind.MEMORY, SERVER, lambda buf, _, c=client: protocol.read_restore(
                        buf, rank=self.rank, client=c), log_round=-1,
                    what=f"compressor state of client {client}").value
                self.states[client].clear()
                self.states[client].update(got)
        if self.replica is not None:
            got = self.channel.recv(
                Kind.MEMORY, SERVER, lambda buf, _: protocol.read_restore(
                    buf, rank=self.rank, client=-1, spec=self.exp.spec), log_round=-1,
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
        ctx = exp.context(rnd, client, "up", state=self.states[client], settings=settings)
        enc = exp.encode(exp.uplink, local, ctx)
        out = encoded(Kind.UPDATE, enc, round=rnd, client=client, codec_id=exp.uplink.codec_id,
                      n_tensors=len(local))
        out = replace(out, codec_s=time.perf_counter() - t0)
        self.channel.send(out, SERVER, what=f"UPDATE of client {client}",
                          tamper=lambda buf: maybe_corrupt(cfg, self.rank, rnd, buf),
                          compute_s=compute_s, train_loss=loss,
                          samples=len(self.parts[client]))


def _on(device, state: dict) -> dict:
    """`state` on the codec device (torch tensors), or as float32 numpy arrays."""
    if device is None:
        return {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in state.items()}
