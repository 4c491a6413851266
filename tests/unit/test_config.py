"""Config validation: one clear error naming the field, the value and what is allowed."""

import pytest

from fedmpi import config
from fedmpi.errors import ConfigError


def base() -> dict:
    return {"name": "t", "rounds": 2, "clients": {"num_clients": 4}}


@pytest.mark.parametrize(
    "path, value, field, allowed",
    [
        ("rounds", 0, "rounds", "an integer in 1..1000000"),
        ("rounds", "3", "rounds", "an integer"),
        ("clients.fraction", 0.0, "clients.fraction", "(0, 1]"),
        ("clients.fraction", 1.5, "clients.fraction", "(0, 1]"),
        ("clients.per_round", 5, "clients.per_round", "1..clients.num_clients"),
        ("train.lr", -1, "train.lr", "a number in (0, 100]"),
        ("train.momentum", 1.0, "train.momentum", "[0, 1)"),
        ("data.dataset", "mnist", "data.dataset", "digits | cifar10"),
        ("data.partition.method", "zipf", "data.partition.method", "iid | lda | shards"),
        ("data.partition.alpha", 0, "data.partition.alpha", "(0, 1e+06]"),
        ("compression.target", "grads", "compression.target", "weights | update"),
        ("run.device", "tpu", "run.device", "auto | cpu | cuda"),
        ("run.deterministic", "yes", "run.deterministic", "true or false"),
        ("data.path", "/nonexistent/cifar", None, None),
    ],
)
def test_bad_values_name_the_field(path, value, field, allowed):
    raw = base()
    if path == "data.path":
        raw["data"] = {"dataset": "cifar10"}
        field, allowed = "data.path", "existing"
    config.set_path(raw, path, value)
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == field
    assert allowed in str(err.value)
    assert repr(value) in str(err.value)


def test_unknown_key_is_named_with_known_keys():
    raw = base()
    raw["train"] = {"epochs": 3}
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == "train.epochs"
    assert "local_epochs" in err.value.allowed


def test_world_size_checks():
    cfg = config.from_dict(base())
    with pytest.raises(ConfigError, match="needs >= 2 ranks"):
        config.check_world(cfg, 1)
    with pytest.raises(ConfigError) as err:
        config.check_world(cfg, 6)  # 5 workers > 4 clients
    assert err.value.field == "clients.num_clients"
    config.check_world(cfg, 5)


def test_overrides_and_list_indices(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\ncompression:\n  uplink:\n    - prune: {rate: 0.1}\n")
    cfg, text = config.load(p, ["compression.uplink.0.prune.rate=0.9", "train.local_epochs=3"])
    assert cfg.compression.uplink[0]["prune"]["rate"] == 0.9
    assert cfg.train.local_epochs == 3
    assert "overrides" in text
    with pytest.raises(ConfigError) as err:
        config.load(p, ["compression.uplink.3.prune.rate=0.9"])
    assert "list index" in str(err.value)
    with pytest.raises(ConfigError):
        config.load(p, ["novalue"])


def test_clients_per_round():
    raw = base()
    raw["clients"]["fraction"] = 0.4
    raw["clients"]["num_clients"] = 10
    assert config.from_dict(raw).clients_per_round() == 4
    raw["clients"]["per_round"] = 7
    assert config.from_dict(raw).clients_per_round() == 7


def test_round_trip_through_json():
    cfg = config.from_dict(base())
    import json

    assert config.from_dict(json.loads(cfg.to_json())) == cfg


# ----------------------------------------------------------------------------- numeric bounds


def _numeric_fields(cls=config.Config, where=""):
    """(dotted name, field, is int) of every int/float field, nested dataclasses included."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, dotted = hints[f.name], f"{where}{f.name}"
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, dotted + ".")
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
        if args[0] in (int, float):
            yield dotted, f, args[0] is int


NUMERIC = list(_numeric_fields())


def test_every_numeric_field_has_bounds():
    """A field added without `num(default, lo, hi)` fails here, not on a cluster."""
    assert len(NUMERIC) >= 18
    unbounded = [name for name, f, _ in NUMERIC if "range" not in f.metadata]
    assert unbounded == []


def _just_outside(rng, integer):
    lo = rng.lo if not integer else rng.lo - 1
    hi = rng.hi if not integer else rng.hi + 1
    if not integer:
        lo = rng.lo if rng.lo_open else rng.lo - abs(rng.lo) * 1e-9 - 1e-12
        hi = rng.hi if rng.hi_open else rng.hi * (1 + 1e-9) + 1e-12
    return lo, hi


@pytest.mark.parametrize("name, fld, integer", NUMERIC, ids=[n for n, *_ in NUMERIC])
def test_each_numeric_field_refuses_values_outside_its_range(name, fld, integer):
    rng = fld.metadata["range"]
    bad = [*_just_outside(rng, integer)] + ([] if integer else [float("inf"), float("-inf"),
                                                                 float("nan")])
    if integer:
        bad += [10**23, -(10**23)]
    for value in bad:
        raw = base()
        config.set_path(raw, name, value)
        with pytest.raises(ConfigError) as err:
            config.from_dict(raw)
        assert err.value.field == name, value
        assert str(rng.hi if integer else f"{rng.hi:g}") in err.value.allowed, err.value
    for value in (rng.hi, rng.lo):  # the edges themselves, where closed
        if not integer and (rng.lo_open if value == rng.lo else rng.hi_open):
            continue
        raw = base()
        config.set_path(raw, name, value)
        if name == "clients.per_round":
            raw["clients"]["num_clients"] = rng.hi
        if name in ("run.poll.min_sleep_s", "run.poll.max_sleep_s"):  # min <= max
            raw["run"]["poll"] = {"min_sleep_s": value, "max_sleep_s": value}
        assert config._get(config.from_dict(raw), name) == value


@pytest.mark.parametrize(
    "path, value, allowed",
    [
        ("run.threads", 100_000, "null or an integer in 1..1024"),  # segfaulted torch
        ("seed", 10**23, "an integer in 0..4294967295"),  # failed in an h5py write
        ("train.lr", float("inf"), "a number in (0, 100]"),  # a NaN model, `completed`
        ("train.weight_decay", float("inf"), "a number in [0, 1]"),
        ("train.lr", float("nan"), "a number in (0, 100]"),
    ],
)
def test_issue_10_values_are_config_errors_naming_field_and_range(path, value, allowed):
    raw = base()
    config.set_path(raw, path, value)
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == path
    assert err.value.allowed == allowed


def test_inf_and_huge_numbers_from_yaml_text(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\ntrain: {lr: .inf, weight_decay: .inf}\n")
    with pytest.raises(ConfigError, match=r"'train.lr': got inf; allowed: a number in \(0, 100\]"):
        config.load(p)
    p.write_text("name: t\nseed: 100000000000000000000000\n")
    with pytest.raises(ConfigError, match="'seed'.*0..4294967295"):
        config.load(p)
    p.write_text("name: t\ntrain: {lr: " + "9" * 400 + "}\n")  # beyond float range
    with pytest.raises(ConfigError, match="'train.lr'.*finite"):
        config.load(p)
    p.write_text("name: t\nseed: " + "9" * 5000 + "\n")  # beyond Python's int parsing limit
    with pytest.raises(ConfigError, match="more than 4300 digits"):
        config.load(p)


def test_fail_at_numbers_are_bounded():
    raw = base()
    raw["run"] = {"fail_at": {"rank": 10**30, "round": 1, "where": "train"}}
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == "run.fail_at.rank"


def test_strings_with_nul_or_unbounded_length_are_refused():
    for value in ("a\0b", "x" * 5000):
        raw = base()
        raw["output"] = value
        with pytest.raises(ConfigError) as err:
            config.from_dict(raw)
        assert err.value.field == "output"
    raw = base()
    raw["name"] = "two\nlines"
    with pytest.raises(ConfigError, match="printable"):
        config.from_dict(raw)


# ----------------------------------------------------------------------------- hostile files

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def anchor_bomb(indent: str = "  ", levels: int = 9) -> str:
    """The issue's bomb: 300 bytes that expand to 9**9 list items (PyYAML shares them)."""
    lines = [f"{indent}a: &a [1,1,1,1,1,1,1,1,1]"]
    names = "abcdefghijklmnop"
    for prev, name in zip(names, names[1:levels]):
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


BOMBS = {
    "unknown-key": "name: t\njunk:\n" + anchor_bomb(),
    "unknown-nested-key": "name: t\ntrain:\n  zz:\n" + anchor_bomb("    "),
    "stage-parameter": ("name: t\nx_: &x {}\ncompression:\n  uplink:\n    - prune:\n"
                        "        rate: 0.5\n        junk:\n" + anchor_bomb("          ")),
    "merge-keys": "name: t\njunk:\n  a: &a {k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8}\n"
                  + "".join(f"  {n}: &{n} {{<<: [{', '.join(['*' + p] * 9)}]}}\n"
                            for p, n in zip("abcdefgh", "bcdefghi")),
    "recursive-alias": "name: t\njunk: &r [1, *r]\n",
    "deep-nesting": "name: t\njunk: " + "[" * 5000 + "]" * 5000 + "\n",
}


def _load_in_child(path, overrides=(), limit_mb=600, timeout=60):
    """config.load in a child with a memory cap; the old code hangs at ~3.4 GB."""
    import subprocess
    import sys

    code = (
        "import resource, sys, time\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({limit_mb} << 20, {limit_mb} << 20))\n"
        "from fedmpi import config\n"
        "from fedmpi.errors import ConfigError\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    config.load(sys.argv[1], sys.argv[2:])\n"
        "    print('LOADED')\n"
        "except ConfigError as exc:\n"
        "    print(f'{time.perf_counter() - t:.3f}'); print(exc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(path), *overrides], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    seconds, message = res.stdout.split("\n", 1)
    return float(seconds), message.strip()


@pytest.mark.parametrize("kind", BOMBS)
def test_anchor_bombs_fail_fast_with_a_clear_message(tmp_path, kind):
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMBS[kind])
    assert p.stat().st_size < 40_000
    seconds, message = _load_in_child(p)
    assert seconds < 5, message
    assert message.startswith(f"config field 'config': got '{p}'; allowed: ")
    assert len(message) < 400 and "\n" not in message
    assert ("at most 100000 values" in message if kind not in ("recursive-alias", "deep-nesting")
            else "at most 32 levels" in message), message


def test_anchor_bomb_through_set_fails_fast(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\n")
    bomb = "{" + anchor_bomb("").strip().replace("\n", ", ") + "}"
    seconds, message = _load_in_child(p, [f"train.junk={bomb}"])
    assert seconds < 5
    assert "'--set train.junk'" in message and "at most 100000 values" in message


def _in_child(code: str, limit_mb: int = 600, timeout: float = 60) -> str:
    """Run `code` in a child with a memory cap (the old code needed ~3.4 GB and hung)."""
    import subprocess
    import sys

    head = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit_mb} << 20, {limit_mb} << 20))\n")
    res = subprocess.run([sys.executable, "-c", head + code], cwd=ROOT, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


BOMB_OBJECT = """
bomb = [1] * 9
for _ in range(8):  # 9**9 items through shared references, as YAML aliases make them
    bomb = [bomb] * 9
"""


def test_error_messages_quote_a_bounded_repr():
    out = _in_child(BOMB_OBJECT + """
import time
from fedmpi.errors import ConfigError, short
t = time.perf_counter()
text = str(ConfigError("train.junk", bomb, "x" * 10_000))
print(time.perf_counter() - t)
print(text)
print(short(10**5000))
print(short("y" * 10**6))
print(short("/scratch/" + "d" * 230 + "/run.h5"))
""")
    seconds, text, big, long, path = out.splitlines()
    assert float(seconds) < 1
    assert len(text) < 1100  # field 200 + value 400 + allowed 600 at most, and the frame
    assert text.startswith("config field 'train.junk': got [[[[...], [...],")
    assert big == "<integer of 16610 bits>"  # Python's repr would raise past 4300 digits
    assert len(long) <= 400
    assert path == repr("/scratch/" + "d" * 230 + "/run.h5")  # a long path is quoted whole


def test_stage_and_unknown_key_errors_do_not_walk_the_value():
    """Through from_dict too (sweeps and stored configs skip the YAML loader)."""
    out = _in_child(BOMB_OBJECT + """
from fedmpi import config
from fedmpi.errors import ConfigError
for raw in ({"name": "t", "junk": bomb},
            {"name": "t", "compression": {"uplink": [{"prune": {"rate": 0.5, "x": bomb}}]}}):
    try:
        config.from_dict(raw)
    except ConfigError as exc:
        print(exc)
""")
    lines = out.splitlines()
    assert len(lines) == 2
    assert all("at most 100000 values" in line for line in lines), lines


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("name: t\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="at most 1048576 bytes"):
        config.load(p)


# ----------------------------------------------------------------------------- one clear line


@pytest.mark.parametrize("text", ["", "\n# only a comment\n", "{}\n", "---\n"])
def test_an_empty_config_is_an_error_naming_what_is_needed(tmp_path, text):
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(p)
    assert err.value.field == "config"
    assert "sets nothing" in err.value.allowed and "name:" in err.value.allowed


def test_binary_garbage_is_a_config_error(tmp_path):
    p = tmp_path / "garbage.yaml"
    p.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="UTF-8 text file"):
        config.load(p)
    p.write_bytes(b"name: t\x00\x01\x02\n")  # valid UTF-8, but not YAML
    with pytest.raises(ConfigError) as err:
        config.load(p)
    assert "\n" not in str(err.value) and "line 1, column 8" in str(err.value)


def test_bad_yaml_is_one_line_naming_where(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\n")
    with pytest.raises(ConfigError) as err:
        config.load(p, ["train.lr=[1,"])
    message = str(err.value)
    assert "\n" not in message
    assert message == ("config field '--set train.lr': got '[1,'; allowed: valid YAML (line 1, "
                       "column 4: expected the node content, but found '<stream end>')")
    p.write_text("name: t\ntrain: {lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        config.load(p)
    assert "\n" not in str(err.value) and "valid YAML (line 3" in str(err.value)


@pytest.mark.parametrize("item", ["=3", "train..lr=3", "train.lr x=3", " =1", "a/b=2"])
def test_set_needs_a_dotted_key(item):
    with pytest.raises(ConfigError) as err:
        config.parse_override(item)
    assert err.value.field == "--set"


def test_non_string_keys_do_not_crash():
    raw = base()
    raw.update({1: "x", "zz": 2})
    with pytest.raises(ConfigError) as err:
        config.from_dict(raw)
    assert err.value.field == "1"


def test_values_the_result_file_cannot_store_as_json_are_refused(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: t\nrun:\n  fail_at: {rank: 1, round: 1, where: train, 2: !!binary aGk=}\n")
    with pytest.raises(ConfigError) as err:
        config.load(p)
    assert err.value.field == "config" and "plain values" in err.value.allowed


def test_round_deadline_is_off_by_default_and_bounded():
    assert config.from_dict({}).run.round_deadline_s is None
    for bad in (0, -1, float("nan"), 10**9):
        with pytest.raises(ConfigError) as err:
            config.from_dict({"run": {"round_deadline_s": bad}})
        assert err.value.field == "run.round_deadline_s"
    assert config.from_dict({"run": {"round_deadline_s": 2.5}}).run.round_deadline_s == 2.5


def test_fail_at_sleep_takes_seconds():
    from fedmpi import faults

    faults.validate({"rank": 1, "round": 2, "where": "sleep", "seconds": 0.5})
    with pytest.raises(ConfigError) as err:
        faults.validate({"rank": 1, "round": 2, "where": "sleep", "seconds": -1})
    assert err.value.field == "run.fail_at.seconds"
