"""Print jobs/gpu-check.sh's one table (Markdown) from the files it left in OUT.

    python jobs/gpu-check-table.py OUT

Reads env.json, mpi.json, steps.tsv, gpu-tests.xml, fl-run.h5 (or bench-train-*.json),
bench-codec-cuda.json and bench-codec-cpu.json; whatever is missing is reported as such.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tests(path: Path) -> str:
    try:
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        a = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        passed = a["tests"] - a["failures"] - a["errors"] - a["skipped"]
        return (f"{passed} passed, {a['failures'] + a['errors']} failed, {a['skipped']} skipped "
                f"({suite.get('time', '?')} s)")
    except (OSError, ET.ParseError, AttributeError):
        return "not run (no GPU, or no report)"


def _fl_rows(path: Path) -> list[tuple[str, str]]:
    try:
        import h5py
        import numpy as np

        with h5py.File(path, "r", locking=False) as f:
            r = {k: f["rounds"][k][()] for k in f["rounds"]}
            cfg = json.loads(f.attrs["config_json"])
            devices = json.loads(f.attrs.get("devices", "[]"))
            status = str(f.attrs.get("status", "?"))
    except Exception as exc:  # noqa: BLE001 - report, don't fail the table
        return [("FL run (server + 2 client ranks)", f"no result file ({type(exc).__name__})")]
    n = len(r["round"])
    keep = slice(1, None) if n > 1 else slice(None)  # round 0 warms up (cuDNN, allocator)
    epochs = cfg["train"]["local_epochs"]

    def mean(col):
        return float(np.mean(r[col][keep])) if n else float("nan")

    ips = float(np.sum(r["samples"][keep]) * epochs / max(np.sum(r["compute_s"][keep]), 1e-9))
    t, c = cfg.get("train", {}), cfg.get("clients", {})
    up = cfg.get("compression", {}).get("uplink") or [{}]
    rows = [
        ("FL run", f"{status}, {n} rounds, {t.get('model')}, batch {t.get('batch_size')}, "
                   f"{c.get('num_clients')} clients x {c.get('fraction')}, amp "
                   f"{t.get('amp', 'off')}, prune {up[0].get('prune', {}).get('rate', 0)}"),
        ("devices (rank 0, 1, 2)", " / ".join(devices)),
        ("images/s per client rank", f"{ips:,.0f} (training samples x epochs / client compute "
                                     "time, rounds after the first, 2 ranks sharing the GPU)"),
        ("final test accuracy", f"{float(r['test_accuracy'][-1]):.4f}" if n else "-"),
    ]
    split = ", ".join(f"{c[:-2]} {mean(c):.3f}" for c in
                      ("compute_s", "encode_s", "decode_s", "communicate_s", "aggregate_s",
                       "evaluate_s", "wait_s"))
    rows.append(("time split per round, s (mean)", f"wall {mean('wall_s'):.3f}: {split}"))
    rows.append(("wire MB per round up / down", f"{mean('up_bytes') / 1e6:.2f} / "
                                                f"{mean('down_bytes') / 1e6:.2f} (dense "
                                                f"{mean('dense_up_bytes') / 1e6:.2f})"))
    return rows


def main(out: Path) -> None:
    env = _json(out / "env.json") or {}
    mpi = _json(out / "mpi.json") or {}
    data = _json(out / "data.json") or {}
    rows = [
        ("card", f"{env.get('card', '?')} ({env.get('gpu_memory_gib', '?')} GiB, "
                 f"{env.get('sms', '?')} SMs), torch {env.get('torch', '?')} CUDA "
                 f"{env.get('cuda', '?')}, python {env.get('python', '?')}"),
        ("packages", ", ".join(f"{m} {env.get(m, '?')}" for m in
                               ("numpy", "numba", "zstandard", "mpi4py", "h5py"))),
        ("MPI", f"mpi4py finds a library: {bool(mpi.get('mpi4py_finds_mpi'))}; mpiexec runs 2 "
                f"ranks: {bool(mpi.get('mpiexec_runs_2_ranks'))}"),
        ("data", data.get("data", "?")),
        ("GPU tests (tests/gpu)", _tests(out / "gpu-tests.xml")),
    ]
    if (out / "fl-run.h5").exists() or not list(out.glob("bench-train-*.json")):
        try:
            rows += _fl_rows(out / "fl-run.h5")
        except Exception as exc:  # noqa: BLE001 - one bad file must not lose the table
            rows.append(("FL run", f"unreadable ({type(exc).__name__}: {exc})"))
    for p in sorted(out.glob("bench-train-*.json")):
        for t in _json(p) or []:
            rows.append((f"images/s, {p.stem} (no MPI)", f"{t['images_per_s']:,.0f} "
                         f"({t['model']}, batch {t['batch_size']}, amp {t['amp']})"))
    codec = [c for c in _json(out / "bench-codec-cuda.json") or [] if "copy_gbps" in c]
    if codec:
        rows.append(("device copy (D2D, dense bytes once)", f"{codec[0]['copy_gbps']:.1f} GB/s "
                                                            f"on {codec[0]['device']}"))
    for c in codec:
        rows.append((f"device codec {c['pipeline']}",
                     f"encode {c['encode_gbps']:.2f} GB/s = {c['encode_vs_copy']:.3f} x copy; "
                     f"decode {c['decode_gbps']:.2f} GB/s = {c['decode_vs_copy']:.3f} x copy; "
                     f"wire {c['ratio']:.1%}; same bytes as CPU: "
                     f"{'yes' if c['same_bytes_as_cpu'] else 'NO'}"))
    for c in [c for c in _json(out / "bench-codec-cpu.json") or [] if "memcpy_gbps" in c]:
        rows.append((f"CPU codec {c['pipeline']} ({c['path']}, one core)",
                     f"encode {c['encode_vs_memcpy']:.3f} / decode {c['decode_vs_memcpy']:.3f} "
                     f"of a numpy copy ({c['memcpy_gbps']:.1f} GB/s)"))
    steps = []
    try:
        for line in (out / "steps.tsv").read_text().splitlines():
            name, rc, sec = line.split("\t")
            steps.append(f"{name} {'ok' if rc == '0' else 'rc=' + rc} {sec}s")
    except OSError:
        pass
    rows.append(("steps", "; ".join(steps)))
    print("| gpu-check | |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {str(v).replace('|', '/')} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
