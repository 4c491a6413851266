"""`fedmpi run`'s plan (pure, no MPI): what is refused before any rank starts work.

Issue 10: --resume ignored CONFIG/--set/--out, a stored config edited to another model
ended in a KeyError after start-up (and flipped the file to `failed`), a newer
schema_version gave a traceback, and an --out that cannot be written failed only once
every rank had started.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from fedmpi import config, data, models
from fedmpi.errors import ConfigError
from fedmpi.results import ResultsWriter
from fedmpi.run import _describe, _plan
from fedmpi.train import get_state

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "configs" / "quickstart.yaml"


def args(config_path=None, *, out=None, resume=None, overwrite=False, sets=()):
    return argparse.Namespace(config=config_path and str(config_path), out=out and str(out),
                              resume=resume and str(resume), overwrite=overwrite,
                              overrides=list(sets))


def stored_run(path: Path, rounds: int = 3) -> Path:
    """An interrupted result file of the quick start (rounds=3) with a round-0 checkpoint."""
    cfg, text = config.load(QUICK, [f"rounds={rounds}"])
    shape, classes = data.describe(cfg.data.dataset)
    model = models.build(cfg.train.model, input_shape=shape, num_classes=classes)
    w = ResultsWriter(path, attrs={"config_json": cfg.to_json(), "config_yaml": text,
                                   "name": cfg.name, "seed": cfg.seed})
    w.save_checkpoint(round=0, global_state=get_state(model), memories={}, rng={})
    w.finish("interrupted", "stopped by SIGUSR1")
    return path


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def edit_stored_config(path: Path, **changes) -> None:
    with h5py.File(path, "r+", locking=False) as f:
        resolved = json.loads(f.attrs["config_json"])
        for dotted, value in changes.items():
            config.set_path(resolved, dotted.replace("__", "."), value)
        f.attrs["config_json"] = json.dumps(resolved)


# ----------------------------------------------------------------------------- --out


def test_out_under_a_regular_file_is_a_config_error(tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "r.h5"
    with pytest.raises(ConfigError) as err:
        _plan(args(QUICK, out=out), 3)
    assert err.value.field == "--out"
    assert "is not a folder" in err.value.allowed and str(tmp_path / "file") in err.value.allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_output_from_the_config_is_checked_too(tmp_path):
    (tmp_path / "file").write_text("x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(QUICK.read_text() + f"output: {tmp_path / 'file' / 'r.h5'}\n")
    with pytest.raises(ConfigError) as err:
        _plan(args(cfg), 3)
    assert err.value.field == "output"


def test_out_where_nothing_can_be_created_is_a_config_error(tmp_path):
    """/proc refuses new files even to root (chmod does not stop root: CI runs as root)."""
    with pytest.raises(ConfigError) as err:
        _plan(args(QUICK, out="/proc/fedmpi-test/r.h5"), 3)
    assert err.value.field == "--out" and "a path in a writable folder ('/proc'" in str(err.value)


def test_out_in_a_read_only_folder_is_a_config_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the /proc variant covers this")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ConfigError) as err:
            _plan(args(QUICK, out=ro / "new" / "r.h5"), 3)
        assert "writable folder" in err.value.allowed
    finally:
        ro.chmod(0o755)


def test_out_that_is_a_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        _plan(args(QUICK, out=tmp_path, overwrite=True), 3)


def test_only_rank_0_probes_the_output(tmp_path):
    (tmp_path / "file").write_text("x")
    plan = _plan(args(QUICK, out=tmp_path / "file" / "r.h5"), 3, rank=1)
    assert plan["out"] == tmp_path / "file" / "r.h5"  # rank 0 finds it; the Allreduce tells all


def test_a_writable_out_passes_and_leaves_nothing(tmp_path):
    plan = _plan(args(QUICK, out=tmp_path / "a" / "b" / "r.h5"), 3)
    assert plan["out"] == tmp_path / "a" / "b" / "r.h5"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder created


# ----------------------------------------------------------------------------- --resume


def test_resume_refuses_config_and_set_that_change_the_run(tmp_path):
    h5 = stored_run(tmp_path / "r.h5")
    before = fingerprint(h5)
    with pytest.raises(ConfigError) as err:  # the command line, minus --out
        _plan(args(QUICK, resume=h5, sets=["rounds=15"]), 3)
    assert err.value.field == "rounds" and err.value.value == 15
    assert err.value.allowed.startswith(f"3, the value stored in {h5}")
    assert "start a new one" in err.value.allowed
    with pytest.raises(ConfigError) as err:  # CONFIG alone: it says rounds 10
        _plan(args(QUICK, resume=h5), 3)
    assert err.value.field == "rounds" and err.value.value == 10
    with pytest.raises(ConfigError) as err:  # --set alone applies to the stored config
        _plan(args(resume=h5, sets=["rounds=15", "train.lr=0.1"]), 3)
    assert err.value.field == "rounds" and "1 more key(s) differ" in err.value.allowed
    assert fingerprint(h5) == before


def test_resume_accepts_config_and_set_that_repeat_the_stored_config(tmp_path):
    """jobs/workstation.sh passes CONFIG along with --resume."""
    h5 = stored_run(tmp_path / "r.h5")
    for a in (args(QUICK, resume=h5, sets=["rounds=3"]), args(resume=h5, sets=["rounds=3"]),
              args(resume=h5, out=h5), args(resume=h5)):
        plan = _plan(a, 3)
        assert plan["resume"] and plan["cfg"].rounds == 3 and plan["out"] == h5


def test_resume_refuses_out_and_overwrite(tmp_path):
    h5 = stored_run(tmp_path / "r.h5")
    with pytest.raises(ConfigError) as err:
        _plan(args(resume=h5, out=tmp_path / "g.h5"), 3)
    assert err.value.field == "--out" and "no --out with --resume" in err.value.allowed
    with pytest.raises(ConfigError) as err:
        _plan(args(resume=h5, overwrite=True), 3)
    assert err.value.field == "--overwrite"
    assert not (tmp_path / "g.h5").exists()


@pytest.mark.parametrize("changes, field", [
    ({"train__model": "cnn"}, "train.model"),  # the edit: KeyError after start-up
    ({"data__dataset": "cifar10", "data__path": str(ROOT)}, "train.model"),  # shapes differ
    ({"train__lr": float("inf")}, "train.lr"),
    ({"run__threads": 100_000}, "run.threads"),
])
def test_resume_of_an_edited_stored_config_is_refused_untouched(tmp_path, changes, field):
    h5 = stored_run(tmp_path / "r.h5")
    edit_stored_config(h5, **changes)
    before = fingerprint(h5)
    with pytest.raises(ConfigError) as err:
        _plan(args(resume=h5), 3)
    assert err.value.field == f"{field} (stored in {h5})"
    if field == "train.model":
        assert "the model its checkpoint holds" in err.value.allowed
    assert fingerprint(h5) == before


def test_resume_of_a_newer_schema_is_refused_untouched(tmp_path):
    h5 = stored_run(tmp_path / "r.h5")
    with h5py.File(h5, "r+", locking=False) as f:
        f.attrs["schema_version"] = 99
    before = fingerprint(h5)
    with pytest.raises(ConfigError) as err:
        _plan(args(resume=h5), 3)
    from fedmpi.results.schema import SCHEMA_VERSION

    assert err.value.field == "--resume"
    assert f"schema_version {SCHEMA_VERSION} (this one has 99" in str(err.value)
    assert fingerprint(h5) == before


def test_describe_is_bounded():
    assert len(_describe(ValueError("x" * 100_000))) <= 1000


def test_the_stored_run_fixture_resumes(tmp_path):
    """The refusals above are about the edits, not about a fixture that never resumes."""
    h5 = stored_run(tmp_path / "r.h5")
    plan = _plan(args(resume=h5), 3)
    assert plan["resume"] and not plan["already_completed"]
    assert yaml.safe_load(plan["text"])["name"] == "quickstart"
    assert torch.get_num_threads() >= 1
