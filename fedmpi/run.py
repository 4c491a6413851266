"""`fedmpi run CONFIG`: one experiment; rank 0 is the server, ranks 1..N client workers.

Two phases, so that nothing can hang:
1. configuration: every rank parses and validates the same config (pure); an
   Allreduce of the outcome makes every rank exit 2 together, rank 0 printing
   the one message;
2. the run: any exception on any rank is printed with the rank and cause, rank 0
   marks the result file `failed`, and `MPI.COMM_WORLD.Abort` ends the job.
Exit codes: 0 completed, 2 bad configuration, 75 interrupted (resumable), other
non-zero failed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import traceback
from pathlib import Path

from fedmpi.errors import ConfigError
from fedmpi.signals import EXIT_INTERRUPTED

EXIT_CONFIG = 2
FAIL_GRACE_S = 6.0  # how long a failing worker lets rank 0 record the failure (< 10 s)


def add_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="experiment YAML (not needed with --resume)")
    p.add_argument("--out", help="result file (default: the config's output or results/<name>.h5)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result file")
    p.add_argument("--resume", metavar="FILE", help="continue an interrupted run from its checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.local_epochs=10 (repeatable)")


def main(args) -> int:
    from mpi4py import MPI

    from fedmpi.signals import StopFlag

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    stop = StopFlag.install(rank)  # first: a signal during start-up must not kill a rank
    from fedmpi.devices import node_of

    local_rank = node_of(comm)  # node-local rank, ranks on the node, does it host rank 0

    from fedmpi.transport import Transport

    net = Transport(comm)
    error, plan = None, None
    try:
        plan = _plan(args, size)
    except Exception as exc:  # noqa: BLE001 - every rank must reach the Allreduce below
        error = exc
    if not net.all_ok(error is None):
        if rank == 0:
            print(f"fedmpi: configuration error: {_describe(error)}", file=sys.stderr)
        return EXIT_CONFIG
    if plan["already_completed"]:
        if rank == 0:
            print(f"fedmpi: {plan['out']} is already completed; nothing to resume")
        return 0
    if args.resume and not plan["resume"] and rank == 0:
        print(f"fedmpi: {plan['out']} has no checkpoint yet: starting the run over",
              file=sys.stderr)
    return _run(comm, net, rank, size, local_rank, plan, stop)


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "on another rank"
    return str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"


def _plan(args, world_size: int) -> dict:
    """Everything decided before training: identical on every rank, raises ConfigError."""
    from fedmpi import config as cfgmod
    from fedmpi import faults, models
    from fedmpi.experiment import build_pipelines

    already_completed, resume, overwrite = False, bool(args.resume), args.overwrite
    if args.resume:
        out = Path(args.resume)
        cfg, text, already_completed, has_checkpoint = _resume_config(out)
        if not has_checkpoint:  # killed before its first checkpoint: start it over
            resume, overwrite = False, True
    else:
        if not args.config:
            raise ConfigError("config", None, "a YAML config path (or --resume FILE)")
        cfg, text = cfgmod.load(args.config, args.overrides)
        out = Path(args.out) if args.out else cfg.output_path
        if out.exists() and not args.overwrite:
            raise ConfigError("--out", str(out), "a path that does not exist yet; pass --overwrite "
                              "to replace it or --resume to continue it")
    cfgmod.check_world(cfg, world_size)
    faults.validate(cfg.run.fail_at)
    build_pipelines(cfg)
    if cfg.data.dataset == "cifar10":  # a missing data set is a config error, found up front
        from fedmpi.data.cifar10 import resolve_path

        resolve_path(cfg.data.path)
    if cfg.train.model not in models.available():
        raise ConfigError("train.model", cfg.train.model, " | ".join(models.available()))
    return {"cfg": cfg, "text": text, "out": out, "already_completed": already_completed,
            "resume": resume, "overwrite": overwrite}


def _resume_config(path: Path):
    """(config, text, completed?, has a checkpoint?) of a result file to continue."""
    import h5py

    from fedmpi import config as cfgmod

    if not path.is_file():
        raise ConfigError("--resume", str(path), "an existing result file")
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {k: f.attrs[k] for k in ("status", "config_json", "config_yaml", "hosts",
                                              "server_pid") if k in f.attrs}
            has_checkpoint = "checkpoint" in f
        resolved = json.loads(str(attrs["config_json"]))
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError("--resume", str(path), "a readable fedmpi result file "
                          f"({type(exc).__name__}: {exc}); rerun its config with --overwrite") from None
    status = str(attrs.get("status", ""))
    _refuse_live_writer(path, status, attrs)
    return cfgmod.from_dict(resolved), str(attrs.get("config_yaml", "")), \
        status == "completed", has_checkpoint


def _refuse_live_writer(path: Path, status: str, attrs: dict) -> None:
    """Two writers would corrupt the file: refuse while its run is alive on this host."""
    if status != "running" or "server_pid" not in attrs:
        return
    try:
        host = json.loads(str(attrs.get("hosts", "[]")) or "[]")[:1]
    except ValueError:
        host = []
    pid = int(attrs["server_pid"])
    if host == [socket.gethostname()] and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except OSError:
            return  # that run is gone
        raise ConfigError("--resume", str(path), f"a file no live run writes (pid {pid} on this "
                          "host is still running it; stop it first: kill -USR1 it)")


def _run(comm, net, rank, size, local_rank, plan, stop) -> int:
    cfg = plan["cfg"]
    writer = None
    try:
        if rank == 0:
            writer, state = _open_results(plan, size)
        from fedmpi.experiment import build
        from fedmpi.faults import maybe_fail

        maybe_fail(cfg, rank=rank, round=None, where="data")
        if rank == 0:  # decode/cache the data set once, before every rank loads it
            from fedmpi import data

            data.prepare(cfg.data.dataset, path=cfg.data.path)
        net.barrier()
        try:  # data-dependent checks (subset sizes, partition feasibility) live in build
            exp, error = build(cfg, rank=rank, world_size=size, node=local_rank), None
        except ConfigError as exc:
            exp, error = None, exc
        if not net.all_ok(error is None):
            if rank == 0:
                print(f"fedmpi: configuration error: {_describe(error)}", file=sys.stderr)
                _discard(writer, plan)
            return EXIT_CONFIG
        if rank == 0:
            return _serve(exp, net, writer, state, stop)
        return _work(exp, net, resumed=plan["resume"])
    except BaseException as exc:  # noqa: BLE001 - any failure must end the whole job
        _fail(comm, rank, exc, writer, net)
        return 1  # not reached: Abort ends the process


def _discard(writer, plan) -> None:
    """A run stopped by a config error leaves no new file behind (a resumed one says why)."""
    if plan["resume"]:
        writer.finish("failed", "configuration error on resume")
        return
    writer.close()  # with --overwrite this keeps the old file and drops the temporary one
    if not plan["overwrite"]:
        plan["out"].unlink(missing_ok=True)


def _open_results(plan, size):
    from fedmpi.results import ResultsWriter, read_checkpoint
    from fedmpi.server import ServerState

    cfg, out = plan["cfg"], plan["out"]
    if plan["resume"]:
        import h5py

        ckpt = read_checkpoint(out)
        with h5py.File(out, "r", locking=False) as f:
            clean_stop = str(f.attrs.get("status", "")) == "interrupted"
            segment = int(f.attrs.get("segment", 0)) + 1
            if clean_stop:  # checkpointed at its last round; only its STOP exchange follows
                cum = int(f.attrs.get("cum_wire_bytes", 0))
            else:  # crashed: rounds after the checkpoint are redone, their rows dropped
                cum = int(f["rounds/cum_wire_bytes"][ckpt.round]) if ckpt.round >= 0 else 0
        writer = ResultsWriter(out, attrs={}, resume=True)
        if not clean_stop:
            writer.truncate_after(ckpt.round)
        writer.set_attrs(status="running", failure_reason="", completed_rounds=ckpt.round + 1,
                         server_pid=os.getpid(), segment=segment,
                         resumed_from_round=ckpt.round, world_size=size, num_workers=size - 1)
        writer.flush()
        state = ServerState(round=ckpt.round, global_state=ckpt.global_state,
                            memory=ckpt.memories.get("server", {}), cum_bytes=cum,
                            segment=segment,
                            client_memories={int(k.split("_", 1)[1]): v
                                             for k, v in ckpt.memories.items()
                                             if k.startswith("client_")})
        return writer, state
    from fedmpi.experiment import build_pipelines

    writer = ResultsWriter(out, attrs=_metadata(cfg, plan["text"], size),
                           overwrite=plan["overwrite"])
    up, down = build_pipelines(cfg)
    writer.set_codecs({0: "control", up.codec_id: up.name, down.codec_id: down.name})
    # No flush yet: with --overwrite the old file is replaced only once a round is done.
    return writer, None


def _serve(exp, net, writer, state, stop) -> int:
    from fedmpi.progress import Progress
    from fedmpi.server import Server, ServerState

    cfg = exp.cfg
    progress = Progress(cfg.rounds, initial=0 if state is None else state.round + 1)
    server = Server(exp, net, writer, progress, stop)
    hellos = server.hellos()
    devices = [exp.device_label] + [h["device"] for h in hellos]
    writer.set_attrs(hosts=json.dumps([socket.gethostname()] + [h["host"] for h in hellos]),
                     devices=json.dumps(devices))
    from fedmpi.devices import announce

    announce(devices)
    writer.write_clients(client=list(range(cfg.clients.num_clients)),
                         worker=[1 + c % exp.num_workers for c in range(cfg.clients.num_clients)],
                         samples=exp.samples, class_histogram=exp.histogram)
    if state is None:
        state = ServerState(round=-1, global_state=exp.initial_state())
    status = server.run(state)
    progress.close()
    writer.finish(status, f"stopped by {stop.signal_name}" if status == "interrupted" else "")
    _print_summary(writer.path)
    return 0 if status == "completed" else EXIT_INTERRUPTED


def _work(exp, net, resumed: bool) -> int:
    from fedmpi.worker import ClientWorker

    worker = ClientWorker(exp, net)
    worker.hello()
    if resumed:
        worker.restore_memories()
    status = worker.run()
    return 0 if status == "completed" else EXIT_INTERRUPTED


def _fail(comm, rank, exc, writer, net) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    sys.stderr.write(f"fedmpi: rank {rank} failed: {reason}\n")
    if not isinstance(exc, (ConfigError,)):
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    if rank == 0:
        if writer is not None:
            try:
                writer.finish("failed", reason if "rank" in reason else f"rank 0: {reason}")
            except Exception as inner:  # noqa: BLE001 - still abort below
                sys.stderr.write(f"fedmpi: could not mark the result file failed: {inner}\n")
    else:
        net.send_failure(0, f"rank {rank}: {reason}", FAIL_GRACE_S)
    comm.Abort(1)


def _metadata(cfg, text: str, size: int) -> dict:
    import mpi4py
    import numpy
    import torch
    from mpi4py import MPI

    import fedmpi
    from fedmpi.experiment import build_pipelines

    up, down = build_pipelines(cfg)
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "config_yaml": text,
        "config_json": cfg.to_json(),
        "fedmpi_version": fedmpi.__version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "mpi4py_version": mpi4py.__version__,
        "mpi_library_version": MPI.Get_library_version().strip().splitlines()[0],
        "world_size": size,
        "num_workers": size - 1,
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        "server_pid": os.getpid(),  # where to send SIGUSR1/SIGTERM for a graceful stop
        "segment": 0,
        "uplink_codec": up.name,
        "uplink_codec_id": up.codec_id,
        "downlink_codec": down.name,
        "downlink_codec_id": down.codec_id,
    }


def _git_commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent, timeout=5)
        commit = out.stdout.strip()
        return commit + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _print_summary(path) -> None:
    from fedmpi.summary import summary_lines

    for line in summary_lines(path):
        print(line, flush=True)
    sys.stdout.flush()
