"""Real runs under `mpiexec -n 3`: the global update on the downlink (every worker rank
keeps a replica), a stateful strategy with per-client settings in ASSIGN, and resume.

- downlink_target update with a lossy downlink: both ends agree on every byte, ranks
  with no sampled client still get the round's MODEL (client -1), every worker's
  replica is bit for bit the server's, and the model learns digits;
- a stateful strategy (server momentum, defined below: one class + one register line)
  with per-client settings, a stateful uplink and downlink compressor and downlink
  update: interrupted after round 1 and resumed, the run is bit-identical to one that
  was never stopped.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from inprocess import run_recorded, shared_tmp

from fedmpi.compress import spec_of
from fedmpi.compressors import base as compressors
from fedmpi.compressors import feedback
from fedmpi.strategies import base as strategies
from fedmpi.wire import WireFormatError

pytestmark = pytest.mark.mpi(min_size=3)
QUICK = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
LOSSY_DOWN = ("compression.downlink=[{prune: {rate: 0.8}}, {quantize: {method: float16}}, "
              "{sparse: {}}, {zstd: {}}]")
SETTINGS = ["rounds=6", "clients.num_clients=6", "clients.per_round=2",
            "compression.target=update", "compression.downlink_target=update",
            "compression.uplink=[{prune: {rate: 0.5}}, {memory: {}}, {sparse: {}}]"]


@dataclass(kw_only=True)
class ServerMomentum(strategies.Strategy):
    """Test strategy: momentum on the mean update (state: the velocity), and a per-client
    proximal term that travels in ASSIGN."""

    momentum: float = 0.5
    client_settings = ("prox_mu",)

    def settings(self, round, client):
        return {"prox_mu": 0.001 * (1 + client % 3)}

    def local_options(self, settings):
        return {"prox_mu": settings["prox_mu"]}

    def apply(self, reference, delta):
        v = getattr(self, "velocity", None) or {k: np.zeros_like(d, np.float32)
                                                for k, d in delta.items()}
        self.velocity = {k: (self.momentum * v[k] + delta[k]).astype(np.float32) for k in v}
        return {k: reference[k] + self.velocity[k] for k in reference}

    def state(self):
        return {k: v.copy() for k, v in getattr(self, "velocity", {}).items()}

    def load(self, state):
        self.velocity = {k: np.array(v, np.float32) for k, v in state.items()} or None


if "test_momentum" not in strategies.REGISTRY:
    strategies.register("test_momentum")(ServerMomentum)


@dataclass(frozen=True, kw_only=True)
class HalfEF(compressors.Compressor):
    """Test compressor: float16 values with error feedback, and a state entry that is no
    tensor of the model (an encode counter), as any stateful method may keep. Its
    decoder checks that it sees the client's settings the encoder saw."""

    stateful = True

    def encode(self, tensors, ctx):
        compressors.check_finite(self, tensors)
        c = feedback.compensate(tensors, ctx)
        half = {k: v.astype(np.float16) for k, v in c.items()}
        recon = {k: v.astype(np.float32) for k, v in half.items()}
        feedback.keep(ctx, c, recon)
        ctx.state["encodes"] = ctx.state.get("encodes", np.zeros(1, np.float32)) + 1
        # the client's setting rides along, so the decoder can check its context has it too
        mu = np.array([ctx.settings.get("prox_mu", 0.0)], "<f8").view(np.uint8)
        payload = np.concatenate([compressors.write_header(self, spec_of(c)), mu]
                                 + [v.reshape(-1).view(np.uint8) for v in half.values()])
        return compressors.encoded(payload, recon, nnz=sum(v.size for v in recon.values()))

    def decode(self, payload, spec, ctx):
        rest = compressors.read_header(self, payload, spec)
        mu = float(np.frombuffer(rest[:8].tobytes(), "<f8")[0])
        if mu != ctx.settings.get("prox_mu", 0.0):
            raise WireFormatError(f"encoded with prox_mu {mu!r}, decoded with "
                                  f"{ctx.settings.get('prox_mu')!r}")
        rest = rest[8:]
        sizes = compressors.numel_of(spec)
        if rest.nbytes != 2 * sum(sizes):
            raise WireFormatError(f"{rest.nbytes} value bytes for {sum(sizes)} values")
        values = np.frombuffer(rest.tobytes(), "<f2").astype(np.float32)
        if not np.isfinite(values).all():
            raise WireFormatError("values are not finite")
        out, at = {}, 0
        for (name, shape), n in zip(spec, sizes):
            out[name] = values[at:at + n].reshape(shape)
            at += n
        return out


if "test_half_ef" not in compressors.REGISTRY:
    compressors.register("test_half_ef")(HalfEF)


def _digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode() + np.ascontiguousarray(
            v.detach().cpu().numpy() if hasattr(v, "detach") else v).tobytes())
    return h.hexdigest()


@pytest.mark.timeout(300)
def test_global_update_on_the_downlink(monkeypatch, tmp_path_factory):
    from mpi4py import MPI

    from fedmpi import server, worker
    from fedmpi.wire import Kind

    comm = MPI.COMM_WORLD
    seen_replicas = []  # (round, digest): what clients start from / what the server holds
    orig_model, orig_bcast = worker.ClientWorker._model, server.Server._encode_broadcast

    def model(self, rnd, client):
        out = orig_model(self, rnd, client)
        seen_replicas.append((rnd, _digest(self.replica)))
        return out

    def bcast(self, global_state, rnd):
        out = orig_bcast(self, global_state, rnd)
        seen_replicas.append((rnd, _digest(self.replica)))
        assert out.reference is self.replica  # the server evaluates the clients' replica
        return out

    monkeypatch.setattr(worker.ClientWorker, "_model", model)
    monkeypatch.setattr(server.Server, "_encode_broadcast", bcast)
    out = shared_tmp(comm, tmp_path_factory) / "down.h5"
    code, seen = run_recorded(monkeypatch, comm, QUICK, out, SETTINGS + [LOSSY_DOWN])
    assert code == 0

    everyone = comm.gather(seen_replicas, root=0)
    with h5py.File(out, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
    np.testing.assert_array_equal(m["sender_bytes"], m["receiver_bytes"])
    if comm.rank == 0:
        sent = sorted(n for way, _t, _p, n in seen if way == "sent")
        assert sent == sorted(m["sender_bytes"][m["direction"] == 0].tolist())
        server_replica = dict(everyone[0])
        for w_seen in everyone[1:]:
            assert w_seen, "a worker never received a MODEL"
            for rnd, digest in w_seen:
                assert digest == server_replica[rnd], f"replica differs in round {rnd}"
    model_rows = m["kind"] == Kind.MODEL
    for rnd in range(6):
        at = m["round"] == rnd
        for w in (1, 2):
            mine = at & (m["worker"] == w)
            updates = int((mine & (m["kind"] == Kind.UPDATE)).sum())
            models = m["client"][mine & model_rows].tolist()
            # one MODEL per sampled client, or one for the rank itself (client -1)
            assert models == ([-1] if updates == 0 else sorted(m["client"][
                mine & (m["kind"] == Kind.UPDATE)].tolist())), (rnd, w, models)
        assert r["down_bytes"][rnd] == m["sender_bytes"][at & model_rows].sum()
    assert (m["client"][model_rows] == -1).any()  # some round left a rank without a client
    assert r["test_accuracy"][-1] > 0.85  # digits, 6 rounds of 2 clients (0.92 measured)


def _run(monkeypatch, comm, out, overrides, *, resume=False):
    from fedmpi import run

    args = argparse.Namespace(config=None if resume else str(QUICK), out=None if resume else
                              str(out), overwrite=False, resume=str(out) if resume else None,
                              overrides=[] if resume else overrides)
    code = run.main(args)
    comm.Barrier()
    return code


@pytest.mark.timeout(300)
@pytest.mark.parametrize("uplink", ["[{prune: {rate: 0.5}}, {memory: {}}, {sparse: {}}]",
                                    "{test_half_ef: {}}"], ids=["stages", "registered"])
def test_resume_is_bit_identical_with_stateful_strategy_and_compressors(
        monkeypatch, tmp_path_factory, uplink):
    from mpi4py import MPI

    from fedmpi import server, signals, train, worker

    comm = MPI.COMM_WORLD
    d = shared_tmp(comm, tmp_path_factory)
    overrides = SETTINGS + [
        "strategy={test_momentum: {momentum: 0.5}}", f"compression.uplink={uplink}",
        "compression.downlink=[{prune: {rate: 0.8}}, {memory: {}}, {sparse: {}}]"]
    mus = []
    orig_train = train.train_local

    def train_local(*a, **kw):
        mus.append(kw["prox_mu"])
        return orig_train(*a, **kw)

    monkeypatch.setattr(worker, "train_local", train_local)
    assert _run(monkeypatch, comm, d / "full.h5", overrides) == 0
    if comm.rank:  # the settings the strategy chose reached the workers' training
        assert mus and set(mus) <= {float(np.float32(0.001 * k)) for k in (1, 2, 3)}

    orig_account = server.Server._account

    def account(self, rnd, *a):  # the end of a round (its row may be written later)
        out = orig_account(self, rnd, *a)
        if rnd == 1:
            self.stop.requested = True  # as SIGUSR1 does
        return out

    monkeypatch.setattr(server.Server, "_account", account)
    assert _run(monkeypatch, comm, d / "cut.h5", overrides) == signals.EXIT_INTERRUPTED
    monkeypatch.setattr(server.Server, "_account", orig_account)
    signals.install().requested = False  # as in a fresh process (later tests share this one)
    if "test_half_ef" in uplink:  # any state entry, not only residuals of model tensors,
        # kept in the workers' own files (rounds 0 and 1: 2 clients per round)
        from fedmpi.results import clientstate
        from fedmpi.run import run_id_of

        ident, _ = run_id_of(d / "cut.h5")
        encodes = 0
        for rank in (1, 2):
            states = clientstate.read_states(clientstate.state_path(d / "cut.h5", rank, 1),
                                             run=ident, rank=rank, round=1)
            encodes += sum(int(s["encodes"][0]) for s in states.values() if s)
        assert encodes == 2 * 2
    comm.Barrier()
    assert _run(monkeypatch, comm, d / "cut.h5", overrides, resume=True) == 0

    with h5py.File(d / "full.h5", "r", locking=False) as a, \
            h5py.File(d / "cut.h5", "r", locking=False) as b:
        assert b.attrs["status"] == "completed" and int(b.attrs["resumed_from_round"]) == 1
        for k in ("test_accuracy", "test_loss", "train_loss", "up_bytes", "down_bytes"):
            np.testing.assert_array_equal(a["rounds"][k][()], b["rounds"][k][()], err_msg=k)
    from fedmpi.results import read_checkpoint

    full, cut = read_checkpoint(d / "full.h5"), read_checkpoint(d / "cut.h5")
    assert full.round == cut.round == 5
    for k in full.global_state:
        np.testing.assert_array_equal(full.global_state[k], cut.global_state[k], err_msg=k)
    assert set(full.memories) == {"server", "strategy", "replica"}  # no client state
    assert full.memories["strategy"]  # the velocity is checkpointed
    for owner in full.memories:
        for k in full.memories[owner]:
            np.testing.assert_array_equal(full.memories[owner][k], cut.memories[owner][k],
                                          err_msg=f"{owner}/{k}")
