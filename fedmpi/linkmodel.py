"""A link model: each client's uplink/downlink bandwidth and latency, and the transfer
time of the bytes the run really sent (pure: no MPI, no torch).

Why: MPI between ranks of one machine or cluster is orders of magnitude faster than
the phone or home links federated learning is about, so measured wall time says
little about what compression buys there. The run's exact wire bytes are turned
into the time they would take on a modelled link,

    transfer_s(bytes, client, direction) = latency_s + 8 * bytes / bandwidth_bps

(bandwidth = the client's up_bps for uplink, down_bps for downlink), stored per
message (`/messages.sim_s`) and per round (`/rounds.sim_s`, see `round_times`).

Where a client's link comes from (config section `link`, `from_config`):
- `fixed`: the same up_bps / down_bps / latency_s for every client;
- `random`: drawn per client around those values, lognormal (median x exp(spread Z))
  or uniform (x (1 + spread U[-1, 1])); a pure function of (seed, client), so every
  rank and every rank layout sees the same links, and client c's link does not
  change when the number of clients does;
- `trace`: a CSV file `client,up_bps,down_bps,latency_s`, one row per client
  (parsed strictly: an error names the line and the field).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmpi.errors import ConfigError
from fedmpi.results.schema import DIRECTION_NAMES, KIND_NAMES

DOWN, UP = 0, 1  # as /messages.direction
_CODE = {name: code for code, name in KIND_NAMES.items()}
MODEL, UPDATE = _CODE["model"], _CODE["update"]
SIMULATED_KINDS = (MODEL, UPDATE)  # the FL traffic; control and checkpoint rows get NaN

MAX_BPS = 1e15  # 1 Pbit/s: beyond any link
MAX_LATENCY_S = 3600.0
TRACE_COLUMNS = ("client", "up_bps", "down_bps", "latency_s")
MAX_TRACE_BYTES = 64 << 20
LINK_SALT = 0x4C494E4B  # "LINK": keeps these draws apart from every other use of the seed
DISTRIBUTIONS = ("lognormal", "uniform")


@dataclass(frozen=True)
class Link:
    """One client's link."""

    up_bps: float
    down_bps: float
    latency_s: float

    def transfer_s(self, nbytes: float, direction: int) -> float:
        bps = self.up_bps if direction == UP else self.down_bps
        return self.latency_s + 8.0 * nbytes / bps


def _check_link(link: Link, where: str) -> Link:
    for name in ("up_bps", "down_bps"):
        v = getattr(link, name)
        if not (0 < v <= MAX_BPS):
            raise ConfigError(f"{where}.{name}", v, f"a number in (0, {MAX_BPS:g}] (bit/s)")
    if not (0 <= link.latency_s <= MAX_LATENCY_S):
        raise ConfigError(f"{where}.latency_s", link.latency_s,
                          f"a number in [0, {MAX_LATENCY_S:g}] (seconds)")
    return link


class LinkModel:
    """Base: `link(client)` and `transfer_s(nbytes, client, direction)`."""

    def link(self, client: int) -> Link:
        raise NotImplementedError

    def transfer_s(self, nbytes: float, client: int, direction: int | str) -> float:
        """Seconds to move `nbytes` over `client`'s link; direction 0/"down" or 1/"up"."""
        return self.link(int(client)).transfer_s(nbytes, _direction(direction))

    def links(self, clients) -> dict[int, Link]:
        return {int(c): self.link(int(c)) for c in clients}


def _direction(d: int | str) -> int:
    if isinstance(d, str):
        names = {v: k for k, v in DIRECTION_NAMES.items()}
        if d not in names:
            raise ValueError(f"direction {d!r}; allowed: down | up")
        return names[d]
    if d not in (DOWN, UP):
        raise ValueError(f"direction {d!r}; allowed: 0 (down) | 1 (up)")
    return int(d)


@dataclass(frozen=True)
class FixedLinks(LinkModel):
    """Every client has the same link."""

    up_bps: float
    down_bps: float
    latency_s: float = 0.0

    def __post_init__(self):
        _check_link(Link(self.up_bps, self.down_bps, self.latency_s), "link")

    def link(self, client: int) -> Link:
        return Link(self.up_bps, self.down_bps, self.latency_s)


@dataclass(frozen=True)
class RandomLinks(LinkModel):
    """Per-client links drawn around the given values; a pure function of (seed, client)."""

    seed: int
    up_bps: float
    down_bps: float
    latency_s: float = 0.0
    distribution: str = "lognormal"  # lognormal | uniform
    spread: float = 0.5  # lognormal: sigma of log(value); uniform: relative half-width

    def __post_init__(self):
        _check_link(Link(self.up_bps, self.down_bps, self.latency_s), "link")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError("link.distribution", self.distribution, " | ".join(DISTRIBUTIONS))
        if not 0 <= self.spread <= 10:
            raise ConfigError("link.spread", self.spread, "a number in [0, 10]")
        if self.distribution == "uniform" and not self.spread < 1:
            raise ConfigError("link.spread", self.spread, "a number in [0, 1) with "
                              "link.distribution uniform (bandwidths stay positive)")

    def link(self, client: int) -> Link:
        if client < 0:
            raise ValueError(f"client {client}: links exist for clients >= 0 only")
        rng = np.random.default_rng([LINK_SALT, int(self.seed), int(client)])
        if self.distribution == "lognormal":
            factors = np.exp(self.spread * rng.standard_normal(3))
        else:
            factors = 1.0 + self.spread * rng.uniform(-1.0, 1.0, 3)
        up, down, lat = (float(v) * float(f) for v, f in
                         zip((self.up_bps, self.down_bps, self.latency_s), factors))
        # A lognormal tail can leave the allowed range: clamp rather than fail a run.
        return Link(min(up, MAX_BPS), min(down, MAX_BPS), min(lat, MAX_LATENCY_S))


@dataclass(frozen=True)
class TraceLinks(LinkModel):
    """Links read from a trace (see `parse_trace`); a client not in it is an error."""

    table: dict  # client -> Link
    source: str = "<trace>"

    def link(self, client: int) -> Link:
        try:
            return self.table[int(client)]
        except KeyError:
            raise ConfigError("link.trace", self.source,
                              f"a row for every client; client {client} has none") from None


def parse_trace(text: str, source: str = "<trace>") -> TraceLinks:
    """Parse `client,up_bps,down_bps,latency_s` CSV (header first, '#' lines skipped).

    Strict: a ConfigError names the file, the line and the field of the first bad
    value (not a number, out of range, a client twice, a missing or extra column).
    """
    def bad(line: int, fld: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(f"link.trace ({source}, line {line}, field {fld})", value, allowed)

    rows = [(i + 1, r) for i, r in enumerate(csv.reader(io.StringIO(text)))]
    rows = [(n, r) for n, r in rows if r and not (len(r) == 1 and not r[0].strip())
            and not r[0].lstrip().startswith("#")]
    if not rows:
        raise bad(1, "header", "", "a header line: " + ",".join(TRACE_COLUMNS))
    n0, header = rows[0]
    if [h.strip() for h in header] != list(TRACE_COLUMNS):
        raise bad(n0, "header", ",".join(header), "exactly: " + ",".join(TRACE_COLUMNS))
    table: dict[int, Link] = {}
    for line, row in rows[1:]:
        if len(row) != len(TRACE_COLUMNS):
            raise bad(line, "row", ",".join(row), f"{len(TRACE_COLUMNS)} comma-separated "
                      "values: " + ",".join(TRACE_COLUMNS))
        cells = [c.strip() for c in row]
        try:
            client = int(cells[0])
        except ValueError:
            raise bad(line, "client", cells[0], "an integer >= 0") from None
        if not 0 <= client < 2**31:
            raise bad(line, "client", client, f"an integer in 0..{2**31 - 1}")
        if client in table:
            raise bad(line, "client", client, "each client once (this one is listed earlier)")
        values = []
        for name, cell in zip(TRACE_COLUMNS[1:], cells[1:]):
            try:
                v = float(cell)
            except ValueError:
                v = math.nan
            lo_ok = v >= 0 if name == "latency_s" else v > 0
            hi = MAX_LATENCY_S if name == "latency_s" else MAX_BPS
            if not (lo_ok and v <= hi):  # also NaN, inf and non-numbers
                interval = f"[0, {hi:g}] seconds" if name == "latency_s" \
                    else f"(0, {hi:g}] bit/s"
                raise bad(line, name, cell, f"a number in {interval}")
            values.append(v)
        table[client] = Link(*values)
    return TraceLinks(table, source)


def read_trace(path: str | os.PathLike) -> TraceLinks:
    path = Path(os.path.expandvars(os.path.expanduser(os.fspath(path))))
    if not path.is_file():
        raise ConfigError("link.trace", str(path), "an existing CSV file "
                          "(client,up_bps,down_bps,latency_s)")
    with open(path, "rb") as f:
        data = f.read(MAX_TRACE_BYTES + 1)
    if len(data) > MAX_TRACE_BYTES:
        raise ConfigError("link.trace", str(path), f"a CSV file of at most {MAX_TRACE_BYTES} "
                          "bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("link.trace", str(path), f"UTF-8 text (byte {exc.start} is not)") \
            from None
    return parse_trace(text, str(path))


def from_config(link: Any, seed: int, num_clients: int | None = None) -> LinkModel | None:
    """The model of a config's `link` section (None for kind none).

    `seed` is the experiment seed, used when `link.seed` is null. With `num_clients`
    a trace must have a row for each of clients 0..num_clients-1.
    """
    kind = link.kind
    if kind == "none":
        return None
    if kind == "fixed":
        return FixedLinks(link.up_bps, link.down_bps, link.latency_s)
    if kind == "random":
        return RandomLinks(seed if link.seed is None else link.seed, link.up_bps,
                           link.down_bps, link.latency_s, link.distribution, link.spread)
    if kind == "trace":
        if not link.trace:
            raise ConfigError("link.trace", link.trace, "a CSV file path when link.kind is trace")
        model = read_trace(link.trace)
        if num_clients is not None:
            missing = [c for c in range(num_clients) if c not in model.table]
            if missing:
                raise ConfigError("link.trace", link.trace,
                                  f"a row for every client 0..{num_clients - 1}; "
                                  f"{len(missing)} missing, first: client {missing[0]}")
        return model
    raise ConfigError("link.kind", kind, "none | fixed | random | trace")


# ------------------------------------------------------------------ a round's times


def message_times(model: LinkModel | None, kind, direction, client,
                  sender_bytes) -> np.ndarray:
    """Simulated seconds per /messages row: MODEL and UPDATE rows of a client (>= 0) on
    that client's link; NaN for the rest: control between MPI ranks, checkpoint
    snapshots (traffic a real deployment does not have), a MODEL broadcast to a whole
    worker (client -1; see `round_times`), and every row without a model."""
    kind, direction, client = np.asarray(kind), np.asarray(direction), np.asarray(client)
    nbytes = np.asarray(sender_bytes, dtype=np.float64)
    if not (kind.shape == direction.shape == client.shape == nbytes.shape) or kind.ndim != 1:
        raise ValueError("message_times: kind, direction, client and sender_bytes must be "
                         "1-D of equal length")
    out = np.full(len(kind), np.nan)
    if model is None:
        return out
    rows = np.flatnonzero(np.isin(kind, SIMULATED_KINDS) & (client >= 0))
    links = model.links(np.unique(client[rows]))
    for i in rows:
        out[i] = links[int(client[i])].transfer_s(float(nbytes[i]), int(direction[i]))
    return out


def round_times(model: LinkModel | None, kind, direction, client, sender_bytes,
                worker=None) -> tuple[np.ndarray, float]:
    """(per-message seconds as `message_times`, the round's simulated seconds).

    The round's time is the slowest client's: max over the clients with MODEL or
    UPDATE rows of (its downlink time + its uplink time), each the sum of its
    messages' times. The server's broadcast reaches every client over that
    client's own downlink, in parallel (the server side is not the bottleneck);
    training time is not included. With `worker` (the /messages column), a MODEL
    sent once to a worker for all its clients (client -1) counts as a download by
    each client of that worker in the round. NaN without a model or such rows.
    """
    per_message = message_times(model, kind, direction, client, sender_bytes)
    clients = np.asarray(client)
    totals: dict[int, float] = {}
    for i in np.flatnonzero(~np.isnan(per_message)):
        totals[int(clients[i])] = totals.get(int(clients[i]), 0.0) + float(per_message[i])
    if worker is not None and model is not None:
        kinds, workers = np.asarray(kind), np.asarray(worker)
        nbytes = np.asarray(sender_bytes, dtype=np.float64)
        if workers.shape != kinds.shape:
            raise ValueError("round_times: worker must be as long as the other columns")
        for i in np.flatnonzero((kinds == MODEL) & (clients < 0)):
            hosted = {int(c) for c, w in zip(clients, workers) if c >= 0 and w == workers[i]}
            for c in hosted:
                totals[c] = totals.get(c, 0.0) + model.transfer_s(float(nbytes[i]), c, DOWN)
    if not totals:
        return per_message, math.nan
    return per_message, max(totals.values())
