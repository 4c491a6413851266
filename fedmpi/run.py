"""`fedmpi run CONFIG`: one experiment; rank 0 is the server, ranks 1..N client workers.

Two phases, so that nothing can hang:
1. configuration: every rank parses and validates the same config (pure); an
   Allreduce of the outcome makes every rank exit 2 together, rank 0 printing
   the one message;
2. the run: any exception on any rank is printed with the rank and cause, rank 0
   marks the result file `failed`, and `MPI.COMM_WORLD.Abort` ends the job.
Every wait on another rank has a deadline (`fedmpi.liveness`): a stopped or hung
rank ends the job like a failing one.
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
from fedmpi.liveness import LivenessError
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
    stop = StopFlag.install(rank)  # already installed by `fedmpi run`; now rank 0 may report
    from fedmpi.devices import node_of

    local_rank = node_of(comm)  # node-local rank, ranks on the node, does it host rank 0

    from fedmpi.backoff import PollPolicy
    from fedmpi.transport import Transport

    net = Transport(comm)
    error, plan = None, None
    try:
        plan = _plan(args, size, rank)
        net.liveness.timeout_s = plan["cfg"].run.timeout_s
        net.poll = PollPolicy.of(plan["cfg"].run.poll)
        if rank == 0:  # the writer's lock, before anything is written (see _lock_output)
            plan = _lock_output(args, plan, size)
    except Exception as exc:  # noqa: BLE001 - every rank must reach the Allreduce below
        error = exc
    try:
        ok = net.all_ok(error is None, what="the configuration check")
    except Exception as exc:  # noqa: BLE001 - a silent or failed rank: end the whole job
        _fail(comm, rank, exc, None, net)
        return 1  # not reached: Abort ends the process
    if not ok:
        if rank == 0:
            _unlock(plan)
            print(f"fedmpi: configuration error: {_describe(error)}", file=sys.stderr)
        elif isinstance(error, RankConfigError):  # only this rank knows (its own files)
            print(f"fedmpi: rank {rank}: configuration error: {_describe(error)}",
                  file=sys.stderr)
        return EXIT_CONFIG
    if plan["already_completed"]:
        if rank == 0:
            _unlock(plan)
            print(f"fedmpi: {plan['out']} is already completed; nothing to resume")
        return 0
    if args.resume and not plan["resume"] and rank == 0:
        print(f"fedmpi: {plan['out']} has no checkpoint yet: starting the run over",
              file=sys.stderr)
    return _run(comm, net, rank, size, local_rank, plan, stop)


class RankConfigError(ConfigError):
    """A configuration error only one worker rank can see (its client-state files)."""


def _describe(error: BaseException | None) -> str:
    from fedmpi.errors import clip

    if error is None:
        return "on another rank (see its message)"
    text = str(error) if isinstance(error, ConfigError) else f"{type(error).__name__}: {error}"
    return clip(text, 1000)


def _plan(args, world_size: int, rank: int = 0) -> dict:
    """Everything decided before training: identical on every rank, raises ConfigError.

    Only rank 0 probes that the result file can be written (workers may not even see
    its file system); a failure there still reaches every rank through the Allreduce.
    """
    from fedmpi import config as cfgmod
    from fedmpi import faults, models
    from fedmpi.experiment import build_links, effective_threads

    already_completed, resume, overwrite = False, bool(args.resume), args.overwrite
    if args.resume:
        out = Path(args.resume)
        cfg, text, already_completed, has_checkpoint = _resume_config(out, args)
        if not has_checkpoint:  # killed before its first checkpoint: start it over
            resume, overwrite = False, True
    else:
        if not args.config:
            raise ConfigError("config", None, "a YAML config path (or --resume FILE)")
        cfg, text = cfgmod.load(args.config, args.overrides)
        cfg.run.threads = effective_threads(cfg.run.threads)  # stored in config_json
        out = Path(args.out) if args.out else cfg.output_path
        field = "--out" if args.out else "output"
        _check_out_name(out, field)
        if out.exists() and not args.overwrite:
            raise ConfigError(field, str(out), "a path that does not exist yet; pass --overwrite "
                              "to replace it or --resume to continue it")
    cfgmod.check_world(cfg, world_size)
    faults.validate(cfg.run.fail_at)
    build_links(cfg)
    if cfg.data.dataset == "cifar10":  # a missing data set is a config error, found up front
        from fedmpi.data.cifar10 import resolve_path

        resolve_path(cfg.data.path)
    if cfg.train.model not in models.available():
        raise ConfigError("train.model", cfg.train.model, " | ".join(models.available()))
    client_resume = None
    if resume and not already_completed:
        _check_checkpoint_fits(out, cfg)
        if rank != 0:
            client_resume = _client_resume(out, cfg, rank, world_size)
    if rank == 0 and not already_completed:
        _check_writable(out, "--resume" if args.resume else "--out" if args.out else "output")
    return {"cfg": cfg, "text": text, "out": out, "already_completed": already_completed,
            "resume": resume, "overwrite": overwrite, "client_resume": client_resume}


def run_id_of(path: Path) -> tuple[str, int]:
    """(run identity, checkpoint round) of a result file, as every rank reads them on
    --resume: sha256 of the stored resolved config and the run's first start time
    (`clientstate.run_identity`), and the round of its latest complete checkpoint."""
    import h5py

    from fedmpi.results.checkpoint import find_group
    from fedmpi.results.clientstate import run_identity
    from fedmpi.results.hdf import plain

    with h5py.File(path, "r", locking=False) as f:
        config = json.loads(str(plain(f.attrs["config_json"])))
        start = str(plain(f.attrs["start_time"]))
        g = find_group(f)
        round_ = int(g.attrs["round"]) if g is not None else -1
    return run_identity(config, start), round_


def _client_resume(path: Path, cfg, rank: int, world_size: int):
    """A worker rank's resume point: its clients' compressor states of the checkpoint
    round, read from its own file (a stateful uplink; else none), checked now so that
    a missing, foreign or damaged file stops every rank before anything starts."""
    from fedmpi.experiment import build_links, worker_of
    from fedmpi.results import ResultsError
    from fedmpi.results.clientstate import load_states
    from fedmpi.worker import Resume

    try:
        run, round_ = run_id_of(path)
    except (OSError, KeyError, ValueError, RuntimeError, ResultsError) as exc:
        raise _unreadable(path, "a result file with a readable run identity", exc,
                          RankConfigError) from None
    up, _ = build_links(cfg)
    if up.new_state() is None:
        return Resume(round_, run, {})
    hosted = [c for c in range(cfg.clients.num_clients) if worker_of(c, world_size - 1) == rank]
    try:
        states = load_states(path, rank=rank, round=round_, run=run, clients=hosted)
    except ResultsError as exc:
        raise RankConfigError("--resume", str(path), f"a run whose worker rank {rank} has its "
                              f"clients' compressor state of checkpoint round {round_} "
                              f"({exc}); without it the run cannot continue exactly: rerun "
                              "its config with --overwrite") from None
    return Resume(round_, run, states)


def _check_out_name(out: Path, field: str) -> None:
    if "\0" in str(out) or not out.name or out.name in (".", ".."):
        raise ConfigError(field, str(out), "a file path")
    if out.is_dir():
        raise ConfigError(field, str(out), "a file path, not a folder")


def _check_writable(out: Path, field: str) -> None:
    """The result file's folder exists or can be created, and takes new files.

    Found here, before any rank starts work, rather than as a traceback from h5py once
    every rank has loaded its data. The probe creates and removes one empty file in the
    deepest folder that exists, so nothing is left behind.
    """
    import tempfile

    folder = out.absolute().parent
    while not folder.exists() and folder != folder.parent:
        if folder.is_symlink():  # dangling link: exists() is False, mkdir would fail
            break
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(field, str(out), f"a path whose folder can be created ('{folder}' "
                          "is not a folder)")
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(field, str(out), "a writable file (permission denied)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".fedmpi-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(field, str(out), f"a path in a writable folder ('{folder}': "
                          f"{exc.strerror or exc})") from None


def _held(field: str, path: Path, holder: dict, held: str = "",
          cls=ConfigError) -> ConfigError:
    """The error for a result file another live run writes, naming it and how to stop it
    (`held`: the lock file it holds, when known)."""
    from fedmpi.results.lock import holder_text

    pid = holder.get("pid")
    stop = f": kill -USR1 {pid}" if isinstance(pid, int) else ""
    holds = f" and holds {held}" if held else ""
    return cls(field, str(path), f"a file no other run is writing ({holder_text(holder)}"
               f"{holds}; wait for it or stop it first{stop})")


def _unreadable(path: Path, allowed: str, exc: BaseException, cls=ConfigError) -> ConfigError:
    """The error for a result file that did not read back: "still running" when its run
    holds it (a read racing the writer fails midway, which is no damage), else `allowed`."""
    from fedmpi.results.lock import live_holder

    holder = live_holder(path)
    if holder is not None:
        return _held("--resume", path, holder, cls=cls)
    return cls("--resume", str(path), f"{allowed} ({type(exc).__name__}: {exc})")


_RESUME_ATTRS = ("status", "config_json", "config_yaml", "hosts", "server_pid", "schema_version",
                 "fedmpi_version")


def _resume_config(path: Path, args=None):
    """(config, text, completed?, has a checkpoint?) of a result file to continue.

    Only reads the file: whatever is wrong with it (unreadable, newer schema, stored config
    invalid, CONFIG/--set/--out that would change the run) is a ConfigError and the file
    keeps its bytes and its mtime.
    """
    import h5py

    from fedmpi import config as cfgmod
    from fedmpi.results import SCHEMA_VERSION, ResultsError
    from fedmpi.results.checkpoint import find_group
    from fedmpi.results.hdf import plain
    from fedmpi.results.schema import ADDED_COLUMNS

    if args is not None:
        _refuse_resume_options(path, args)
    if not path.is_file():
        raise ConfigError("--resume", str(path), "an existing result file")
    try:
        with h5py.File(path, "r", locking=False) as f:
            attrs = {k: plain(f.attrs[k]) for k in _RESUME_ATTRS if k in f.attrs}
            has_checkpoint = find_group(f) is not None
            lacks = [f"/{t}/{c}" for t, names in ADDED_COLUMNS.items() for c in names
                     if t in f and c not in f[t]]
        text = str(attrs["config_json"])
        if len(text) > cfgmod.MAX_FILE_BYTES:
            raise ValueError(f"config_json of {len(text)} characters")
        resolved = json.loads(text)
    except (OSError, KeyError, ValueError, RuntimeError, ResultsError) as exc:
        raise _unreadable(path, "a readable fedmpi result file; rerun its config with "
                          "--overwrite", exc) from None
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError("--resume", str(path), f"a result file of schema_version {SCHEMA_VERSION} "
                          f"(this one has {version!r}, written by fedmpi "
                          f"{attrs.get('fedmpi_version', '?')}: resume it with that version)")
    if lacks:  # an older layout (and its checkpoint holds the clients' states itself)
        raise ConfigError("--resume", str(path), f"a result file with {', '.join(lacks)} "
                          f"(this one was written by fedmpi {attrs.get('fedmpi_version', '?')} "
                          "before it existed: resume it with that version, or rerun its "
                          "config with --overwrite)")
    status = str(attrs.get("status", ""))
    try:
        cfg = cfgmod.from_dict(resolved)
    except ConfigError as exc:
        raise ConfigError(f"{exc.field} (stored in {path})", exc.value, exc.allowed) from None
    if args is not None and (args.config or args.overrides):
        _refuse_changes(path, cfg, resolved, args)
    return cfg, str(attrs.get("config_yaml", "")), status == "completed", has_checkpoint


def _refuse_resume_options(path: Path, args) -> None:
    """--resume continues a run as it started; options that would change it are refused."""
    if getattr(args, "overwrite", False):
        raise ConfigError("--overwrite", True, "not with --resume (resume continues the file; "
                          "--overwrite starts a new run over it: give its CONFIG instead)")
    out = getattr(args, "out", None)
    if out and Path(out).absolute() != path.absolute():
        raise ConfigError("--out", out, f"no --out with --resume (the run continues in {path}; "
                          "to write elsewhere, copy the file first)")


def _refuse_changes(path: Path, cfg, resolved: dict, args) -> None:
    """CONFIG and --set may come with --resume (job scripts repeat them) only as a no-op."""
    from fedmpi import config as cfgmod

    if args.config:
        given, _ = cfgmod.load(args.config, args.overrides)
    else:
        raw = json.loads(json.dumps(resolved))
        for item in args.overrides:
            cfgmod.set_path(raw, *cfgmod.parse_override(item))
        given = cfgmod.from_dict(raw)
    diffs = [d for d in _differences(cfg.to_dict(), given.to_dict())
             if d[0] not in cfgmod.EXECUTION_ONLY]
    if diffs:
        key, stored, new = diffs[0]
        more = f"; {len(diffs) - 1} more key(s) differ" if len(diffs) > 1 else ""
        source = "CONFIG" if args.config else "--set"
        raise ConfigError(key, new, f"{stored!r}, the value stored in {path}{more}: --resume "
                          f"continues a run with the config it started with, so {source} may "
                          "only repeat it (to change the run, start a new one with another --out)")


def _differences(a, b, where: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, a's value, b's value) wherever two resolved configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if a == b else [(where, a, b)]


def _check_checkpoint_fits(path: Path, cfg) -> None:
    """The stored config must build the model its checkpoint holds, or the resumed run
    would fail only after start-up, and mark the file failed (it was edited, say)."""
    import h5py
    import torch

    from fedmpi import data, models
    from fedmpi.results import ResultsError
    from fedmpi.results.checkpoint import find_group, unescape

    try:
        with h5py.File(path, "r", locking=False) as f:
            have = {unescape(k): tuple(v.shape) for k, v in find_group(f)["global"].items()}
    except (OSError, KeyError, ValueError, RuntimeError, ResultsError) as exc:
        raise _unreadable(path, "a result file with a readable checkpoint", exc) from None
    shape, classes = data.describe(cfg.data.dataset)
    with torch.device("meta"):  # names and shapes only: no memory, no initialization cost
        model = models.build(cfg.train.model, input_shape=shape, num_classes=classes)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if have != want:
        bad = sorted(set(have) ^ set(want)) or sorted(k for k in want if have[k] != want[k])
        k = bad[0]
        raise ConfigError(f"train.model (stored in {path})", cfg.train.model,
                          f"the model its checkpoint holds (with data.dataset "
                          f"{cfg.data.dataset!r}, tensor {k!r} is {want.get(k, 'absent')} in "
                          f"the model, {have.get(k, 'absent')} in the checkpoint); was the "
                          "stored config edited?")


def _lock_output(args, plan: dict, world_size: int) -> dict:
    """Rank 0 takes the result file's writer lock for the whole run, or refuses (exit 2).

    Taken during the configuration phase, so a second run of the same file (two
    `--resume`, two `--overwrite`, two runs of one `--out`) stops on every rank
    before it touches the file. `_plan` read the file without the lock, so it is
    planned again now that no other writer can change it; a file that changed in
    between (another run finished or created it) is refused: run again. A resumed
    file must read back intact (checksums), its checkpoint too.
    """
    from fedmpi.results import ResultsLockedError
    from fedmpi.results.lock import WriterLock, lock_path

    out = Path(plan["out"])
    field = "--resume" if args.resume else "--out"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(out)
    except ResultsLockedError as exc:
        raise _held(field, out, exc.holder, lock_path(out).name) from None
    except OSError as exc:
        raise ConfigError(field, str(out), "a result path in a writable directory "
                          f"({type(exc).__name__}: {exc})") from None
    try:
        if not lock.supported:
            print(f"fedmpi: warning: no file locking here ({lock.reason}); fedmpi cannot "
                  f"stop two runs from writing {out} at once: start only one", file=sys.stderr)
            _refuse_live_writer(out, field)
        fresh = _plan(args, world_size)
        keys = ("out", "already_completed", "resume", "overwrite")
        if any(fresh[k] != plan[k] for k in keys):
            raise ConfigError(field, str(out), "a file no other run changes while this one "
                              "starts (another run just wrote it: run the command again)")
        if args.resume and not fresh["already_completed"]:
            plan["checkpoint"] = _check_resumable(out, field, resume=fresh["resume"])
        plan["lock"] = lock
        return plan
    except BaseException:
        lock.release()
        raise


def _check_resumable(out: Path, field: str, *, resume: bool):
    """The checkpoint to resume from (None: start over), refusing a damaged file."""
    from fedmpi.results import ResultsError, load, read_checkpoint
    from fedmpi.results.checkpoint import ROUND_ATTR

    try:
        attrs = load(out).runs.iloc[0]  # every checksum of the file
        if resume:
            return read_checkpoint(out)
    except ResultsError as exc:
        raise ConfigError(field, str(out), f"an intact result file ({exc}); rerun its config "
                          "with --overwrite to start it over") from None
    at = attrs.get(ROUND_ATTR)
    if at is not None and at == at and int(at) >= 0:  # NaN: the file never had one
        raise ConfigError(field, str(out), f"an intact result file (it had a checkpoint at "
                          f"round {int(at)} that is gone: the file is damaged)")
    return None


def _unlock(plan) -> None:
    lock = (plan or {}).pop("lock", None)
    if lock is not None:
        lock.release()


def _refuse_live_writer(path: Path, field: str) -> None:
    """Without file locking, the weaker check: refuse while its run is alive on this host.

    A pid recorded by a run on another node cannot be checked from here (see the
    README, Reliability), and a recorded pid that was reused makes a false refusal.
    """
    from fedmpi.results.hdf import open_read, read_attrs

    if not path.exists():
        return
    try:
        with open_read(path) as f:
            attrs = read_attrs(path, f, "/")
    except Exception:  # noqa: BLE001 - unreadable: the resume check says so
        return
    if attrs.get("status") != "running" or not isinstance(attrs.get("server_pid"), int):
        return
    try:
        host = list(json.loads(str(attrs.get("hosts", "[]")) or "[]"))[:1]
    except (ValueError, TypeError):
        host = []
    pid = attrs["server_pid"]
    if host == [socket.gethostname()] and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # that run is gone
        except OSError:
            pass
        raise ConfigError(field, str(path), f"a file no live run writes (pid {pid} on this "
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
        net.barrier("the start-up barrier (rank 0 prepares the data set)")
        try:  # data-dependent checks (subset sizes, partition feasibility) live in build
            exp, error = build(cfg, rank=rank, world_size=size, node=local_rank), None
        except ConfigError as exc:
            exp, error = None, exc
        if not net.all_ok(error is None, what="the experiment build check"):
            if rank == 0:
                print(f"fedmpi: configuration error: {_describe(error)}", file=sys.stderr)
                _discard(writer, plan)
            return EXIT_CONFIG
        if rank == 0:
            return _serve(exp, net, writer, state, stop)
        return _work(exp, net, plan["out"], plan["client_resume"])
    except BaseException as exc:  # noqa: BLE001 - any failure must end the whole job
        _fail(comm, rank, exc, writer, net)
        return 1  # not reached: Abort ends the process


def _discard(writer, plan) -> None:
    """A run stopped by a config error leaves no new file behind (a resumed one says why)."""
    if plan["resume"]:
        writer.finish("failed", "configuration error on resume")
        return
    if not plan["overwrite"]:
        plan["out"].unlink(missing_ok=True)  # while the writer still holds the lock
    writer.close()  # with --overwrite this keeps the old file and drops the temporary one


def _open_results(plan, size):
    from fedmpi.results import ResultsWriter, read_checkpoint
    from fedmpi.server import ServerState

    cfg, out, lock = plan["cfg"], plan["out"], plan.pop("lock", None)
    if plan["resume"]:
        import h5py

        ckpt = plan.pop("checkpoint", None) or read_checkpoint(out)
        with h5py.File(out, "r", locking=False) as f:
            clean_stop = str(f.attrs.get("status", "")) == "interrupted"
            segment = int(f.attrs.get("segment", 0)) + 1
            if clean_stop:  # checkpointed at its last round; only its STOP exchange follows
                cum = int(f.attrs.get("cum_wire_bytes", 0))
            else:  # crashed: rounds after the checkpoint are redone, their rows dropped
                cum = int(f["rounds/cum_wire_bytes"][ckpt.round]) if ckpt.round >= 0 else 0
        writer = ResultsWriter(out, attrs={}, resume=True, lock=lock)
        _say_removed(writer)
        if not clean_stop:
            writer.truncate_after(ckpt.round)
        writer.set_attrs(status="running", failure_reason="", completed_rounds=ckpt.round + 1,
                         server_pid=os.getpid(), server_host=socket.gethostname(),
                         segment=segment,
                         resumed_from_round=ckpt.round, world_size=size, num_workers=size - 1)
        writer.flush()
        state = ServerState(round=ckpt.round, global_state=ckpt.global_state,
                            memory=ckpt.memories.get("server", {}), cum_bytes=cum,
                            segment=segment, run_id=run_id_of(out)[0],
                            strategy=ckpt.memories.get("strategy", {}),
                            replica=ckpt.memories.get("replica"))
        return writer, state
    from fedmpi.experiment import build_links

    from fedmpi.results import clientstate

    attrs = _metadata(cfg, plan["text"], size)
    writer = ResultsWriter(out, attrs=attrs, overwrite=plan["overwrite"], lock=lock)
    _say_removed(writer)
    # A new run of this result: no worker may meet an old run's client-state files.
    for path in clientstate.remove_all(out):
        print(f"fedmpi: removed {path} (client state of the run this one replaces)",
              file=sys.stderr)
    up, down = build_links(cfg)
    from fedmpi.protocol import STATE_CODEC

    writer.set_codecs({0: "control", STATE_CODEC: "state", up.codec_id: up.name,
                       down.codec_id: down.name})
    # The file is on disk, readable, from here on (status running, no round). With
    # --overwrite it is still a temporary: the old file is replaced once a round is done.
    return writer, ServerState(round=-1, global_state={}, run_id=clientstate.run_identity(
        json.loads(attrs["config_json"]), attrs["start_time"]))


def _say_removed(writer) -> None:
    for path in writer.stale_removed:
        print(f"fedmpi: removed {path} (left by a run that died)", file=sys.stderr)


def _serve(exp, net, writer, state, stop) -> int:
    from fedmpi.progress import Progress
    from fedmpi.server import Server

    cfg = exp.cfg
    progress = Progress(cfg.rounds, initial=state.round + 1)
    server = Server(exp, net, writer, progress, stop)
    hellos = server.hellos()
    devices = [exp.device_label] + [h["device"] for h in hellos]
    writer.set_attrs(hosts=json.dumps([socket.gethostname()] + [h["host"] for h in hellos]),
                     devices=json.dumps(devices))
    from fedmpi.devices import announce

    announce(devices)
    writer.write_clients(client=list(range(cfg.clients.num_clients)),
                         worker=[1 + c % exp.num_workers if exp.stateful else 0
                                 for c in range(cfg.clients.num_clients)],
                         samples=exp.samples, class_histogram=exp.histogram)
    if state.round < 0:  # a fresh run
        state.global_state = exp.initial_state()
    status = server.run(state)
    progress.close()
    writer.finish(status, f"stopped by {stop.signal_name}" if status == "interrupted" else "")
    _print_summary(writer.path)
    return 0 if status == "completed" else EXIT_INTERRUPTED


def _work(exp, net, out, resume) -> int:
    from fedmpi.worker import ClientWorker

    worker = ClientWorker(exp, net, result=out, resume=resume)
    worker.hello()
    worker.start()
    status = worker.run()
    return 0 if status == "completed" else EXIT_INTERRUPTED


def _fail(comm, rank, exc, writer, net) -> None:
    reason = f"{type(exc).__name__}: {exc}"
    sys.stderr.write(f"fedmpi: rank {rank} failed: {reason}\n")
    if not isinstance(exc, (ConfigError, LivenessError)):  # these say all there is to say
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
    from fedmpi.experiment import build_links
    from fedmpi.results.writer import utc_now

    up, down = build_links(cfg)
    return {
        "name": cfg.name,
        "seed": cfg.seed,
        "config_yaml": text,
        "config_json": cfg.to_json(),
        "fedmpi_version": fedmpi.__version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "mpi4py_version": mpi4py.__version__,
        "mpi_library_version": _first_line(MPI.Get_library_version()),
        "world_size": size,
        "num_workers": size - 1,
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        "server_pid": os.getpid(),  # where to send SIGUSR1/SIGTERM for a graceful stop
        "server_host": socket.gethostname(),  # where that pid lives (fedmpi watch checks it)
        "start_time": utc_now(),  # with the config, the run identity (client-state files)
        "segment": 0,
        "uplink_codec": up.name,
        "uplink_codec_id": up.codec_id,
        "downlink_codec": down.name,
        "downlink_codec_id": down.codec_id,
    }


def _first_line(text: str) -> str:
    """The first line of a C string from MPI (Open MPI's ends in a NUL, which `strip` keeps)."""
    lines = text.replace("\0", "").strip().splitlines()
    return lines[0] if lines else ""


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
