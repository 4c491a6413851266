"""Sweep expansion: order, names, joined keys, and errors (no MPI, no runs)."""

from __future__ import annotations

import re

import pytest
import yaml

from fedmpi import sweep as sw
from fedmpi.errors import ConfigError

THETA = "compression.uplink.0.prune.rate,compression.downlink.0.prune.rate"
SAFE = re.compile(r"^[A-Za-z0-9._+=-]+$")


def base_config() -> dict:
    stage = [{"prune": {"rate": 0.5}}, {"zstd": {"level": 3}}]
    return {"name": "q", "rounds": 2,
            "compression": {"uplink": list(stage), "downlink": list(stage)}}


def test_product_in_file_order_last_key_fastest():
    tasks = sw.expand({"base": {}, "grid": {"train.lr": [0.1, 0.2], "seed": [0, 1, 2]}})
    assert [t.index for t in tasks] == list(range(6))
    assert [dict(t.overrides)["train.lr"] for t in tasks] == [0.1] * 3 + [0.2] * 3
    assert [dict(t.overrides)["seed"] for t in tasks] == [0, 1, 2] * 2
    assert tasks[4].name == "lr=0.2_seed=1"


def test_expansion_is_deterministic_and_names_are_safe_and_unique():
    sweep = {"grid": {"train.model": ["mlp", "cnn small"], "data.partition.alpha": [0.1, 1e-5]}}
    a, b = sw.expand(sweep), sw.expand(yaml.safe_load(yaml.safe_dump(sweep, sort_keys=False)))
    assert a == b
    names = [t.name for t in a]
    assert len(set(names)) == len(names)
    assert all(SAFE.match(n) for n in names), names


def test_names_do_not_depend_on_other_values_in_the_grid():
    small = sw.expand({"grid": {"seed": [0, 1]}})
    large = sw.expand({"grid": {"seed": [5, 0, 1]}})
    assert {t.name for t in small} <= {t.name for t in large}


def test_joined_key_sets_every_path_to_the_same_value():
    tasks = sw.expand({"grid": {THETA: [0.0, 0.9]}, "labels": {THETA: "theta"}})
    assert [t.name for t in tasks] == ["theta=0.0", "theta=0.9"]
    cfg = tasks[1].apply(base_config())
    assert cfg["compression"]["uplink"][0]["prune"]["rate"] == 0.9
    assert cfg["compression"]["downlink"][0]["prune"]["rate"] == 0.9
    assert cfg["compression"]["uplink"][1] == {"zstd": {"level": 3}}


def test_apply_does_not_mutate_the_base():
    base = base_config()
    sw.expand({"grid": {THETA: [0.9]}})[0].apply(base)
    assert base == base_config()


def test_labels_default_to_the_shortest_unambiguous_suffix():
    tasks = sw.expand({"grid": {"compression.uplink.0.prune.rate": [0.5],
                                "compression.downlink.0.prune.rate": [0.9],
                                "train.lr": [0.1]}})
    assert tasks[0].name == "uplink.0.prune.rate=0.5_downlink.0.prune.rate=0.9_lr=0.1"


def test_seeds_is_sugar_for_a_last_seed_key_and_set_applies_to_all():
    tasks = sw.expand({"set": {"rounds": 3}, "grid": {"train.lr": [0.1]}, "seeds": [0, 1]})
    assert [t.name for t in tasks] == ["lr=0.1_seed=0", "lr=0.1_seed=1"]
    assert tasks[1].overrides == (("rounds", 3), ("train.lr", 0.1), ("seed", 1))


def test_empty_grid_is_one_task_named_base():
    (task,) = sw.expand({"base": {"rounds": 1}})
    assert task.name == "base" and task.overrides == ()


def test_unsafe_or_long_values_get_a_stable_hash():
    tasks = sw.expand({"grid": {"compression.uplink": [[{"prune": {"rate": 0.5}}], []],
                                "name": ["a/b"]}})
    assert all(SAFE.match(t.name) for t in tasks)
    assert tasks[0].name == sw.expand({"grid": {"compression.uplink": [[{"prune": {"rate": 0.5}}]],
                                                "name": ["a/b"]}})[0].name


def test_named_values_stand_for_mappings_in_task_names():
    methods = {"dense": {"uplink": [], "downlink": []},
               "topk-0.1": {"uplink": {"topk": {"fraction": 0.1}}, "downlink": []}}
    tasks = sw.expand({"grid": {"compression": methods, "seed": [0, 1]},
                       "labels": {"compression": "method"}})
    assert [t.name for t in tasks] == ["method=dense_seed=0", "method=dense_seed=1",
                                       "method=topk-0.1_seed=0", "method=topk-0.1_seed=1"]
    assert tasks[2].overrides == (("compression", methods["topk-0.1"]), ("seed", 0))


@pytest.mark.parametrize(
    ("sweep", "field"),
    [
        ([], "sweep"),
        ({"grid": {"seed": {}}}, "sweep.grid.seed"),
        ({"grid": {"compression": {"a/b": {}}}}, "sweep.grid.compression.a/b"),
        ({"grid": {"compression": {"a": [], "b": []}}}, "sweep.grid.compression"),
        ({"grid": {}, "seedz": [1]}, "sweep.seedz"),
        ({"grid": [1, 2]}, "sweep.grid"),
        ({"grid": {"seed": []}}, "sweep.grid.seed"),
        ({"grid": {"seed": 3}}, "sweep.grid.seed"),
        ({"grid": {"seed": [1, 1]}}, "sweep.grid.seed"),
        ({"grid": {"train..lr": [1]}}, "sweep.grid.train..lr"),
        ({"grid": {"seed": [1], "train.lr,seed": [2]}}, "sweep.grid.train.lr,seed"),
        ({"grid": {"seed": [1]}, "seeds": [2]}, "sweep.seeds"),
        ({"grid": {"seed": [1]}, "labels": {"train.lr": "x"}}, "sweep.labels.train.lr"),
        ({"grid": {"seed": [1]}, "labels": {"seed": "a/b"}}, "sweep.labels.seed"),
        ({"grid": {"train.lr": [1, "1"]}}, "sweep.grid"),  # both named lr=1
        ({"set": ["rounds=1"]}, "sweep.set"),
    ],
)
def test_bad_sweeps_raise_config_error_naming_the_field(sweep, field):
    with pytest.raises(ConfigError) as info:
        sw.expand(sweep)
    assert info.value.field == field


def test_load_resolves_base_path_and_validates_every_task(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "q", "rounds": 2}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"rounds": [1, 3]}}))
    loaded = sw.load(path)
    assert loaded.name == "s" and [t.name for t in loaded.tasks] == ["rounds=1", "rounds=3"]
    path.write_text(yaml.safe_dump({"base": "base.yaml", "grid": {"rounds": [1, 0]}}))
    with pytest.raises(ConfigError, match="task 1 .rounds=0.: rounds"):
        sw.load(path)
    path.write_text(yaml.safe_dump({"base": "missing.yaml"}))
    with pytest.raises(ConfigError, match="sweep.base"):
        sw.load(path)


def test_cli_list_count_and_dry_run(tmp_path, capsys):
    from fedmpi.cli import main

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "q", "rounds": 2}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "base": "base.yaml", "seeds": [0, 1]}))
    assert main(["sweep", str(path), "--count"]) == 0
    assert capsys.readouterr().out.strip() == "2"
    assert main(["sweep", str(path), "--list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0\tseed=0\tseed=0", "1\tseed=1\tseed=1"]
    out_dir = tmp_path / "res"
    assert main(["sweep", str(path), "--task", "1", "--out-dir", str(out_dir), "--dry-run"]) == 0
    assert f"{out_dir}/seed=1.h5" in capsys.readouterr().out
    assert main(["sweep", str(path), "--task", "2"]) == 2
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--count"]) == 2


def test_committed_sweeps_expand():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[2] / "configs" / "sweeps").glob("*.yaml")):
        assert sw.load(path).tasks, path


def write_sweep(tmp_path) -> str:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"name": "q", "rounds": 2}))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "demo", "base": "base.yaml", "seeds": [0]}))
    return str(path)


def write_result(path, status: str, config: dict | None) -> None:
    """A result file as far as the sweep reads it: status and the stored resolved config."""
    import json

    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["status"] = status
        if config is not None:
            f.attrs["config_json"] = json.dumps(config, sort_keys=True)


def stored_config(sweep_path: str, **changes) -> dict:
    """The config `fedmpi run` would store for task 0 of `sweep_path`, with `changes`."""
    loaded = sw.load(sweep_path)
    cfg = sw.task_config(loaded, loaded.tasks[0])
    cfg.update(changes)
    return sw.resolved(cfg)


@pytest.mark.parametrize(("status", "rc", "expect"), [
    ("completed", 0, "is completed; skipping"),
    ("interrupted", 0, "--resume"),
    ("running", 0, "--resume"),  # what a hard kill leaves: resume from the last checkpoint
    ("failed", 1, "move it away"),
])
def test_existing_result_file_is_resumed_skipped_or_refused(tmp_path, capsys, status, rc, expect):
    from fedmpi.cli import main

    out_dir = tmp_path / "res"
    sweep = write_sweep(tmp_path)
    write_result(out_dir / "seed=0.h5", status, stored_config(sweep))
    got = main(["sweep", sweep, "--task", "0", "--out-dir", str(out_dir), "--dry-run"])
    captured = capsys.readouterr()
    assert got == rc
    assert expect in captured.out + captured.err


@pytest.mark.parametrize("status", ["completed", "interrupted", "running"])
def test_result_file_made_with_another_config_is_refused_naming_what_differs(
        tmp_path, capsys, status):
    """Issue 10: the sweep's rounds went 2 -> 3; the old file must not be skipped or resumed."""
    from fedmpi.cli import main

    out_dir = tmp_path / "res"
    sweep = write_sweep(tmp_path)  # rounds: 2
    h5 = out_dir / "seed=0.h5"
    write_result(h5, status, stored_config(sweep, rounds=3, seed=7))
    got = main(["sweep", sweep, "--task", "0", "--out-dir", str(out_dir), "--dry-run"])
    captured = capsys.readouterr()
    assert got == sw.EXIT_STALE == 2
    assert "rounds: file 3, sweep 2" in captured.err
    assert "seed: file 7, sweep 0" in captured.err
    assert "--overwrite-stale" in captured.err
    assert "skipping" not in captured.out and "--resume" not in captured.out
    # the way out: replace it (fedmpi run --overwrite keeps the old file until a round is done)
    got = main(["sweep", sweep, "--task", "0", "--out-dir", str(out_dir), "--dry-run",
                "--overwrite-stale"])
    captured = capsys.readouterr()
    assert got == 0
    assert f"{out_dir}/seed=0.yaml --out {h5} --overwrite" in captured.out
    assert "stale (rounds: file 3, sweep 2" in captured.err


def test_overwrite_stale_keeps_a_file_whose_config_matches(tmp_path, capsys):
    """--overwrite-stale can stay on a requeued array: matching files are still reused."""
    from fedmpi.cli import main

    out_dir = tmp_path / "res"
    sweep = write_sweep(tmp_path)
    write_result(out_dir / "seed=0.h5", "interrupted", stored_config(sweep))
    assert main(["sweep", sweep, "--task", "0", "--out-dir", str(out_dir), "--dry-run",
                 "--overwrite-stale"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--overwrite" not in out


def test_result_file_without_stored_config_is_not_trusted(tmp_path, capsys):
    from fedmpi.cli import main

    out_dir = tmp_path / "res"
    write_result(out_dir / "seed=0.h5", "completed", None)
    assert main(["sweep", write_sweep(tmp_path), "--task", "0", "--out-dir", str(out_dir),
                 "--dry-run"]) == 2
    assert "config_json: missing or unreadable" in capsys.readouterr().err


def test_config_differences_is_per_dotted_key():
    base = sw.resolved({"name": "q", "rounds": 2,
                        "compression": {"uplink": [{"prune": {"rate": 0.5}}]}})
    changed = json_copy(base)
    changed["compression"]["uplink"][0]["prune"]["rate"] = 0.9
    changed["run"]["deterministic"] = 1  # not a bool: a difference although True == 1
    assert sw.config_differences(base, changed) == [
        "compression.uplink.0.prune.rate: file 0.5, sweep 0.9",
        "run.deterministic: file true, sweep 1",
    ]
    assert sw.config_differences(base, json_copy(base)) == []


def test_config_differences_ignores_run_threads_and_keys_older_files_lack():
    base = sw.resolved({"name": "q"})
    other = json_copy(base)
    other["run"]["threads"] = 8  # how fast, not what: --cpus-per-task may change it
    other["run"]["eval_batch_size"] = 1000  # files made when 1000 was the default
    assert sw.config_differences(base, other) == []
    old_file = json_copy(base)
    del old_file["run"]["checkpoint_every"]  # a key added after the file was written
    assert sw.config_differences(old_file, base) == []  # ... the task has its default
    other["run"]["checkpoint_every"] = 7
    assert sw.config_differences(old_file, other) == [
        "run.checkpoint_every: file (absent), sweep 7"]


def test_path_prints_the_result_file_of_a_task(tmp_path, capsys):
    from fedmpi.cli import main

    sweep = write_sweep(tmp_path)
    assert main(["sweep", sweep, "--task", "0", "--results-dir", str(tmp_path / "r"),
                 "--path"]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path}/r/demo/seed=0.h5"


def json_copy(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d))


def test_task_forwards_sigterm_as_sigusr1_and_returns_the_run_status(tmp_path):
    """What sweep.sbatch relies on: a signal to `fedmpi sweep --task` reaches the launcher."""
    import signal
    import subprocess
    import sys
    import time

    launcher = tmp_path / "launcher.py"
    launcher.write_text(
        "import pathlib, signal, sys, time\n"
        "def stop(signum, frame):\n"
        f"    pathlib.Path({str(tmp_path / 'got')!r}).write_text(signal.Signals(signum).name)\n"
        "    sys.exit(75)\n"
        "signal.signal(signal.SIGUSR1, stop)\n"
        f"pathlib.Path({str(tmp_path / 'ready')!r}).touch()\n"
        "time.sleep(60)\n"
        "sys.exit(0)\n")
    proc = subprocess.Popen([sys.executable, "-m", "fedmpi", "sweep", write_sweep(tmp_path),
                             "--task", "0", "--out-dir", str(tmp_path / "res"),
                             "--launch", f"{sys.executable} {launcher}"])
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "ready").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 75
        assert (tmp_path / "got").read_text() == "SIGUSR1"
        assert (tmp_path / "res" / "seed=0.yaml").is_file()
    finally:
        proc.kill()


def test_a_sweep_file_that_is_an_alias_bomb_is_refused_fast(tmp_path):
    """Issue 10: sweep files go through the same bounded YAML loader as configs (in a
    child with a memory cap: the old loader needed gigabytes and never returned)."""
    import subprocess
    import sys

    lines = ["base: {name: t}", "junk:", "  a: &a [1,1,1,1,1,1,1,1,1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    code = ("import resource, sys, time\n"
            "resource.setrlimit(resource.RLIMIT_AS, (600 << 20, 600 << 20))\n"
            "from fedmpi import sweep\n"
            "t = time.perf_counter()\n"
            "try:\n    sweep.load(sys.argv[1])\n"
            "except sweep.ConfigError as exc:\n    print(time.perf_counter() - t); print(exc)\n")
    res = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                         timeout=60, cwd=__import__("pathlib").Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-2000:]
    seconds, message = res.stdout.splitlines()
    assert float(seconds) < 5 and "at most 100000 values" in message
