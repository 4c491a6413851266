"""`fedmpi bench scale`: server memory and time per round as clients per round grow.

Issue 12's targets: the server's peak RSS at 1,000 clients per round at most 1.5x
that at 10, on a ResNet-18-sized model (`bulk18`: ResNet-18's 11.2M floats, only a
linear head trained, so client work is trivial and what is measured is the
framework: broadcast, receive, decode, aggregate); and a framework overhead of at
most 1 ms per client at 1,000 clients per round on the quick-start MLP.

Each point is a real `fedmpi run` under mpiexec (3 ranks: server + 2 workers) on
the embedded digits data (iid, so 1,000 clients have 1-2 samples each), dense
links as `BULK_LINKS` says (bulk18) or as the quick start's (mlp). Read from its
result file:
- `server_peak_rss_bytes` (rank 0's getrusage peak over the whole run);
- time per round: the median /rounds.wall_s of the rounds after the first (round
  0 pays the cold start: imports, first allocations);
- overhead per client: (wall_s - compute_s / workers) / clients, that is the round
  time not explained by the clients' training spread perfectly over the workers,
  per client, median over the same rounds.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
RSS_RATIO_TARGET = 1.5  # peak RSS at the most clients / at the fewest
OVERHEAD_TARGET_S = 1e-3  # per client, on the MLP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000],
                        help="clients per round on the ResNet-18-sized model")
    parser.add_argument("--mlp-clients", type=int, default=1000,
                        help="clients per round on the quick-start MLP (0: skip)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per run (1: the cold round 0 is timed too)")
    parser.add_argument("--ranks", type=int, default=3, help="MPI ranks (server + workers)")
    parser.add_argument("--mpiexec", default=None,
                        help="launcher command (default: $FEDMPI_MPIEXEC, else the mpiexec "
                             "beside this Python)")
    parser.add_argument("--workdir", default=None, help="where the runs' files go (default: "
                        "a temporary directory, removed)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")


# The broadcast dense (44.7 MB per MODEL: the copies that used to grow with the clients);
# updates as sparse deltas: a bulk18 client changes only its head, so its update is
# small and what is measured is the broadcast path and the server's per-client work.
BULK_LINKS = {"target": "update", "uplink": [{"sparse": {}}], "downlink": []}


def _config(name: str, model: str, clients: int, rounds: int, compression: dict) -> dict:
    return {
        "name": name, "seed": 0, "rounds": rounds,
        "data": {"dataset": "digits", "partition": {"method": "iid"}},
        "clients": {"num_clients": clients, "per_round": clients},
        "train": {"model": model, "local_epochs": 1, "batch_size": 20, "lr": 0.05},
        "compression": compression,
        "run": {"eval_every": rounds, "checkpoint_every": rounds, "threads": 1},
    }


def _mpiexec(args) -> list[str]:
    launcher = args.mpiexec or os.environ.get("FEDMPI_MPIEXEC", "")
    if launcher:
        return shlex.split(launcher)
    beside = Path(sys.executable).parent / "mpiexec"
    return [str(beside) if beside.exists() else "mpiexec"]


def run_point(args, workdir: Path, name: str, cfg: dict) -> dict:
    """One `fedmpi run`; its server peak RSS and per-round times."""
    import h5py

    path, out = workdir / f"{name}.yaml", workdir / f"{name}.h5"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [*_mpiexec(args), "-n", str(args.ranks), sys.executable, "-m", "fedmpi", "run",
           str(path), "--out", str(out), "--overwrite"]
    env = {**os.environ, "FEDMPI_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=args.timeout)
    if res.returncode:
        raise RuntimeError(f"{name}: fedmpi run failed ({res.returncode}):\n{res.stderr[-3000:]}")
    with h5py.File(out, "r", locking=False) as f:
        rss = int(f.attrs["server_peak_rss_bytes"])
        r = {k: f["rounds"][k][()] for k in ("wall_s", "compute_s", "participants")}
    warm = slice(1, None) if len(r["wall_s"]) > 1 else slice(None)
    clients = cfg["clients"]["per_round"]
    workers = args.ranks - 1
    overhead = (r["wall_s"][warm] - r["compute_s"][warm] / workers) / clients
    return {"run": name, "model": cfg["train"]["model"], "clients": clients,
            "rounds": len(r["wall_s"]), "server_peak_rss_mb": rss / 2**20,
            "round_s": float(np.median(r["wall_s"][warm])),
            "overhead_ms_per_client": 1e3 * float(np.median(overhead))}


def run(args: argparse.Namespace) -> list[dict]:
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    with tempfile.TemporaryDirectory(prefix="fedmpi-scale-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        rows = [run_point(args, workdir, f"bulk18-{k}", _config(
                    f"scale-bulk18-{k}", "bulk18", k, args.rounds, BULK_LINKS))
                for k in args.clients]
        if args.mlp_clients:
            quick = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
            rows.append(run_point(args, workdir, f"mlp-{args.mlp_clients}", _config(
                f"scale-mlp-{args.mlp_clients}", "mlp", args.mlp_clients, args.rounds,
                quick["compression"])))
    return rows


def ratios(rows: list[dict]) -> list[tuple[str, float, float, bool]]:
    """(what, value, target, met) of the issue's targets, from the rows there are."""
    big = sorted((r for r in rows if r["model"] == "bulk18"), key=lambda r: r["clients"])
    out = []
    if len(big) >= 2:
        v = big[-1]["server_peak_rss_mb"] / big[0]["server_peak_rss_mb"]
        out.append((f"server peak RSS at {big[-1]['clients']} / at {big[0]['clients']} "
                    "clients per round (bulk18)", v, RSS_RATIO_TARGET, v <= RSS_RATIO_TARGET))
    for r in rows:
        if r["model"] == "mlp":
            v = r["overhead_ms_per_client"]
            out.append((f"framework overhead per client at {r['clients']} clients (mlp), ms",
                        v, 1e3 * OVERHEAD_TARGET_S, v <= 1e3 * OVERHEAD_TARGET_S))
    return out


def print_rows(rows: list[dict]) -> None:
    head = (f"{'model':8} {'clients/round':>13} {'server peak RSS MB':>18} {'s/round':>8} "
            f"{'overhead ms/client':>18}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:8} {r['clients']:13d} {r['server_peak_rss_mb']:18.0f} "
              f"{r['round_s']:8.2f} {r['overhead_ms_per_client']:18.3f}")
    for what, value, target, met in ratios(rows):
        print(f"{what}: {value:.3f} (target <= {target:g}: {'met' if met else 'NOT met'})")
