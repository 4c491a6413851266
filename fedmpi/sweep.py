"""`fedmpi sweep SWEEP.yaml`: expand a grid of config overrides into tasks; run one.

A sweep file::

    name: theta                       # optional; default: the file name without .yaml
    base: ../quickstart.yaml          # a config path (relative to this file) or a mapping
    set: {rounds: 20}                 # optional: overrides applied to every task
    grid:                             # dotted key -> list of values
      "compression.uplink.0.prune.rate,compression.downlink.0.prune.rate": [0.0, 0.5, 0.9]
      seed: [0, 1, 2]
    labels:                           # optional short names used in task names
      "compression.uplink.0.prune.rate,compression.downlink.0.prune.rate": theta

A grid key may join several dotted paths with commas: they take the same value
together (the paper applies θ to both links). A grid key's values may also be a
mapping from a short name to a value, for values that are themselves mappings or
lists (a whole `compression` section per method, see configs/zoo/sweep.yaml): the
name stands for the value in task names (``method=topk-0.1_seed=0``). Tasks are the Cartesian product in
file order, the last key varying fastest, so task indices are stable for a given
file. A task's name is built from its values only (``theta=0.5_seed=1``), so the
result file of a grid point keeps its name when values are added to the grid.

`--task I` writes ``<out-dir>/<task>.yaml`` (the resolved config) and runs
``fedmpi run`` on it under ``--launch`` with ``--out <out-dir>/<task>.h5``; an
existing file is resumed when interrupted and skipped when completed -- but only
when the resolved config stored in it (`config_json`) is the task's: a file made
with another config (the sweep file was edited, e.g. `rounds` 15 -> 20) is stale,
and stale results are never kept or continued silently. The task is refused (exit
2) with the keys that differ, unless `--overwrite-stale` asks to replace the file.
SIGUSR1 and SIGTERM are forwarded to the launcher, whose exit status is returned
(75 = interrupted and resumable), so a Slurm array task can requeue itself.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedmpi.config import EXECUTION_ONLY
from fedmpi.errors import ConfigError

SWEEP_KEYS = ("name", "base", "set", "grid", "labels", "seeds")
MAX_VALUE_CHARS = 24  # longer values are replaced by a hash in task names
EXIT_STALE = 2  # a result file made with another config: refused like a config error
NOT_COMPARED = EXECUTION_ONLY  # not compared when deciding whether a file is stale
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Task:
    """One grid point: its index in the expansion, a filesystem-safe name, the overrides."""

    index: int
    name: str
    overrides: tuple[tuple[str, Any], ...]  # (dotted path, value), in application order

    def apply(self, base: dict) -> dict:
        """A copy of `base` with this task's overrides set (ConfigError on a bad path)."""
        from fedmpi.config import set_path

        cfg = json.loads(json.dumps(base))  # deep copy; configs are plain YAML data
        for dotted, value in self.overrides:
            set_path(cfg, dotted, value)
        return cfg


# ----------------------------------------------------------------------------- expansion


def expand(sweep: dict) -> list[Task]:
    """The tasks of a sweep mapping, in a stable order. Pure: reads no file."""
    if not isinstance(sweep, dict):
        raise ConfigError("sweep", sweep, "a mapping with keys " + ", ".join(SWEEP_KEYS))
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"sweep.{unknown[0]}", sweep[unknown[0]],
                          "one of the known keys: " + ", ".join(SWEEP_KEYS))
    fixed = _fixed_overrides(sweep.get("set"))
    grid = _grid(sweep)
    labels = _labels(sweep.get("labels"), grid)
    axes = [(paths, list(zip(values, names)), labels[key])
            for key, (paths, values, names) in grid.items()]
    tasks: list[Task] = []
    for index, combo in enumerate(itertools.product(*(pairs for _, pairs, _ in axes))):
        overrides = list(fixed)
        parts = []
        for (paths, _, label), (value, named) in zip(axes, combo, strict=True):
            overrides += [(p, value) for p in paths]
            parts.append(f"{label}={named or _format_value(value)}")
        name = "_".join(parts) or "base"
        tasks.append(Task(index=index, name=name, overrides=tuple(overrides)))
    _check_unique_names(tasks)
    return tasks


def _fixed_overrides(raw: Any) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError("sweep.set", raw, "a mapping of dotted keys to values")
    for key in raw:
        _check_path(key, "sweep.set")
    return [(str(k), v) for k, v in raw.items()]


def _grid(sweep: dict) -> dict[str, tuple[list[str], list[Any], list[str | None]]]:
    """Grid key -> (dotted paths, values, names), in file order; `seeds` is sugar for
    `seed`. A name is given for values listed as a {name: value} mapping, else None."""
    raw = sweep.get("grid", {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("sweep.grid", raw, "a mapping of dotted keys to lists of values")
    raw = dict(raw)
    if "seeds" in sweep:
        if "seed" in raw:
            raise ConfigError("sweep.seeds", sweep["seeds"], "either `seeds` or a `seed` grid key")
        raw["seed"] = sweep["seeds"]
    grid: dict[str, tuple[list[str], list[Any], list[str | None]]] = {}
    seen_paths: set[str] = set()
    for key, values in raw.items():
        where = f"sweep.grid.{key}"
        if not isinstance(key, str):
            raise ConfigError(where, key, "a dotted key (string)")
        paths = [p.strip() for p in key.split(",")]
        for p in paths:
            _check_path(p, where)
            if p in seen_paths:
                raise ConfigError(where, p, "each dotted path in at most one grid key")
            seen_paths.add(p)
        names: list[str | None]
        if isinstance(values, dict) and values:
            names = list(values)
            for name in names:
                if not isinstance(name, str) or not name or _UNSAFE.search(name) \
                        or len(name) > MAX_VALUE_CHARS:
                    raise ConfigError(f"{where}.{name}", name, "a value name of at most "
                                      f"{MAX_VALUE_CHARS} letters, digits, . _ + -")
            values = list(values.values())
        elif isinstance(values, list) and values:
            names = [None] * len(values)
        else:
            raise ConfigError(where, values, "a non-empty list of values, or a mapping of "
                              "short names to values")
        canon = [_canonical(v) for v in values]
        if len(set(canon)) != len(canon):
            raise ConfigError(where, values, "values without repeats")
        grid[key] = (paths, values, names)
    return grid


def _check_path(path: Any, where: str) -> None:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise ConfigError(where, path, "a dotted config key such as 'train.lr' or "
                          "'compression.uplink.0.prune.rate'")


def _labels(raw: Any, grid: dict) -> dict[str, str]:
    """Short label per grid key: the given one, else the shortest unambiguous suffix."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("sweep.labels", raw, "a mapping of grid keys to short names")
    for key, label in raw.items():
        if key not in grid:
            raise ConfigError(f"sweep.labels.{key}", label, "a key of sweep.grid")
        if not isinstance(label, str) or not label or _UNSAFE.search(label):
            raise ConfigError(f"sweep.labels.{key}", label, "a name of letters, digits, . _ + -")
    labels = {}
    firsts = {key: paths[0].split(".") for key, (paths, *_) in grid.items()}
    for key, parts in firsts.items():
        if key in raw:
            labels[key] = raw[key]
            continue
        others = [p for k, p in firsts.items() if k != key]
        n = 1
        while n < len(parts) and any(o[-n:] == parts[-n:] for o in others):
            n += 1
        labels[key] = ".".join(parts[-n:])
    if len(set(labels.values())) != len(labels):
        raise ConfigError("sweep.labels", labels, "a different label for every grid key")
    return labels


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float, str)):
        text = str(value)
    else:
        text = ""
    safe = _UNSAFE.sub("-", text)
    if not safe or safe != text or len(safe) > MAX_VALUE_CHARS:
        digest = hashlib.sha1(_canonical(value).encode()).hexdigest()[:8]
        safe = f"{safe[:MAX_VALUE_CHARS]}-{digest}" if safe else digest
    return safe


def _check_unique_names(tasks: list[Task]) -> None:
    seen: dict[str, Task] = {}
    for t in tasks:
        if t.name in seen:  # e.g. 1 and 1.0, or "a b" and "a-b": values that print alike
            raise ConfigError("sweep.grid", t.name,
                              f"values that give distinct task names (tasks {seen[t.name].index} "
                              f"and {t.index} are both '{t.name}')")
        seen[t.name] = t


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Sweep:
    name: str
    base: dict
    tasks: list[Task]


def load(path: str | Path) -> Sweep:
    """Read a sweep file, its base config, and check that every task is a valid config."""
    from fedmpi import config as cfgmod

    path = Path(path)
    raw = _read_yaml(path, "sweep")
    tasks = expand(raw)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or _UNSAFE.search(name):
        raise ConfigError("sweep.name", name, "a name of letters, digits, . _ + -")
    base = raw.get("base")
    if isinstance(base, str):
        base = _read_yaml((path.parent / base), "sweep.base")
    elif not isinstance(base, dict):
        raise ConfigError("sweep.base", base, "a config file path (relative to the sweep "
                          "file) or an inline config mapping")
    for task in tasks:
        try:
            cfgmod.from_dict(task.apply(base))
        except ConfigError as exc:
            raise ConfigError(f"task {task.index} ({task.name}): {exc.field}", exc.value,
                              exc.allowed) from None
    return Sweep(name=name, base=base, tasks=tasks)


def _read_yaml(path: Path, field: str) -> dict:
    from fedmpi.config import read_yaml  # bounded: alias bombs, size, binary, one-line errors

    _, raw = read_yaml(path, field)
    if not isinstance(raw, dict):
        raise ConfigError(field, str(path), "a YAML mapping at the top level")
    return raw


def read_file_info(path: Path) -> tuple[str, dict | None]:
    """(status, stored resolved config or None) of a result file; ('', None) if unreadable."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            status = str(f.attrs.get("status", ""))
            raw = f.attrs.get("config_json")
    except OSError:
        return "", None
    if raw is None:
        return status, None
    try:
        stored = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return status, None
    return status, stored if isinstance(stored, dict) else None


# ----------------------------------------------------------------------------- staleness


def task_config(sweep: Sweep, task: Task) -> dict:
    """The config a task runs (as written to <task>.yaml): base + overrides + a name."""
    cfg = task.apply(sweep.base)
    if "name" not in dict(task.overrides):  # label the run in reports by its grid point
        cfg["name"] = f"{sweep.name}-{task.name}"
    return cfg


def resolved(cfg: dict) -> dict:
    """A config as `fedmpi run` stores it in `config_json` (defaults filled in)."""
    from fedmpi import config as cfgmod

    return json.loads(cfgmod.from_dict(json.loads(json.dumps(cfg))).to_json())


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value; lists are indexed like `compression.uplink.0.prune.rate`."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


_ABSENT = object()


def config_differences(stored: dict, wanted: dict) -> list[str]:
    """What differs between a file's stored config and a task's, one line per dotted key.

    Pure. Keys in NOT_COMPARED are skipped. A key the file lacks counts as equal when
    the task has the current default there: a file written before that key existed
    ran with the behaviour the default describes.
    """
    import dataclasses

    from fedmpi import config as cfgmod

    defaults = _flatten(dataclasses.asdict(cfgmod.Config()))
    old, new = _flatten(stored), _flatten(wanted)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in NOT_COMPARED or any(key.startswith(k + ".") for k in NOT_COMPARED):
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a is _ABSENT and key in defaults and b == defaults[key]:
            continue
        if a != b or isinstance(a, bool) != isinstance(b, bool):  # True == 1 in Python
            lines.append(f"{key}: file {_show(a)}, sweep {_show(b)}")
    return lines


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- command


def add_arguments(p) -> None:
    p.add_argument("sweep", help="sweep YAML file")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="print index, name, overrides per task")
    what.add_argument("--count", action="store_true", help="print the number of tasks")
    what.add_argument("--task", type=int, metavar="I", help="run task I (0-based)")
    p.add_argument("--out-dir", help="where task files go (default: RESULTS_DIR/<sweep name>)")
    p.add_argument("--results-dir", default="results", help="default parent of --out-dir")
    p.add_argument("--launch", default=os.environ.get("FEDMPI_LAUNCH", "mpiexec -n 3"),
                   help="MPI launcher prefix (default: $FEDMPI_LAUNCH or 'mpiexec -n 3')")
    p.add_argument("--dry-run", action="store_true", help="with --task: print the command only")
    p.add_argument("--path", action="store_true",
                   help="with --task: print the task's result file path and exit")
    p.add_argument("--overwrite-stale", action="store_true",
                   help="with --task: replace a result file made with another config "
                        "(default: refuse it, naming the keys that differ)")


def main(args) -> int:
    try:
        sweep = load(args.sweep)
    except ConfigError as exc:
        print(f"fedmpi sweep: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.count:
        print(len(sweep.tasks))
        return 0
    if args.list:
        for t in sweep.tasks:
            sets = " ".join(f"{k}={json.dumps(v)}" for k, v in t.overrides)
            print(f"{t.index}\t{t.name}\t{sets}")
        return 0
    if not 0 <= args.task < len(sweep.tasks):
        print(f"fedmpi sweep: --task {args.task}: allowed 0..{len(sweep.tasks) - 1}",
              file=sys.stderr)
        return 2
    task = sweep.tasks[args.task]
    out_dir = Path(args.out_dir or Path(args.results_dir) / sweep.name)
    if args.path:
        print(out_dir / f"{task.name}.h5")
        return 0
    return run_task(sweep, task, out_dir, shlex.split(args.launch), dry_run=args.dry_run,
                    overwrite_stale=args.overwrite_stale)


def run_task(sweep: Sweep, task: Task, out_dir: Path, launch: list[str], dry_run=False,
             overwrite_stale=False) -> int:
    where = f"fedmpi sweep: task {task.index} ({task.name})"
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path, h5 = out_dir / f"{task.name}.yaml", out_dir / f"{task.name}.h5"
    cmd = [*_resolve_launcher(launch), sys.executable, "-m", "fedmpi", "run"]
    cfg = task_config(sweep, task)
    status, stored = read_file_info(h5) if h5.exists() else (None, None)
    overwrite = False
    if status in ("completed", "interrupted", "running"):
        if stored is None:
            differences = ["config_json: missing or unreadable in the file"]
        else:
            differences = config_differences(stored, resolved(cfg))
        if differences and not overwrite_stale:
            print(f"{where}: {h5} ({status}) was made with another config than this "
                  "sweep's; not reusing it:\n  " + "\n  ".join(differences) +
                  "\n  Pass --overwrite-stale to replace it (the old file stays until the new "
                  "run has completed a round), move it away, or give the sweep another name.",
                  file=sys.stderr)
            return EXIT_STALE
        if differences:
            print(f"{where}: {h5} ({status}) is stale (" + "; ".join(differences) +
                  "): replacing it (--overwrite-stale)", file=sys.stderr)
            status, overwrite = None, True
    if status == "completed":
        print(f"{where}: {h5} is completed; skipping")
        return 0
    if status is None:
        header = (f"# fedmpi sweep {sweep.name}, task {task.index}: {task.name}\n"
                  f"# overrides: {json.dumps(dict(task.overrides))}\n")
        if not dry_run:
            cfg_path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        cmd += [str(cfg_path), "--out", str(h5)] + (["--overwrite"] if overwrite else [])
    elif status in ("interrupted", "running"):
        # `running` is what a hard kill (time limit without a signal, node failure) leaves:
        # `fedmpi run --resume` continues from the last checkpoint or refuses clearly.
        cmd += ["--resume", str(h5)]
    else:
        print(f"{where}: {h5} has status "
              f"'{status or 'unreadable'}'; move it away to run this task again", file=sys.stderr)
        return 1
    print(f"{where}: {shlex.join(cmd)}", flush=True)
    if dry_run:
        return 0
    return _run_forwarding_signals(cmd)


def _resolve_launcher(launch: list[str]) -> list[str]:
    """`mpiexec` means the one beside this Python (the venv's mpich wheel) when present."""
    if launch and launch[0] == "mpiexec":
        beside = Path(sys.executable).parent / "mpiexec"
        if beside.exists():
            return [str(beside), *launch[1:]]
    return launch


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run `cmd`; SIGUSR1/SIGTERM to this process reach it as SIGUSR1.

    Always USR1: both hydra's mpiexec and srun forward it to every rank, while srun
    answers SIGTERM by killing the step at once (no checkpoint).
    """
    proc = subprocess.Popen(cmd)

    def forward(signum, _frame):
        print(f"fedmpi sweep: got {signal.Signals(signum).name}; sending SIGUSR1 to the run",
              file=sys.stderr, flush=True)
        proc.send_signal(signal.SIGUSR1)

    old = {s: signal.signal(s, forward) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
