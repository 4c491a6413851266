"""Issue 10, bad input that got past validation, end to end under a real launcher: each is
a configuration error on every rank (exit 2), one message from rank 0, found before any
rank starts work, and no result file left behind (or, for --resume, the file untouched)."""

from __future__ import annotations

import json
import time

import h5py
import pytest

from fedmpi.results.schema import SCHEMA_VERSION
from mpijobs import PYTHON, QUICK, attrs, fedmpi_cmd, run

EXIT = "fedmpi-test-exit"


def every_rank(n: int, *args) -> list[str]:
    """fedmpi_cmd with each rank's exit status printed: `mpiexec`'s own is only one number."""
    cmd = fedmpi_cmd(n, *args)
    i = cmd.index(PYTHON)
    return [*cmd[:i], "sh", "-c", f'"$@"; echo "{EXIT} $?" >&2', "sh", *cmd[i:]]


def assert_config_error(res, n: int, *fragments: str) -> str:
    codes = [line.split()[1] for line in res.stderr.splitlines() if line.startswith(EXIT)]
    assert codes == ["2"] * n, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def anchor_bomb() -> str:
    lines = ["  a: &a [1,1,1,1,1,1,1,1,1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_anchor_bomb_fails_fast_on_every_rank(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(QUICK.read_text() + "junk:\n" + anchor_bomb())
    t = time.monotonic()
    res = run(every_rank(3, cfg, "--out", tmp_path / "x.h5"), timeout=120)
    assert time.monotonic() - t < 60  # the old code hung every rank at ~3.4 GB
    line = assert_config_error(res, 3, "at most 100000 values once YAML aliases")
    assert len(line) < 400
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("sets, fragment", [
    (["run.threads=100000"], "'run.threads': got 100000; allowed: null or an integer in 1..1024"),
    (["seed=100000000000000000000000"], "'seed'"),
    (["train.lr=.inf"], "'train.lr': got inf; allowed: a number in (0, 100]"),
    (["train.lr=[1,"], "'--set train.lr'"),
])
def test_out_of_range_numbers_and_bad_set_are_config_errors(tmp_path, sets, fragment):
    args = [a for s in sets for a in ("--set", s)]
    res = run(every_rank(3, QUICK, "--out", tmp_path / "x.h5", *args), timeout=120)
    assert_config_error(res, 3, fragment)
    assert not (tmp_path / "x.h5").exists()


def test_empty_and_binary_configs(tmp_path):
    empty, garbage = tmp_path / "empty.yaml", tmp_path / "garbage.yaml"
    empty.write_text("")
    garbage.write_bytes(bytes(range(256)))
    res = run(every_rank(2, empty, "--out", tmp_path / "x.h5"), timeout=120)
    assert_config_error(res, 2, "sets nothing")
    res = run(every_rank(2, garbage, "--out", tmp_path / "x.h5"), timeout=120)
    assert_config_error(res, 2, "UTF-8")
    assert not (tmp_path / "x.h5").exists()


def test_more_clients_than_samples_names_num_clients(tmp_path):
    res = run(every_rank(3, QUICK, "--out", tmp_path / "x.h5", "--set",
                         "clients.num_clients=1000000"), timeout=180)
    from fedmpi import data

    n_train = len(data.load("digits")[0])
    assert_config_error(res, 3, f"'clients.num_clients': got 1000000; allowed: at most {n_train} "
                        "(the number of training samples")
    assert not (tmp_path / "x.h5").exists()


def test_out_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    res = run(every_rank(3, QUICK, "--out", tmp_path / "file" / "r.h5"), timeout=120)
    assert_config_error(res, 3, "'--out'", "is not a folder")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A real run stopped after round 1 by its fault injection (file `failed`, resumable)."""
    out = tmp_path_factory.mktemp("resume") / "r.h5"
    res = run(fedmpi_cmd(3, QUICK, "--out", out, "--set", "rounds=3", "--set",
                         "run.fail_at={rank: 0, round: 1, where: aggregate}"), timeout=180)
    assert res.returncode != 0 and attrs(out)["status"] == "failed", res.stderr[-2000:]
    with h5py.File(out, "r", locking=False) as f:
        assert "checkpoint" in f
    return out


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst


def test_resume_with_config_set_and_out_is_refused(tmp_path, interrupted):
    h5 = _copy(interrupted, tmp_path / "r.h5")
    before = (h5.read_bytes(), h5.stat().st_mtime_ns)
    res = run(every_rank(3, "--resume", h5, QUICK, "--set", "rounds=15", "--out",
                         tmp_path / "g.h5"), timeout=120)
    assert_config_error(res, 3, "'--out'", "no --out with --resume")
    res = run(every_rank(3, "--resume", h5, QUICK, "--set", "rounds=15"), timeout=120)
    assert_config_error(res, 3, "'rounds': got 15; allowed: 3, the value stored in")
    assert (h5.read_bytes(), h5.stat().st_mtime_ns) == before
    assert not (tmp_path / "g.h5").exists()


@pytest.mark.parametrize("edit, fragment", [
    (lambda f: f.attrs.__setitem__("config_json", json.dumps(
        {**json.loads(f.attrs["config_json"]),
         "train": {**json.loads(f.attrs["config_json"])["train"], "model": "cnn"}})),
     "the model its checkpoint holds"),
    (lambda f: f.attrs.__setitem__("schema_version", 99),
     f"schema_version {SCHEMA_VERSION} (this one has 99"),
], ids=["edited-model", "newer-schema"])
def test_resume_of_an_incompatible_file_leaves_it_untouched(tmp_path, interrupted, edit, fragment):
    h5 = _copy(interrupted, tmp_path / "r.h5")
    with h5py.File(h5, "r+", locking=False) as f:
        edit(f)
    before = (h5.read_bytes(), h5.stat().st_mtime_ns)
    res = run(every_rank(3, "--resume", h5), timeout=120)
    assert_config_error(res, 3, fragment)
    assert (h5.read_bytes(), h5.stat().st_mtime_ns) == before
    assert attrs(h5)["status"] == "failed"  # as it was, not re-marked
