"""Results files -> pandas DataFrames.

`load()` takes one path, a glob, a directory or a list of them and returns a
`Results` with one row per file in `.runs` (status, headline numbers and the
resolved config flattened into dotted columns) and the per-round, per-message
and per-client tables of all files stacked, each with a `run` column (= path).
File content is data: JSON attributes go through json.loads only.

Files may be read while a job writes them (locking=False). What is read is
checked against the file's checksums (`verify.py`): exactly the rows and
attributes the writer last flushed, or a `ResultsError` naming the file and the
object; nothing else escapes from here, whatever h5py raises on a damaged file.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedmpi.results import schema
from fedmpi.results.errors import ResultsError
from fedmpi.results.flatten import flatten
from fedmpi.results.hdf import open_read
from fedmpi.results.integrity import CHECKSUMS_ATTR
from fedmpi.results.verify import Content, read_content

_KIND = {v: k for k, v in schema.KIND_NAMES.items()}
UPDATE, MODEL, MEMORY = _KIND["update"], _KIND["model"], _KIND["memory"]

# Root attributes copied into .runs (config_yaml/config_json are flattened instead);
# documented ones first and always, extras after them when a file has them.
_NOT_IN_RUNS = {"config_yaml", "config_json", CHECKSUMS_ATTR}
_RUN_ATTRS = [f.name for f in schema.ROOT_ATTRS if f.name not in _NOT_IN_RUNS]
# A file caught in the middle of its writer's flush can look inconsistent for a
# moment: one that changes while it fails to read is read again before giving up.
RETRIES, RETRY_S = 5, 0.5


@dataclass
class RunData:
    """Everything read from one file."""

    path: str
    attrs: dict[str, Any]
    config: dict[str, Any]  # resolved config, nested
    rounds: pd.DataFrame
    messages: pd.DataFrame
    clients: pd.DataFrame


@dataclass
class Results:
    runs: pd.DataFrame
    rounds: pd.DataFrame
    messages: pd.DataFrame
    clients: pd.DataFrame
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> flat config

    @property
    def config_keys(self) -> list[str]:
        keys: dict[str, None] = {}
        for flat in self.configs.values():
            keys.update(dict.fromkeys(flat))
        return list(keys)

    def varying_config_keys(self) -> list[str]:
        """Config keys whose value is not the same in every run."""
        out = []
        for key in self.config_keys:
            values = {repr(flat.get(key)) for flat in self.configs.values()}
            if len(values) > 1:
                out.append(key)
        return out

    def with_config(self, df: pd.DataFrame, keys: Iterable[str] | None = None) -> pd.DataFrame:
        """`df` (with a `run` column) joined with its runs' config values.

        `keys` defaults to the varying config keys; a key that clashes with a column
        of `df` comes in as `config.<key>`.
        """
        keys = list(self.varying_config_keys() if keys is None else keys)
        table = pd.DataFrame(
            [{"run": run, **{k: flat.get(k) for k in keys}} for run, flat in self.configs.items()],
            columns=["run", *keys],
        )
        table = table.rename(columns={k: f"config.{k}" for k in keys if k in df.columns})
        return df.merge(table, on="run", how="left")

    def rounds_with_config(self, keys: Iterable[str] | None = None) -> pd.DataFrame:
        return self.with_config(self.rounds, keys)

    def messages_with_config(self, keys: Iterable[str] | None = None) -> pd.DataFrame:
        return self.with_config(self.messages, keys)


# -------------------------------------------------------------------- file list


def expand(paths: Any) -> list[str]:
    """Paths, globs and directories (their *.h5) -> existing file paths, in order."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: dict[str, None] = {}
    for item in items:
        text = os.fspath(item)
        if any(c in text for c in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ResultsError(f"no results files match {text!r}")
            out.update(dict.fromkeys(matches))
        elif Path(text).is_dir():
            matches = sorted(str(p) for p in Path(text).glob("*.h5"))
            if not matches:
                raise ResultsError(f"no *.h5 results files in directory {text}")
            out.update(dict.fromkeys(matches))
        else:
            out[text] = None
    if not out:
        raise ResultsError("no results files given")
    return list(out)


# -------------------------------------------------------------------- one file


def _named(df: pd.DataFrame, attrs: dict[str, Any]) -> pd.DataFrame:
    """Code columns of /messages with their names (from the group's JSON attributes)."""
    for col, attr in (("kind", "kind_names"), ("direction", "direction_names"),
                      ("codec_id", "codecs")):
        names = _code_names(attrs.get(attr))
        label = {"codec_id": "codec"}.get(col, f"{col}_name")
        lut = {code: names.get(int(code), "") for code in df[col].unique()}
        df[label] = pd.Categorical(df[col].map(lut))
    return df


def _code_names(text: Any) -> dict[int, str]:
    try:
        names = json.loads(text) if isinstance(text, str) and text else {}
        return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
    except (ValueError, TypeError):
        return {}


def _frames(c: Content) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rounds = pd.DataFrame(c.tables["rounds"])
    messages = pd.DataFrame(c.tables["messages"])
    if len(messages):
        messages = _named(messages, c.attrs.groups.get("messages", {}))
    _older_snapshots_as_infra(rounds, messages)
    clients = pd.DataFrame(c.tables["clients"])
    hist = c.histogram
    if hist is not None and len(clients) and hist.shape[0] >= len(clients):
        for k in range(hist.shape[1]):
            clients[f"class_{k}"] = hist[: len(clients), k]
    return rounds, messages, clients


def _older_snapshots_as_infra(rounds: pd.DataFrame, messages: pd.DataFrame) -> None:
    """Files written before `infra_bytes` counted the error-feedback snapshots that
    workers copied to rank 0 for checkpoints (kind memory) in `control_bytes`. They
    were checkpoint infrastructure, not FL traffic (today client state never travels):
    move them to `infra_bytes`, where a newer file counts what remains of that kind, so
    that old and new files mean the same by each column."""
    if not len(messages) or "infra_bytes" not in rounds or not len(rounds):
        return
    memory = messages[messages["kind"] == MEMORY].groupby("round")["sender_bytes"].sum()
    per_round = rounds["round"].map(memory).fillna(0).astype("int64")
    older = (rounds["infra_bytes"] == 0) & (per_round > 0)
    if older.any():
        rounds.loc[older, "control_bytes"] -= per_round[older]
        rounds.loc[older, "infra_bytes"] = per_round[older]


def _read_once(path: str) -> Content:
    try:
        f = open_read(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except Exception as exc:  # noqa: BLE001 - h5py: OSError, sometimes others, on junk
        raise ResultsError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        return read_content(f, path)
    finally:
        try:
            f.close()
        except Exception:  # noqa: BLE001 - closing a damaged file must not mask the error
            pass


def read_run(path: str | os.PathLike) -> RunData:
    path = os.fspath(path)
    for attempt in range(RETRIES):
        before = _stamp(path)
        try:
            content = _read_once(path)
            break
        except ResultsError:
            # A file its run is flushing can be caught half-written: it changes under
            # us (or does within a moment). A file that stays as it is is damaged.
            if attempt == RETRIES - 1:
                raise
            time.sleep(RETRY_S)
            if _stamp(path) == before:
                raise
    attrs = content.attrs.root
    config = _config(attrs.get("config_json"))
    rounds, messages, clients = _frames(content)
    for df in (rounds, messages, clients):
        df.insert(0, "run", path)
    return RunData(path, attrs, config, rounds, messages, clients)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _config(text: Any) -> dict[str, Any]:
    try:
        cfg = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _last_valid(series: pd.Series) -> float:
    valid = series.dropna()
    return float(valid.iloc[-1]) if len(valid) else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def byte_totals(rounds: pd.DataFrame, messages: pd.DataFrame) -> dict[str, int]:
    """Run totals of the /rounds byte columns.

    Taken from /messages when it has rows: it also holds the final STOP/report
    exchange, which happens after the last round and so is in no /rounds row.
    Infrastructure messages (kind memory) are `infra_bytes`, not control.
    """
    names = ("up_bytes", "down_bytes", "control_bytes", "dense_up_bytes", "dense_down_bytes",
             "infra_bytes")
    if len(messages):
        update, model = messages["kind"] == UPDATE, messages["kind"] == MODEL
        infra = messages["kind"] == MEMORY  # start-up infrastructure, not FL traffic
        size, dense = messages["sender_bytes"], messages["dense_bytes"]
        values = (size[update].sum(), size[model].sum(), size[~(update | model | infra)].sum(),
                  dense[update].sum(), dense[model].sum(), size[infra].sum())
        return {n: int(v) for n, v in zip(names, values)}
    return {n: int(rounds[n].sum()) if n in rounds else 0 for n in names}


def summarize(run: RunData) -> dict[str, Any]:
    """The run's row of `.runs`: attributes, headline numbers, flattened config."""
    r, m = run.rounds, run.messages
    row: dict[str, Any] = {"run": run.path, "path": run.path}
    row.update({k: run.attrs.get(k) for k in _RUN_ATTRS})
    row.update({k: v for k, v in run.attrs.items() if k not in row and k not in _NOT_IN_RUNS})
    total = byte_totals(r, m)
    row.update(total)
    model = total["up_bytes"] + total["down_bytes"]
    dense = total["dense_up_bytes"] + total["dense_down_bytes"]
    row.update(
        rounds_recorded=len(r),
        final_round=int(r["round"].iloc[-1]) if len(r) else -1,
        final_accuracy=_last_valid(r["test_accuracy"]) if len(r) else float("nan"),
        best_accuracy=float(r["test_accuracy"].max()) if len(r) else float("nan"),
        final_test_loss=_last_valid(r["test_loss"]) if len(r) else float("nan"),
        wire_bytes=model + total["control_bytes"],
        dense_bytes=dense,
        compression_ratio=_ratio(dense, model),
        up_compression_ratio=_ratio(total["dense_up_bytes"], total["up_bytes"]),
        wall_s=float(r["wall_s"].sum()) if len(r) else 0.0,
    )
    for label, kind in (("mean_up_message_bytes", UPDATE), ("mean_down_message_bytes", MODEL)):
        sizes = m["sender_bytes"][m["kind"] == kind] if len(m) else pd.Series(dtype=float)
        row[label] = float(sizes.mean()) if len(sizes) else float("nan")
    for key, value in flatten(run.config).items():
        row.setdefault(key, value)  # name/seed: the attribute wins (they are the same)
    return row


# -------------------------------------------------------------------------- load


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=["run"])
    nonempty = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(nonempty, ignore_index=True)


def load(paths: Any, *, statuses: Iterable[str] | None = None) -> Results:
    """Read results files. `statuses` keeps only runs whose status is listed."""
    runs = [read_run(p) for p in expand(paths)]
    if statuses is not None:
        wanted = set(statuses)
        runs = [r for r in runs if r.attrs.get("status") in wanted]
    return Results(
        runs=pd.DataFrame([summarize(r) for r in runs]),
        rounds=_concat([r.rounds for r in runs]),
        messages=_concat([r.messages for r in runs]),
        clients=_concat([r.clients for r in runs]),
        configs={r.path: flatten(r.config) for r in runs},
    )
