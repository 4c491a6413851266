"""Every message kind of the protocol, defined once.

`wire.Kind` (the header byte), the MPI tags of `transport` and the kind names of
the results file (`results.schema.KIND_NAMES`) are all generated from the tables
below, so a kind cannot be added in one place and forgotten in another (a unit
test ties them). The payload layouts are written and read in `fedmpi.protocol`;
`fedmpi.channel` sends and receives them, logging each message once.

Pure (no MPI, no numpy): every other module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

DOWN, UP, BOTH = "down", "up", "both"  # server -> worker, worker -> server, either


@dataclass(frozen=True)
class MessageKind:
    name: str  # the wire.Kind member
    value: int  # the header's kind byte
    tag: str  # name of its MPI tag (TAGS)
    direction: str  # DOWN | UP | BOTH
    hdf5: str  # its name in /messages@kind_names
    description: str


MESSAGES: tuple[MessageKind, ...] = (
    MessageKind("ASSIGN", 1, "CONTROL", DOWN, "assign",
                "the clients a worker runs this round, with flags and per-client settings"),
    MessageKind("MODEL", 2, "MODEL", DOWN, "model",
                "the encoded global model (or global update) for one client, or for a "
                "worker rank (client -1) that keeps a replica"),
    MessageKind("UPDATE", 3, "UPDATE", UP, "update", "one client's encoded model or update"),
    MessageKind("REPORT", 4, "REPORT", UP, "report",
                "a worker's log of the round's messages (and its start-up hello, on HELLO)"),
    MessageKind("STOP", 5, "CONTROL", DOWN, "stop", "end of the run, with its status"),
    MessageKind("FAIL", 6, "FAIL", UP, "fail", "a failing rank's reason (best effort)"),
    MessageKind("MEMORY", 7, "MEMORY", DOWN, "memory",
                "start-up infrastructure (counted in /rounds infra_bytes): the run "
                "identity for the workers' client-state files, or on --resume a worker "
                "rank's replica of the global model (client -1); client state itself "
                "never travels"),
)

# MPI tag -> (name, what a wait on it awaits). HELLO carries a REPORT-kind message.
TAGS: dict[int, tuple[str, str]] = {
    1: ("CONTROL", "control message"),
    2: ("MODEL", "MODEL"),
    3: ("UPDATE", "UPDATE"),
    4: ("REPORT", "REPORT"),
    5: ("HELLO", "hello"),
    6: ("MEMORY", "compressor state"),
    9: ("FAIL", "FAIL"),
}
TAG_NUMBER: dict[str, int] = {name: tag for tag, (name, _) in TAGS.items()}


def by_name(name: str) -> MessageKind:
    return next(m for m in MESSAGES if m.name == name)


def kind_names() -> dict[int, str]:
    """Kind value -> HDF5 name (results.schema.KIND_NAMES)."""
    return {m.value: m.hdf5 for m in MESSAGES}


def tag_of() -> dict[int, int]:
    """Kind value -> MPI tag number."""
    return {m.value: TAG_NUMBER[m.tag] for m in MESSAGES}
