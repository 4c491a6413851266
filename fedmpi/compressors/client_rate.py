"""Client-specific pruning rates (the paper's open question 2): each client its own θ.

Config (`compression.client_rate`, absent or null = every client uses the uplink's
prune rate)::

    client_rate: {rule: samples, min: 0.5, max: 0.9}
        # by local sample count, linear: the client with the most samples gets `min`
        # (more data -> its update carries more information -> prune it less), the one
        # with the fewest gets `max`; all equal -> all get (min + max) / 2
    client_rate: {rule: bandwidth, budgets: [B_0, ..., B_{N-1}], min: 0.0, max: 0.99}
        # a per-client uplink budget in bytes: θ_c = 1 - budgets[c] / (4 · numel), the
        # rate whose kept float32 values fit the budget, clipped to [min, max]. Index
        # bytes and zstd move the real message size around that (see results/README.md)
    client_rate: {rule: bandwidth, seconds: T, min: 0.0, max: 0.99}
        # the budgets from the run's link model (config section `link`, which must not be
        # `none`): what client c's uplink moves in T seconds after its latency,
        # B_c = max(0, T - latency_c) · up_bps_c / 8 bytes; then as above
    client_rate: {rule: list, rates: [θ_0, ..., θ_{N-1}]}
        # explicit, one rate per client, each in [0, 1)

Why a rule and not a strategy: the rate is a property of the uplink compression, so
it must work with every strategy. It travels as the per-client setting
`prune_rate` in ASSIGN (`Strategy.add_settings`), the worker's context carries it,
and `StagePipeline.encode` applies it to its prune stage. The decoder needs no
rate (the sparse layout carries the positions), and the codec id stays the uplink's.

Where the rate is recorded: every UPDATE row of `/messages` has `nnz` and `numel`,
and θ_used = 1 - nnz / numel (exact up to the floor of θ · numel, and up to exact
zeros in the weights, which pruning drops first). `rates_of_run` reads them back.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedmpi.errors import ConfigError

from fedmpi.compressors.stages import PRUNE_RATE as SETTING  # the ASSIGN setting name
RULES = ("samples", "bandwidth", "list")
_KEYS = {"samples": ("rule", "min", "max"),
         "bandwidth": ("rule", "budgets", "seconds", "min", "max"), "list": ("rule", "rates")}
MAX_SECONDS = 1e6
FIELD = "compression.client_rate"
# why `seconds` is refused without a link model (config validation and `rates` both say it)
SECONDS_NEED_LINKS = ("budgets from a link model: set link.kind to fixed | random | trace, "
                      "or list compression.client_rate.budgets")


@dataclass(frozen=True)
class ClientRate:
    """A parsed rule; `rates(...)` gives every client's θ."""

    rule: str
    lo: float = 0.0
    hi: float = 0.99
    values: tuple[float, ...] = ()  # rates (list) or budgets in bytes (bandwidth)
    seconds: float | None = None  # bandwidth: budgets from the link model instead

    def rates(self, samples: Sequence[int], numel: int, links=None) -> np.ndarray:
        """θ per client (float32-exact values, as they travel in ASSIGN); `links` (a
        fedmpi.linkmodel.LinkModel) is needed by the bandwidth rule with `seconds`."""
        n = len(samples)
        if self.seconds is not None:
            if links is None:
                raise ConfigError(f"{FIELD}.seconds", self.seconds, SECONDS_NEED_LINKS)
            budgets = link_budgets(links, n, self.seconds)
            return ClientRate(self.rule, self.lo, self.hi, budgets).rates(samples, numel)
        if self.rule in ("list", "bandwidth") and len(self.values) != n:
            what = "rates" if self.rule == "list" else "budgets"
            raise ConfigError(f"{FIELD}.{what}", len(self.values),
                              f"one entry per client ({n})")
        if self.rule == "list":
            out = np.asarray(self.values, dtype=np.float64)
        elif self.rule == "bandwidth":
            if numel <= 0:
                raise ValueError(f"{FIELD}: a model of {numel} entries has no byte size")
            out = np.clip(1.0 - np.asarray(self.values, np.float64) / (4.0 * numel),
                          self.lo, self.hi)
        else:
            s = np.asarray(samples, dtype=np.float64)
            span = s.max() - s.min() if n else 0.0
            frac = (s - s.min()) / span if span > 0 else np.full(n, 0.5)
            out = self.hi - (self.hi - self.lo) * frac
        return np.asarray(out, dtype=np.float32).astype(np.float64)


def parse(raw: object, *, num_clients: int | None = None) -> ClientRate | None:
    """The rule of `compression.client_rate`, or None; ConfigError naming the field."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("rule") not in RULES:
        got = raw.get("rule") if isinstance(raw, dict) else raw
        raise ConfigError(f"{FIELD}.rule" if isinstance(raw, dict) else FIELD, got,
                          "a mapping {rule: samples | bandwidth | list, ...}")
    rule = raw["rule"]
    extra = sorted(set(raw) - set(_KEYS[rule]))
    if extra:
        raise ConfigError(f"{FIELD}.{extra[0]}", raw[extra[0]],
                          f"one of the keys of rule {rule}: {', '.join(_KEYS[rule])}")
    lo = _rate(raw.get("min", 0.0), f"{FIELD}.min")
    hi = _rate(raw.get("max", 0.99), f"{FIELD}.max")
    if lo > hi:
        raise ConfigError(f"{FIELD}.min", lo, f"at most {FIELD}.max ({hi})")
    if rule == "samples":
        return ClientRate(rule, lo, hi)
    if rule == "bandwidth" and ("seconds" in raw) == ("budgets" in raw):
        raise ConfigError(f"{FIELD}.budgets", raw.get("budgets"),
                          "exactly one of budgets: [bytes per client] or seconds: T (budgets "
                          "from the link model)")
    if "seconds" in raw:
        t = raw["seconds"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_SECONDS:
            raise ConfigError(f"{FIELD}.seconds", t, f"a number of seconds in (0, {MAX_SECONDS:g}]")
        return ClientRate(rule, lo, hi, seconds=float(t))
    key = "rates" if rule == "list" else "budgets"
    values = raw.get(key)
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{FIELD}.{key}", values, "a non-empty list, one entry per client")
    if num_clients is not None and len(values) != num_clients:
        raise ConfigError(f"{FIELD}.{key}", f"{len(values)} entries",
                          f"one entry per client (clients.num_clients = {num_clients})")
    if rule == "list":
        return ClientRate(rule, values=tuple(_rate(v, f"{FIELD}.rates[{i}]")
                                             for i, v in enumerate(values)))
    budgets = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise ConfigError(f"{FIELD}.budgets[{i}]", v, "a number of bytes > 0")
        budgets.append(float(v))
    return ClientRate(rule, lo, hi, tuple(budgets))


def link_budgets(links, num_clients: int, seconds: float) -> tuple[float, ...]:
    """Bytes client c's modelled uplink moves in `seconds` after its latency (at least
    one byte, so that the rule's clip to `max` decides a link too slow for anything)."""
    out = []
    for c in range(num_clients):
        link = links.link(c)
        out.append(max(1.0, (seconds - link.latency_s) * link.up_bps / 8.0))
    return tuple(out)


def _rate(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
        raise ConfigError(where, v, "a pruning rate in [0, 1)")
    return float(v)


def check_uplink(comp, where: str = FIELD) -> None:
    """The rule needs an uplink that prunes: a stage pipeline with a prune stage."""
    from fedmpi.compressors.stages import StagePipeline

    if not isinstance(comp, StagePipeline) or comp.pipeline.pruner is None:
        raise ConfigError(where, getattr(comp, "name", comp),
                          "an uplink stage list with a prune stage (e.g. [{prune: {rate: "
                          "0.5}}, {sparse: {}}, {zstd: {}}]); the rule sets its rate per client")


def settings_source(rates: np.ndarray):
    """(names, values(round, client)) for `Strategy.add_settings`."""
    table = [float(r) for r in rates]
    return (SETTING,), lambda round, client: {SETTING: table[client]}


# ------------------------------------------------------------------ reading a run back


def rates_of_run(messages: dict) -> dict[int, float]:
    """Client -> θ used, from a run's /messages columns (UPDATE rows, kind 3).

    θ_used = 1 - nnz / numel of the client's uplink messages (the largest over its
    messages, which drops exact zeros in the weights that pruning takes first).
    """
    from fedmpi.wire import Kind

    up = np.asarray(messages["kind"]) == int(Kind.UPDATE)
    out: dict[int, float] = {}
    for c, nnz, numel in zip(np.asarray(messages["client"])[up], messages["nnz"][up],
                             messages["numel"][up]):
        out[int(c)] = max(out.get(int(c), 0.0), 1.0 - float(nnz) / float(numel))
    return dict(sorted(out.items()))


def uniform_equivalent(messages: dict) -> dict:
    """The uniform θ that spends the same total uplink bytes as a rule's run.

    Message bytes are close to affine in the kept entries (index + values + a fixed
    header, zstd), so a least-squares line bytes = a + b · nnz over the run's UPDATE
    messages (clients with different θ give the spread it needs) is solved for the
    mean bytes per message: nnz_u = (mean bytes - a) / b, θ_u = 1 - nnz_u / numel.
    With one distinct nnz (a uniform run) it falls back to matching kept entries.
    Sampling is a function of the seed only, so the uniform run at θ_u sends as many
    messages as the rule's run with the same seed; compare its measured bytes.
    """
    from fedmpi.wire import Kind

    up = np.asarray(messages["kind"]) == int(Kind.UPDATE)
    nnz = np.asarray(messages["nnz"], np.float64)[up]
    size = np.asarray(messages["sender_bytes"], np.float64)[up]
    numel = np.asarray(messages["numel"], np.float64)[up]
    if not nnz.size or len(set(numel.tolist())) != 1:
        raise ValueError("uniform_equivalent: needs uplink messages of one model size")
    n = numel[0]
    if len(set(nnz.tolist())) > 1:
        b, a = np.polyfit(nnz, size, 1)
        kept = (size.mean() - a) / b
        how = "affine fit of bytes on kept entries"
    else:
        a, b, kept, how = 0.0, size.mean() / nnz[0], nnz[0], "one kept count (uniform run)"
    theta = float(np.clip(1.0 - kept / n, 0.0, 0.999))
    return {"theta": theta, "messages": int(up.sum()), "total_bytes": int(size.sum()),
            "mean_bytes": float(size.mean()), "fit": (float(a), float(b)), "how": how}


def describe(path) -> str:
    """What `python -m fedmpi.compressors.client_rate FILE.h5` prints: per client the θ it
    used, its samples and uplink bytes; then the uniform θ of the same total bytes."""
    import h5py

    with h5py.File(path, "r", locking=False) as f:
        m = {k: f["messages"][k][()] for k in f["messages"]}
        samples = f["clients"]["samples"][()] if "clients" in f else None
    used = rates_of_run(m)
    up = m["kind"] == _update_kind()
    lines = ["client  theta_used  samples  uplink_bytes"]
    for c, theta in used.items():
        b = int(m["sender_bytes"][up & (m["client"] == c)].sum())
        n = "-" if samples is None else str(int(samples[c]))
        lines.append(f"{c:>6}  {theta:>10.4f}  {n:>7}  {b:>12,}")
    eq = uniform_equivalent(m)
    lines.append(f"uniform θ of the same total uplink bytes ({eq['total_bytes']:,} B in "
                 f"{eq['messages']} messages; {eq['how']}): {eq['theta']:.4f}")
    lines.append(f"  run it: --set compression.client_rate=null "
                 f"--set compression.uplink.0.prune.rate={eq['theta']:.4f}")
    return "\n".join(lines)


def compare(pairs: Sequence[tuple[str, str]]) -> str:
    """A markdown table: per (rule run, uniform run) pair the final accuracy and uplink
    bytes of both, then mean ± std over the pairs (the client-specific θ result)."""
    from fedmpi.results.reader import read_run, summarize

    rows, acc = [], {"rule": [], "uniform": []}
    for rule_path, uniform_path in pairs:
        a, b = (summarize(read_run(p)) for p in (rule_path, uniform_path))
        for key, row in (("rule", a), ("uniform", b)):
            acc[key].append(100.0 * row["final_accuracy"])
        thetas = sorted(rates_of_run(read_run(rule_path).messages).values())
        rows.append(f"| {a['seed']} | {thetas[0]:.3f}–{thetas[-1]:.3f} | "
                    f"{100 * a['final_accuracy']:.1f} | {a['up_bytes']:,} | "
                    f"{b.get('compression.uplink.0.prune.rate', float('nan')):.4f} | "
                    f"{100 * b['final_accuracy']:.1f} | {b['up_bytes']:,} | "
                    f"{100 * (a['final_accuracy'] - b['final_accuracy']):+.1f} |")
    r, u = np.asarray(acc["rule"]), np.asarray(acc["uniform"])
    sd = (lambda x: float(x.std(ddof=1)) if x.size > 1 else float("nan"))
    head = ["| seed | rule: θ per client | rule: accuracy % | rule: uplink B | uniform θ | "
            "uniform: accuracy % | uniform: uplink B | Δ rule − uniform (pp) |",
            "|---|---|---|---|---|---|---|---|"]
    tail = [f"| mean ± std ({len(pairs)}) | | {r.mean():.2f} ± {sd(r):.2f} | | | "
            f"{u.mean():.2f} ± {sd(u):.2f} | | {(r - u).mean():+.2f} ± {sd(r - u):.2f} |"]
    return "\n".join(head + rows + tail)


def _update_kind() -> int:
    from fedmpi.wire import Kind

    return int(Kind.UPDATE)


USAGE = ("usage: python -m fedmpi.compressors.client_rate RESULTS.h5\n"
         "       python -m fedmpi.compressors.client_rate --compare RULE.h5 UNIFORM.h5 "
         "[RULE.h5 UNIFORM.h5 ...]")


def main(argv: Sequence[str]) -> int:
    if len(argv) == 1 and argv[0] != "--compare":
        print(describe(argv[0]))
        return 0
    if len(argv) >= 3 and argv[0] == "--compare" and len(argv) % 2 == 1:
        files = list(argv[1:])
        print(compare(list(zip(files[0::2], files[1::2]))))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
