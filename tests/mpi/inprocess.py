"""Helpers for tests that run fedmpi in-process on every rank of `mpiexec -n 3 pytest --with-mpi`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def shared_tmp(comm, tmp_path_factory) -> Path:
    """One directory for all ranks: rank 0 makes it and broadcasts the name as bytes."""
    from mpi4py import MPI

    buf = np.zeros(1024, dtype=np.uint8)
    if comm.rank == 0:
        raw = str(tmp_path_factory.mktemp("run")).encode()
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    comm.Bcast([buf, MPI.BYTE], root=0)
    return Path(bytes(buf).rstrip(b"\0").decode())


def run_recorded(monkeypatch, comm, cfg_path, out, overrides):
    """Run fedmpi in-process on every rank, recording each message's real size."""
    from fedmpi import run, transport

    seen = []  # (direction as seen by this rank, tag, peer, nbytes)
    orig_send, orig_post, orig_recv = (transport.Transport.send, transport.Transport.post,
                                       transport.Transport.recv)
    orig_parts = transport.Transport.post_parts

    def send(self, buf, dest, tag, **context):
        seen.append(("sent", tag, dest, len(buf)))
        return orig_send(self, buf, dest, tag, **context)

    def post(self, buf, dest, tag, **key):
        seen.append(("sent", tag, dest, len(buf)))
        return orig_post(self, buf, dest, tag, **key)

    def post_parts(self, parts, dest, tag, **key):  # one message: header + shared payload
        seen.append(("sent", tag, dest, sum(len(p) for p in parts)))
        return orig_parts(self, parts, dest, tag, **key)

    def recv(self, source, tag, **context):
        buf, src, waited = orig_recv(self, source, tag, **context)
        seen.append(("received", tag, src, len(buf)))
        return buf, src, waited

    monkeypatch.setattr(transport.Transport, "send", send)
    monkeypatch.setattr(transport.Transport, "post", post)
    monkeypatch.setattr(transport.Transport, "post_parts", post_parts)
    monkeypatch.setattr(transport.Transport, "recv", recv)
    args = argparse.Namespace(config=str(cfg_path), out=str(out), overwrite=False, resume=None,
                              overrides=overrides)
    code = run.main(args)
    comm.Barrier()
    return code, seen
