"""The short end-of-run summary that `fedmpi run` (and `make run`) prints.

Its byte totals are the reader's (`results.reader.byte_totals`), so they are what
`fedmpi report` and `fedmpi.results.load(...).runs` say for the same file: taken from
/messages, which also holds the final STOP / report exchange that no /rounds row has.
"""

from __future__ import annotations

from fedmpi.results.reader import byte_totals, read_run

MB = 1e6


def summary_lines(path) -> list[str]:
    run = read_run(path)
    r, a = run.rounds, run.attrs
    if not len(r):
        return [f"fedmpi: {path}: no completed round"]
    t = byte_totals(r, run.messages)
    acc = r["test_accuracy"].dropna()
    up, down, ctl = t["up_bytes"], t["down_bytes"], t["control_bytes"]
    dense = t["dense_up_bytes"] + t["dense_down_bytes"]
    ratio = dense / (up + down) if up + down else float("nan")
    return [
        f"fedmpi: {a.get('name', '')} -> {path}  [{a.get('status', '')}]",
        f"  rounds            {len(r)}",
        f"  final accuracy    {float(acc.iloc[-1]) if len(acc) else float('nan'):.4f}",
        f"  wire MB up/down   {up / MB:.3f} / {down / MB:.3f}   (control {ctl / MB:.4f} MB, "
        f"infrastructure {t['infra_bytes'] / MB:.4f} MB)",
        f"  dense MB          {dense / MB:.3f}",
        f"  compression       {ratio:.2f}x  (dense fp32 / wire, model messages)",
        f"  wall time         {float(r['wall_s'].sum()):.1f} s in rounds, "
        f"{_elapsed(a):.1f} s since the file was created",
        f"  uplink codec      {a.get('uplink_codec', '')}",
        f"  downlink codec    {a.get('downlink_codec', '')}",
    ]


def _elapsed(attrs: dict) -> float:
    from datetime import datetime

    try:
        start = datetime.fromisoformat(str(attrs["start_time"]))
        end = datetime.fromisoformat(str(attrs.get("end_time") or "")) if attrs.get("end_time") \
            else datetime.now(start.tzinfo)
        return (end - start).total_seconds()
    except (KeyError, ValueError):
        return float("nan")
