"""The short end-of-run summary that `fedmpi run` (and `make run`) prints."""

from __future__ import annotations

import h5py
import numpy as np

MB = 1e6


def summary_lines(path) -> list[str]:
    with h5py.File(path, "r", locking=False) as f:
        a = {k: f.attrs[k] for k in f.attrs}
        r = {k: f["rounds"][k][()] for k in f["rounds"]}
    if not len(r.get("round", [])):
        return [f"fedmpi: {path}: no completed round"]
    acc = r["test_accuracy"]
    final = acc[~np.isnan(acc)][-1] if np.any(~np.isnan(acc)) else float("nan")
    up, down, ctl = (float(r[k].sum()) for k in ("up_bytes", "down_bytes", "control_bytes"))
    dense = float(r["dense_up_bytes"].sum() + r["dense_down_bytes"].sum())
    ratio = dense / (up + down) if up + down else float("nan")
    return [
        f"fedmpi: {a.get('name', '')} -> {path}  [{a.get('status', '')}]",
        f"  rounds            {len(r['round'])}",
        f"  final accuracy    {final:.4f}",
        f"  wire MB up/down   {up / MB:.3f} / {down / MB:.3f}   (control {ctl / MB:.4f} MB, "
        f"infrastructure {_infra(r) / MB:.4f} MB)",
        f"  dense MB          {dense / MB:.3f}",
        f"  compression       {ratio:.2f}x  (dense fp32 / wire, model messages)",
        f"  wall time         {float(r['wall_s'].sum()):.1f} s in rounds, "
        f"{_elapsed(a):.1f} s since the file was created",
        f"  uplink codec      {a.get('uplink_codec', '')}",
        f"  downlink codec    {a.get('downlink_codec', '')}",
    ]


def _infra(rounds: dict) -> float:
    """Start-up infrastructure bytes (not FL traffic); files older than the column have none."""
    return float(rounds["infra_bytes"].sum()) if "infra_bytes" in rounds else 0.0


def _elapsed(attrs: dict) -> float:
    from datetime import datetime

    try:
        start = datetime.fromisoformat(str(attrs["start_time"]))
        end = datetime.fromisoformat(str(attrs.get("end_time") or "")) if attrs.get("end_time") \
            else datetime.now(start.tzinfo)
        return (end - start).total_seconds()
    except (KeyError, ValueError):
        return float("nan")
