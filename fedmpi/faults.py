"""Fault injection (config `run.fail_at`), so the fail-fast rules can be tested for real.

`run.fail_at: {rank: R, round: N, where: W}` makes rank R fail in round N at W:
`train` (a client worker, before local training), `aggregate` (the server),
`data` (any rank, while loading data; round is ignored), `corrupt` (a worker
flips a byte of its update so the server sees a malformed message) or
`corrupt_down` (rank 0 flips a byte of the round's first MODEL message, so a
worker sees one). `forge` / `forge_down` damage the same messages as a wrong
sender would, with valid checksums: the header declares one tensor more than
the model has, so only the receiver's field checks can catch it. `sleep` makes a
client worker a straggler instead of a failure: it sleeps `seconds` (default 5)
once, before training its first client of round N (`run.round_deadline_s` tests).
"""

from __future__ import annotations

import time

import numpy as np

from fedmpi import wire
from fedmpi.errors import ConfigError

WHERE = ("train", "aggregate", "data", "corrupt", "corrupt_down", "forge", "forge_down", "sleep")
_FORGED = {"corrupt": "forge", "corrupt_down": "forge_down"}  # same message, valid CRCs


_SLEPT: set[tuple[int, int]] = set()  # (rank, round) where `sleep` already slept


class InjectedFault(RuntimeError):
    """Raised on purpose by `run.fail_at`."""


def validate(fail_at: dict | None) -> None:
    if fail_at is None:
        return
    unknown = set(fail_at) - {"rank", "round", "where", "seconds"}
    if unknown:
        raise ConfigError(f"run.fail_at.{sorted(unknown)[0]}", fail_at,
                          "keys rank, round, where, seconds (where: sleep)")
    seconds = fail_at.get("seconds", 5)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 <= seconds <= 3600:
        raise ConfigError("run.fail_at.seconds", seconds, "a number of seconds in [0, 3600]")
    if fail_at.get("where") not in WHERE:
        raise ConfigError("run.fail_at.where", fail_at.get("where"), " | ".join(WHERE))
    for key in ("rank", "round"):
        if not isinstance(fail_at.get(key, 0), int):
            raise ConfigError(f"run.fail_at.{key}", fail_at.get(key), "an integer")


def _hit(cfg, rank: int, round: int | None, where: str) -> bool:
    f = cfg.run.fail_at
    return bool(f) and f.get("where") == where and f.get("rank") == rank and (
        round is None or f.get("round") == round)


def maybe_fail(cfg, *, rank: int, round: int | None, where: str) -> None:
    if _hit(cfg, rank, round, where):
        raise InjectedFault(f"injected failure (run.fail_at) at {where}, round {round}, "
                            f"rank {rank} at t={time.time():.3f}")


def maybe_sleep(cfg, *, rank: int, round: int) -> None:
    """`where: sleep`: this rank is a straggler in this round (sleeps, then goes on)."""
    if _hit(cfg, rank, round, "sleep") and (rank, round) not in _SLEPT:
        _SLEPT.add((rank, round))
        time.sleep(float(cfg.run.fail_at.get("seconds", 5)))


def maybe_corrupt(cfg, rank: int, round: int, buf: np.ndarray,
                  where: str = "corrupt") -> np.ndarray:
    """Flip the last byte of an outgoing message (the payload checksum must catch it),
    or, for the matching `forge` kind, re-frame it declaring one tensor too many."""
    if _hit(cfg, rank, round, where):
        buf = buf.copy()
        buf[-1] ^= 0xFF
    elif _hit(cfg, rank, round, _FORGED[where]):
        h = wire.parse_header(buf)
        buf = wire.frame(h.kind, round=h.round, client=h.client, codec_id=h.codec_id,
                         n_tensors=h.n_tensors + 1, payload=buf[wire.HEADER_SIZE:])
    return buf
