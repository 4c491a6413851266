"""The results file schema (version 2): the single source of truth.

The writer creates datasets from these tables, the reader checks against them and
the README's schema table is generated from them (`schema_markdown()`), so a
column cannot be added in one place and forgotten in another.

Layout: one HDF5 file per run; each table is a group of equally long, 1-D,
resizable, chunked datasets (one per column), so every column carries its own
`units`/`description` attributes, appending a row is cheap and `h5dump` shows it.

Version 2 (this one) adds integrity checks: table columns use HDF5's Fletcher32
filter, the root attribute `checksums` holds sha256 digests of the attributes
and of every table's rows, and each checkpoint its own `sha256` (see
`integrity.py`). Version 1 files (no checksums) stay readable, unchecked, and
are upgraded when resumed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from fedmpi.messages import kind_names

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy dtype string, or "str" for variable-length UTF-8
    units: str
    description: str
    # A column added to schema 2 after files were written with it: files without it
    # stay valid (readers fill it with NaN), and a writer not given it writes NaN.
    optional: bool = False


# --------------------------------------------------------------------------- codes

KIND_NAMES = kind_names()  # from the protocol table (fedmpi.messages)
DIRECTION_NAMES = {0: "down", 1: "up"}  # down = server -> worker, up = worker -> server
STATUSES = ("running", "completed", "failed", "interrupted")

# ------------------------------------------------------------------ root attributes

ROOT_ATTRS: tuple[Field, ...] = (
    Field("schema_version", "i8", "1", "results schema version (this table: 2; 1 = no checksums)"),
    Field("fedmpi_version", "str", "", "fedmpi package version that wrote the file"),
    Field("config_yaml", "str", "", "the configuration text as given"),
    Field("config_json", "str", "", "the resolved configuration, as JSON"),
    Field("seed", "i8", "1", "experiment seed"),
    Field("name", "str", "", "experiment name"),
    Field("torch_version", "str", "", "torch version"),
    Field("numpy_version", "str", "", "numpy version"),
    Field("mpi4py_version", "str", "", "mpi4py version"),
    Field("mpi_library_version", "str", "", "MPI library version string"),
    Field("world_size", "i8", "ranks", "MPI ranks (server + workers)"),
    Field("num_workers", "i8", "ranks", "client worker ranks"),
    Field("hosts", "str", "", "JSON list of host names, one per rank"),
    Field("devices", "str", "", "JSON list of device names, one per rank"),
    Field("git_commit", "str", "", "git commit of the code (\"\" if unknown)"),
    Field("command", "str", "", "command line of the run"),
    Field("start_time", "str", "ISO 8601 UTC", "when the run started"),
    Field("end_time", "str", "ISO 8601 UTC", "when the run ended (\"\" while running)"),
    Field("status", "str", "", "running | completed | failed | interrupted"),
    Field("failure_reason", "str", "", "why the run failed or stopped (\"\" if none)"),
    Field("completed_rounds", "i8", "rounds", "rows in /rounds (rounds fully recorded)"),
    Field("checksums", "str", "",
          "JSON, rewritten at every flush: sha256 of all other root attributes and the table "
          "groups' attributes (`attrs`), and per table the rows flushed and their sha256 "
          "(`tables.<name>.rows`, `.sha256`); readers refuse a file that does not match"),
)

# Optional root attributes: written by `fedmpi run` where they apply, typed when
# present, never defaulted. Other extra attributes are allowed too (stored as
# given, containers as JSON); readers keep them, tools must not require them.
EXTRA_ROOT_ATTRS: tuple[Field, ...] = (
    Field("server_pid", "i8", "1", "pid of rank 0 (send SIGTERM there for a graceful stop)"),
    Field("server_host", "str", "", "host name of rank 0, where server_pid lives"),
    Field("resumed_from_round", "i8", "1", "checkpoint round the last --resume started from"),
    Field("uplink_codec", "str", "", "uplink pipeline name"),
    Field("uplink_codec_id", "i8", "code", "uplink pipeline id (see /messages@codecs)"),
    Field("downlink_codec", "str", "", "downlink pipeline name"),
    Field("downlink_codec_id", "i8", "code", "downlink pipeline id"),
    Field("cum_wire_bytes", "i8", "bytes", "every wire byte so far, final STOP exchange included"),
    Field("segment", "i8", "1", "current process incarnation (0, +1 per --resume)"),
    Field("checkpoint_round", "i8", "1", "round of the latest complete checkpoint"),
    Field("server_peak_rss_bytes", "i8", "bytes",
          "peak resident memory of rank 0 over the process's life (getrusage), at its end"),
    Field("dropped_updates", "str", "",
          "run.round_deadline_s: JSON {round: [clients]} of the updates that came after the "
          "round's deadline (dropped from the aggregate; their /messages rows are there, "
          "received and discarded); rounds with none are absent (this process's rounds)"),
)

# ------------------------------------------------------------------------- /rounds

_S = "s"
ROUNDS: tuple[Field, ...] = (
    Field("round", "i4", "1", "round index"),
    Field("test_accuracy", "f8", "fraction", "global model accuracy on the test set, 0..1"),
    Field("test_loss", "f8", "1", "global model loss on the test set"),
    Field("train_loss", "f8", "1", "local training loss, sample-weighted over participants"),
    Field("participants", "i4", "clients",
          "clients whose update was aggregated this round (run.round_deadline_s: those "
          "dropped, listed in the dropped_updates attribute, are not counted)"),
    Field("samples", "i8", "samples", "training samples over participants"),
    Field("wall_s", "f8", _S, "wall-clock time of the round on the server (from its start to "
          "the next round's start; the last round: to its row)"),
    Field("compute_s", "f8", _S,
          "client training time, summed over clients (dropped ones included)"),
    Field("encode_s", "f8", _S,
          "encoding time, server + clients: the clients' updates of this round and the "
          "server's broadcast encoded at its end (for the next round; round 0 also the "
          "first broadcast's); dropped updates included"),
    Field("decode_s", "f8", _S, "decoding time, server + clients"),
    Field("communicate_s", "f8", _S,
          "estimated non-overlapped communication: wait_s minus the busiest worker's "
          "compute + codec time, floored at 0"),
    Field("aggregate_s", "f8", _S, "server aggregation time"),
    Field("evaluate_s", "f8", _S, "server evaluation time (with run.overlap_eval in a "
          "thread, during the next round's wait_s)"),
    Field("wait_s", "f8", _S, "server time blocked waiting for messages (client work + transfers)"),
    Field("up_bytes", "i8", "bytes", "wire bytes of model updates, worker -> server"),
    Field("down_bytes", "i8", "bytes", "wire bytes of models, server -> worker"),
    Field("control_bytes", "i8", "bytes",
          "wire bytes of the round's control messages both ways (assign, report, stop)"),
    Field("infra_bytes", "i8", "bytes",
          "wire bytes of infrastructure messages (kind memory: the run identity for the "
          "workers' client-state files, a replica on --resume), none of FL: not in up, down "
          "or control; start-up ones are counted with the segment's first round"),
    Field("dense_up_bytes", "i8", "bytes", "uplink tensors as uncompressed float32"),
    Field("dense_down_bytes", "i8", "bytes", "downlink tensors as uncompressed float32"),
    Field("cum_wire_bytes", "i8", "bytes",
          "all wire bytes (startup hellos and infra_bytes included) through this round"),
    Field("up_nnz", "i8", "values", "non-zeros sent uplink"),
    Field("down_nnz", "i8", "values", "non-zeros sent downlink"),
    Field("sim_s", "f8", _S,
          "simulated transfer time of the round on the link model (`link`): max over its "
          "clients of (MODEL down + UPDATE up) seconds on the client's link; training not "
          "included; NaN without a link model (optional: NaN in older files)", optional=True),
)

# ----------------------------------------------------------------------- /messages

MESSAGES: tuple[Field, ...] = (
    Field("round", "i4", "1", "round index"),
    Field("kind", "u1", "code", "message kind; group attribute kind_names maps code -> name"),
    Field("direction", "u1", "code", "0 down (server -> worker), 1 up; see direction_names"),
    Field("client", "i4", "1", "virtual client id, -1 for control messages"),
    Field("worker", "i4", "rank", "MPI rank of the worker end"),
    Field("sender_bytes", "i8", "bytes", "wire bytes as counted by the sender (len(buffer))"),
    Field("receiver_bytes", "i8", "bytes", "wire bytes as counted by the receiver (Get_count)"),
    Field("dense_bytes", "i8", "bytes", "the message's tensors as uncompressed float32"),
    Field("numel", "i8", "values", "values in the message's tensors"),
    Field("nnz", "i8", "values", "non-zero values sent"),
    Field("codec_id", "u4", "code", "pipeline id; group attribute codecs maps id -> name"),
    Field("encode_s", "f8", _S,
          "time to encode on the sender; a MODEL broadcast is encoded once per round and "
          "its time is on the first copy sent (the lowest sampled client), 0 on the others, "
          "so the column sums to the encoding work done"),
    Field("decode_s", "f8", _S,
          "time to decode on the receiver (an UPDATE dropped by the round deadline: its "
          "header and checksum check only)"),
    Field("send_s", "f8", _S,
          "sender's time from starting the send to its completion: blocking sends (worker "
          "messages, STOP) block that long; posted ones (ASSIGN, MODEL, state restores) "
          "overlap, from the post to the poll that saw them complete"),
    Field("recv_s", "f8", _S, "time blocked receiving (probe and receive)"),
    Field("segment", "i4", "1", "process incarnation that sent it: 0, then +1 per --resume"),
    Field("sim_s", "f8", _S,
          "simulated transfer time on the client's link (`link`): latency_s + 8 x "
          "sender_bytes / bandwidth; NaN for control and checkpoint messages and without a "
          "link model (optional: NaN in older files)", optional=True),
)

# ------------------------------------------------------------------------ /clients

CLIENTS: tuple[Field, ...] = (
    Field("client", "i4", "1", "virtual client id"),
    Field("worker", "i4", "rank", "MPI rank that keeps the client's compressor state; 0: "
          "stateless, placed per round (the round's rank is /messages worker)"),
    Field("samples", "i8", "samples", "training samples of the client"),
)
CLIENT_HISTOGRAM = Field(
    "class_histogram", "i8", "samples", "2-D (clients x classes): training samples per class"
)

# --------------------------------------------------------------------- /checkpoint

CHECKPOINT: tuple[Field, ...] = (
    Field("@round", "i8", "1", "last completed round the checkpoint belongs to"),
    Field("@complete", "bool", "", "true once every dataset of the checkpoint is written"),
    Field("@sha256", "str", "",
          "sha256 of the round and of every tensor's path, dtype, shape and bytes"),
    Field("global/<tensor>", "array", "", "server's full-precision global model"),
    Field("memory/<owner>/<tensor>", "array", "",
          "state to continue from; owner server (downlink compressor state), strategy "
          "(Strategy.state()), replica (downlink_target update: the model as the clients "
          "hold it); clients' uplink compressor states are in the workers' own files "
          "(<result>.rank<R>.round<N>.state)"),
    Field("rng/<name>", "u1", "bytes", "opaque RNG state bytes"),
)

# Columns added within schema 2: a file written before them lacks them and is still
# read (checked, the column read as zeros) but not resumed (it was written by an older
# fedmpi). Its checksums cover exactly the columns it has.
ADDED_COLUMNS: dict[str, tuple[str, ...]] = {"rounds": ("infra_bytes",)}

TABLES: dict[str, tuple[Field, ...]] = {
    "rounds": ROUNDS,
    "messages": MESSAGES,
    "clients": CLIENTS,
}

# Attributes of the /messages group, JSON text mapping code -> name.
MESSAGE_GROUP_ATTRS = {
    "kind_names": json.dumps({str(k): v for k, v in KIND_NAMES.items()}),
    "direction_names": json.dumps({str(k): v for k, v in DIRECTION_NAMES.items()}),
}


def columns(table: str) -> list[str]:
    return [f.name for f in TABLES[table]]


def required_columns(table: str) -> list[str]:
    """The columns every file and every append has (all but the `optional` ones)."""
    return [f.name for f in TABLES[table] if not f.optional]


def schema_markdown() -> str:
    """The whole schema as Markdown tables (for the README)."""
    parts = [f"Results schema version {SCHEMA_VERSION}. Every table column is a chunked, "
             "resizable dataset with the Fletcher32 checksum filter; `checksums` and the "
             "checkpoint's `sha256` cover the rest (version 1 files have neither and are "
             "read unchecked).\n"]
    sections = [
        ("Root attributes (`/`)", ROOT_ATTRS),
        ("Optional root attributes (`/`, where they apply)", EXTRA_ROOT_ATTRS),
        ("`/rounds` (one row per completed round)", ROUNDS),
        ("`/messages` (one row per MPI message)", MESSAGES),
        ("`/clients` (one row per virtual client)", CLIENTS + (CLIENT_HISTOGRAM,)),
        ("`/checkpoint` (latest only; `@` marks attributes)", CHECKPOINT),
    ]
    for title, fields in sections:
        parts.append(f"### {title}\n")
        parts.append("| name | dtype | units | description |")
        parts.append("|---|---|---|---|")
        for f in fields:
            desc = f.description.replace("|", "\\|")
            parts.append(f"| `{f.name}` | {f.dtype} | {f.units} | {desc} |")
        parts.append("")
    return "\n".join(parts)
