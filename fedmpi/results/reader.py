"""Results files -> pandas DataFrames.

`load()` takes one path, a glob, a directory or a list of them and returns a
`Results` with one row per file in `.runs` (status, headline numbers and the
resolved config flattened into dotted columns) and the per-round, per-message
and per-client tables of all files stacked, each with a `run` column (= path).
File content is data: JSON attributes go through json.loads only.

Files may be read while a job writes them (locking=False); tables are cut to
their shortest column, so a row half-appended at a crash never shows.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmpi.results import schema
from fedmpi.results.errors import ResultsError
from fedmpi.results.flatten import flatten
from fedmpi.results.hdf import attrs_dict, json_attr, open_read

_KIND = {v: k for k, v in schema.KIND_NAMES.items()}
UPDATE, MODEL = _KIND["update"], _KIND["model"]

# Root attributes copied into .runs (config_yaml/config_json are flattened instead);
# documented ones first and always, extras after them when a file has them.
_RUN_ATTRS = [f.name for f in schema.ROOT_ATTRS if f.name not in ("config_yaml", "config_json")]
_NOT_IN_RUNS = {"config_yaml", "config_json"}


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


def _table(g: Any, names: list[str]) -> dict[str, np.ndarray]:
    present = [n for n in names if n in g]
    if not present:
        return {}
    n = min(g[name].shape[0] for name in present)
    return {name: g[name][:n] for name in present}


def _messages(g: Any) -> pd.DataFrame:
    df = pd.DataFrame(_table(g, schema.columns("messages")))
    if df.empty:
        return df
    for col, attr in (("kind", "kind_names"), ("direction", "direction_names"),
                      ("codec_id", "codecs")):
        names = {int(k): str(v) for k, v in json_attr(g, attr, {}).items()}
        label = {"codec_id": "codec"}.get(col, f"{col}_name")
        lut = {code: names.get(int(code), "") for code in df[col].unique()}
        df[label] = pd.Categorical(df[col].map(lut))
    return df


def _clients(g: Any) -> pd.DataFrame:
    df = pd.DataFrame(_table(g, schema.columns("clients")))
    if "class_histogram" in g and len(df):
        hist = g["class_histogram"][()]
        if hist.ndim == 2 and hist.shape[0] >= len(df):
            for c in range(hist.shape[1]):
                df[f"class_{c}"] = hist[: len(df), c]
    return df


def read_run(path: str | os.PathLike) -> RunData:
    path = os.fspath(path)
    try:
        f = open_read(path)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except OSError as exc:
        raise ResultsError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        attrs = attrs_dict(f)
        if "schema_version" not in attrs or "rounds" not in f:
            raise ResultsError(f"{path}: not a fedmpi results file")
        if attrs["schema_version"] > schema.SCHEMA_VERSION:
            raise ResultsError(
                f"{path}: schema_version {attrs['schema_version']} is newer than this "
                f"fedmpi reads ({schema.SCHEMA_VERSION}); upgrade fedmpi"
            )
        config = json_attr(f, "config_json", {})
        rounds = pd.DataFrame(_table(f["rounds"], schema.columns("rounds")))
        messages = _messages(f["messages"]) if "messages" in f else pd.DataFrame()
        clients = _clients(f["clients"]) if "clients" in f else pd.DataFrame()
    for df in (rounds, messages, clients):
        df.insert(0, "run", path)
    return RunData(path, attrs, config if isinstance(config, dict) else {}, rounds,
                   messages, clients)


def _last_valid(series: pd.Series) -> float:
    valid = series.dropna()
    return float(valid.iloc[-1]) if len(valid) else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def byte_totals(rounds: pd.DataFrame, messages: pd.DataFrame) -> dict[str, int]:
    """Run totals of the /rounds byte columns.

    Taken from /messages when it has rows: it also holds the final STOP/report
    exchange, which happens after the last round and so is in no /rounds row.
    """
    names = ("up_bytes", "down_bytes", "control_bytes", "dense_up_bytes", "dense_down_bytes")
    if len(messages):
        update, model = messages["kind"] == UPDATE, messages["kind"] == MODEL
        size, dense = messages["sender_bytes"], messages["dense_bytes"]
        values = (size[update].sum(), size[model].sum(), size[~(update | model)].sum(),
                  dense[update].sum(), dense[model].sum())
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
