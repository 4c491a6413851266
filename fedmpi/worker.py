"""Client worker role (MPI ranks 1..N): hosts virtual clients, trains them in turn.

Per round: receive ASSIGN (the clients to run) or STOP; for each assigned client
receive its MODEL, train, encode and send its UPDATE; finally send a REPORT with
this rank's own log of every message it sent or received, which the server joins
with its own log (exact byte accounting).
"""

from __future__ import annotations

import socket
import time

import numpy as np
import torch

from fedmpi import accounting, protocol, wire
from fedmpi.compress import build_pipeline
from fedmpi.experiment import Experiment, client_generator
from fedmpi.faults import maybe_corrupt, maybe_fail
from fedmpi.train import set_state, train_local
from fedmpi.transport import (
    TAG_CONTROL,
    TAG_HELLO,
    TAG_MEMORY,
    TAG_MODEL,
    TAG_REPORT,
    TAG_UPDATE,
    Transport,
)
from fedmpi.wire import Kind

SERVER = 0
SNAPSHOT = protocol.SNAPSHOT  # ASSIGN flag: send every hosted client's residual this round


class ClientWorker:
    def __init__(self, exp: Experiment, transport: Transport):
        self.exp = exp
        self.net = transport
        self.rank = transport.rank
        self.ledger = accounting.Ledger()
        self.memories = {c: exp.uplink.new_memory() for c in exp.clients_of(self.rank)}
        self.has_memory = exp.uplink.new_memory() is not None
        self.dense = build_pipeline([], field="(checkpoint)")
        # Training data moves to the device once; clients index into it.
        self.x = torch.from_numpy(exp.train.x).to(exp.device)
        self.y = torch.from_numpy(exp.train.y).to(exp.device)
        self.parts = {c: torch.from_numpy(exp.parts[c]).to(exp.device)
                      for c in exp.clients_of(self.rank)}

    def run(self) -> str:
        """Serve rounds until STOP; returns the run status the server sent with it."""
        last, last_at = None, None  # the last round assigned (rounds go up by one), when
        while True:
            buf, _, waited = self.net.recv(SERVER, TAG_CONTROL, what="ASSIGN or STOP",
                                           round=None if last is None else last + 1)
            now = time.perf_counter()
            if last_at is not None:  # a round, as a worker sees it: control to control
                self.net.liveness.observe_round(now - last_at)
            last_at = now
            msg = protocol.read_control(buf, rank=self.rank, hosted=self.parts,
                                        rounds=self.exp.cfg.rounds, last=last,
                                        feedback=self.has_memory)
            self.ledger.log(round=msg.round, kind=msg.kind, client=-1, worker=self.rank,
                            nbytes=len(buf), xfer_s=waited)
            if msg.kind == Kind.STOP:
                self._report(msg.round)
                return msg.status
            last = msg.round
            for client in msg.clients:
                self._serve(msg.round, client)
            if msg.flags & SNAPSHOT:
                self._send_memories(msg.round)
            self._report(msg.round)

    def hello(self) -> None:
        """Tell the server where this worker runs (JSON, read with json.loads only).

        Logged as round -1 ("startup") so that even this message is accounted.
        """
        payload = protocol.hello_payload(socket.gethostname(), self.exp.device_label)
        buf = wire.frame(Kind.REPORT, round=0, client=-1, payload=payload)
        sent = self.net.send(buf, SERVER, TAG_HELLO, what="hello")
        self.ledger.log(round=-1, kind=Kind.REPORT, client=-1, worker=self.rank,
                        nbytes=len(buf), xfer_s=sent)

    # -------------------------------------------------- error-feedback state for checkpoints

    def _send_memories(self, rnd: int) -> None:
        """Ship every hosted client's residual (dense) so rank 0 can checkpoint it."""
        for client in sorted(self.memories):
            state = self.memories[client].state()
            # A client not sampled yet has no residual: zeros, by definition.
            enc = self.dense.encode({name: state.get(name, np.zeros(shape, np.float32))
                                     for name, shape in self.exp.spec})
            buf = wire.frame(Kind.MEMORY, round=rnd, client=client, payload=enc.payload,
                             codec_id=self.dense.codec_id, n_tensors=len(self.exp.spec))
            sent = self.net.send(buf, SERVER, TAG_MEMORY, round=rnd,
                                 what=f"error-feedback residual of client {client}")
            self.ledger.log(round=rnd, kind=Kind.MEMORY, client=client, worker=self.rank,
                            nbytes=len(buf), dense_bytes=enc.dense_bytes, numel=enc.numel,
                            nnz=enc.nnz, codec_id=self.dense.codec_id, xfer_s=sent,
                            direction=accounting.UP)

    def restore_memories(self) -> None:
        """On --resume: receive each hosted client's residual from the checkpoint."""
        if not self.has_memory:
            return
        for client in sorted(self.memories):
            buf, _, waited = self.net.recv(SERVER, TAG_MEMORY,
                                           what=f"error-feedback residual of client {client}")
            self.memories[client].load(protocol.read_restore(
                buf, rank=self.rank, client=client, pipeline=self.dense, spec=self.exp.spec))
            self.ledger.log(round=-1, kind=Kind.MEMORY, client=client, worker=self.rank,
                            nbytes=len(buf), xfer_s=waited, direction=accounting.DOWN)

    def _serve(self, rnd: int, client: int) -> None:
        exp, cfg = self.exp, self.exp.cfg
        buf, _, waited = self.net.recv(SERVER, TAG_MODEL, what=f"MODEL of client {client}",
                                       round=rnd)
        start, decode_s = protocol.read_model(buf, rank=self.rank, round=rnd, client=client,
                                              pipeline=exp.downlink, spec=exp.spec,
                                              device=exp.codec_device)
        self.ledger.log(round=rnd, kind=Kind.MODEL, client=client, worker=self.rank,
                        nbytes=len(buf), codec_s=decode_s, xfer_s=waited)

        maybe_fail(cfg, rank=self.rank, round=rnd, where="train")
        set_state(exp.model, start)
        t = cfg.train
        loss, compute_s = train_local(
            exp.model, self.x[self.parts[client]], self.y[self.parts[client]],
            epochs=t.local_epochs, batch_size=t.batch_size, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay, generator=client_generator(cfg.seed, rnd, client),
            amp=t.amp)
        local = exp.model_state()  # on a GPU: device tensors, encoded there
        if cfg.compression.target == "update":
            local = {k: local[k] - start[k] for k in local}

        t0 = time.perf_counter()
        enc = exp.uplink.encode(local, memory=self.memories[client])
        out = wire.frame(Kind.UPDATE, round=rnd, client=client, payload=enc.payload,
                         codec_id=exp.uplink.codec_id, n_tensors=len(local))
        encode_s = time.perf_counter() - t0
        out = maybe_corrupt(cfg, self.rank, rnd, out)
        sent = self.net.send(out, SERVER, TAG_UPDATE, what=f"UPDATE of client {client}",
                             round=rnd)
        self.ledger.log(round=rnd, kind=Kind.UPDATE, client=client, worker=self.rank,
                        nbytes=len(out), dense_bytes=enc.dense_bytes, numel=enc.numel,
                        nnz=enc.nnz, codec_id=exp.uplink.codec_id, codec_s=encode_s,
                        xfer_s=sent, compute_s=compute_s, train_loss=loss,
                        samples=len(self.parts[client]))

    def _report(self, rnd: int) -> None:
        """Send this rank's log; the report logs itself (its size is known in advance)."""
        rows = self.ledger.rows
        size = wire.HEADER_SIZE + (len(rows) + 1) * accounting.VIEW_DTYPE.itemsize
        self.ledger.log(round=rnd, kind=Kind.REPORT, client=-1, worker=self.rank, nbytes=size)
        buf = wire.frame(Kind.REPORT, round=rnd, client=-1,
                         payload=accounting.report_payload(self.ledger.drain()))
        assert len(buf) == size, (len(buf), size)
        self.net.send(buf, SERVER, TAG_REPORT, what="REPORT", round=rnd)

