"""`fedmpi inspect FILE`: what a results file says, in a screenful.

Works on running, failed and killed runs alike (read-only, locking=False), so it
is also the first thing to run on a job that went wrong; a damaged file is one line
naming the file and the object (a ResultsError from the reader) and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pandas as pd

from fedmpi.results import ResultsError
from fedmpi.results.fmt import nbytes, percent, seconds
from fedmpi.results.reader import read_run, summarize

TIME_COLUMNS = ("compute_s", "encode_s", "decode_s", "communicate_s", "aggregate_s",
                "evaluate_s", "wait_s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="results file (.h5)")
    parser.add_argument("--rounds", action="store_true", help="also print the per-round table")


def pipeline(stages: Any) -> str:
    """A config pipeline (list of stages) as 'prune(rate=0.5) > zstd(level=3)'."""
    if not stages:
        return "none"
    if not isinstance(stages, list):
        return str(stages)
    parts = []
    for stage in stages:
        only = next(iter(stage.values())) if isinstance(stage, dict) and len(stage) == 1 else None
        if isinstance(only, dict):  # {"prune": {"rate": 0.5}}
            name, params = next(iter(stage.items()))
        elif isinstance(stage, dict):
            params = dict(stage)
            keys = [k for k in ("stage", "name", "type", "kind") if k in params]
            name = params.pop(keys[0]) if keys else "?"
        else:
            name, params = str(stage), {}
        args = ",".join(f"{k}={v}" for k, v in params.items())
        parts.append(f"{name}({args})" if args else str(name))
    return " > ".join(parts)


def headline(cfg: dict[str, Any]) -> str:
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    clients, comp = cfg.get("clients") or {}, cfg.get("compression") or {}
    part = (data.get("partition") or {})
    per_round = clients.get("per_round") or (
        f"fraction {clients['fraction']:g}" if "fraction" in clients else "?")
    return (f"{data.get('dataset', '?')} ({part.get('method', '?')}"
            f"{', alpha=' + format(part['alpha'], 'g') if part.get('method') == 'lda' else ''}), "
            f"model {train.get('model', '?')}, {clients.get('num_clients', '?')} clients "
            f"({per_round} per round), E={train.get('local_epochs', '?')}, "
            f"{cfg.get('rounds', '?')} rounds\n"
            f"  uplink {pipeline(comp.get('uplink'))}; downlink {pipeline(comp.get('downlink'))}"
            f"; target {comp.get('target', '?')}")


def network(cfg: dict[str, Any]) -> str:
    """How ranks polled MPI (run.poll) and the link model (link), as the run resolved them."""
    poll = (cfg.get("run") or {}).get("poll") or {}
    text = (f"poll spin {poll['spin_s']:g} s, sleeps {poll['min_sleep_s']:g}.."
            f"{poll['max_sleep_s']:g} s" if poll else "poll: fixed 0.5 ms sleeps (older run)")
    link = cfg.get("link") or {}
    kind = link.get("kind", "none")
    if kind in ("fixed", "random"):
        text += (f"; link {kind}: up {link['up_bps'] / 1e6:g} Mbit/s, down "
                 f"{link['down_bps'] / 1e6:g} Mbit/s, latency {link['latency_s']:g} s")
        if kind == "random":
            text += f" ({link['distribution']}, spread {link['spread']:g})"
    elif kind == "trace":
        text += f"; link trace {link.get('trace')}"
    else:
        text += "; no link model"
    return text


def _ratio(x: float) -> str:
    return "-" if pd.isna(x) else f"{x:.2f}x"


def round_table(rounds: pd.DataFrame) -> str:
    cols = {"round": "round", "test_accuracy": "acc", "test_loss": "loss",
            "train_loss": "train_loss", "participants": "clients", "up_bytes": "up_B",
            "down_bytes": "down_B", "cum_wire_bytes": "cum_MB", "wall_s": "wall_s"}
    t = rounds[list(cols)].rename(columns=cols).copy()
    t["acc"] = (100 * t["acc"]).map("{:.2f}".format)
    t["cum_MB"] = (t["cum_MB"] / 1e6).map("{:.3f}".format)
    for c in ("loss", "train_loss", "wall_s"):
        t[c] = t[c].map("{:.3f}".format)
    return t.to_string(index=False)


def summary(path: str, *, with_rounds: bool = False) -> str:
    run = read_run(path)
    s, a, r = summarize(run), run.attrs, run.rounds
    lines = [f"file:     {path}"]
    status = a.get("status", "?")
    if a.get("failure_reason"):
        status += f" ({a['failure_reason']})"
    lines.append(f"status:   {status}")
    lines.append(f"run:      {a.get('name', '?')}  seed {a.get('seed', '?')}  "
                 f"started {a.get('start_time') or '?'}  ended {a.get('end_time') or '-'}")
    lines.append(f"code:     fedmpi {a.get('fedmpi_version', '?')} "
                 f"commit {str(a.get('git_commit') or '?')[:12]}  "
                 f"torch {a.get('torch_version') or '?'}"
                 f"  MPI {str(a.get('mpi_library_version') or '?').splitlines()[0][:40]}")
    try:
        hosts = sorted({str(h) for h in json.loads(a.get("hosts") or "[]")})
        devices = sorted({str(d) for d in json.loads(a.get("devices") or "[]")})
    except (ValueError, TypeError):  # a schema 1 file (unchecked) with a damaged list
        hosts, devices = [], []
    lines.append(f"ranks:    {a.get('world_size', '?')} ({a.get('num_workers', '?')} workers) on "
                 f"{', '.join(hosts) or '?'}; devices {', '.join(devices) or '?'}")
    lines.append(f"config:   {headline(run.config)}")
    lines.append(f"network:  {network(run.config)}")
    planned = run.config.get("rounds", "?")
    lines.append(f"rounds:   {len(r)} of {planned} recorded")
    if len(r):
        best = r.loc[r["test_accuracy"].idxmax()] if r["test_accuracy"].notna().any() else None
        lines.append(f"accuracy: final {percent(s['final_accuracy'])} (round {s['final_round']})"
                     + (f", best {percent(best['test_accuracy'])} (round {int(best['round'])})"
                        if best is not None else ""))
    lines.append(f"bytes:    up {nbytes(s['up_bytes'])}, down {nbytes(s['down_bytes'])}, "
                 f"control {nbytes(s['control_bytes'])}, total {nbytes(s['wire_bytes'])}; "
                 f"infrastructure {nbytes(s['infra_bytes'])} (not FL traffic)")
    lines.append(f"dense:    up {nbytes(s['dense_up_bytes'])}, down {nbytes(s['dense_down_bytes'])}"
                 f"; compression ratio {_ratio(s['compression_ratio'])} "
                 f"(uplink {_ratio(s['up_compression_ratio'])})")
    lines.append(f"messages: mean up {nbytes(s['mean_up_message_bytes'])}, "
                 f"mean down {nbytes(s['mean_down_message_bytes'])}")
    if len(r):
        per_round = seconds(s["wall_s"] / len(r))
        lines.append(f"time:     {seconds(s['wall_s'])} wall ({per_round}/round)")
        parts = [(c[:-2], float(r[c].sum())) for c in TIME_COLUMNS]
        total = sum(v for _, v in parts) or 1.0
        lines.append("split:    " + ", ".join(f"{n} {seconds(v)} ({100 * v / total:.0f}%)"
                                              for n, v in parts))
    if len(r) and "sim_s" in r and r["sim_s"].notna().any():
        lines.append(f"link:     {seconds(float(r['sim_s'].sum()))} simulated transfer time "
                     f"over {int(r['sim_s'].notna().sum())} rounds (/rounds.sim_s)")
    if with_rounds and len(r):
        lines += ["", round_table(r)]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        print(summary(args.file, with_rounds=args.rounds))
    except ResultsError as exc:
        print(f"fedmpi inspect: {exc}", file=sys.stderr)
        return 2
    return 0
