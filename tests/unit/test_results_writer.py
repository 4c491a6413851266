"""ResultsWriter: schema completeness, durability, crash safety, no silent overwrite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pandas as pd
import pytest

import fedmpi
from fedmpi.errors import FedMPIError
from fedmpi.results import (
    ResultsError,
    ResultsExistError,
    ResultsWriter,
    load,
    read_checkpoint,
    schema,
    schema_markdown,
    synthetic,
)
from fedmpi.results import checkpoint as ckpt
from fedmpi.results.integrity import checkpoint_digest


def _row(r: int, **over) -> dict:
    row = {c: 0 for c in schema.columns("rounds")}
    row.update(round=r, test_accuracy=0.5, cum_wire_bytes=100 * (r + 1), **over)
    return row


def _messages(r: int, n: int = 3) -> dict:
    cols = {c: np.zeros(n) for c in schema.columns("messages")}
    cols.update(round=np.full(n, r), kind=np.full(n, 3), direction=np.ones(n))
    return cols


def test_every_documented_field_present(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, theta=0.5, rounds=3)
    with h5py.File(path, "r", locking=False) as f:
        for field in schema.ROOT_ATTRS:
            assert field.name in f.attrs, field.name
            if field.dtype == "str":
                info = h5py.check_string_dtype(f.attrs.get_id(field.name).dtype)
                assert info is not None and info.encoding == "utf-8" and info.length is None
        assert f.attrs["schema_version"] == schema.SCHEMA_VERSION == 2
        assert f.attrs["status"] == "completed" and f.attrs["completed_rounds"] == 3
        assert json.loads(f.attrs["config_json"])["train"]["local_epochs"] == 1
        assert json.loads(f.attrs["hosts"]) == ["node0"] * 3
        for table, fields in schema.TABLES.items():
            for field in fields:
                ds = f[table][field.name]
                assert ds.dtype == np.dtype(field.dtype), (table, field.name)
                assert ds.maxshape == (None,) and ds.chunks is not None
                assert ds.fletcher32, (table, field.name)  # a changed byte is an error
                assert ds.attrs["units"] == field.units
        assert len(f["rounds/round"]) == 3
        assert f["clients/class_histogram"].shape == (8, 10)
        g = f["messages"]
        assert json.loads(g.attrs["kind_names"])["3"] == "update"
        assert json.loads(g.attrs["direction_names"]) == {"0": "down", "1": "up"}
        assert json.loads(g.attrs["codecs"])["1"] == "prune>zstd"
        c = f["checkpoint"]
        assert c.attrs["round"] == 2 and bool(c.attrs["complete"])
        assert c["global/fc.weight"].dtype == np.float32
        assert c["rng/numpy"].dtype == np.uint8
        # The documented plain-pandas recipe works on every table group.
        df = pd.DataFrame({k: f["rounds"][k][()] for k in f["rounds"]})
        assert list(df["round"]) == [0, 1, 2]
    assert {".checkpoint_new", ".checkpoint_old"}.isdisjoint(h5py.File(path, "r", locking=False))


def test_h5dump_opens_the_file(tmp_path):
    if shutil.which("h5dump") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("h5dump missing on CI: install hdf5-tools")
        pytest.skip("h5dump not installed (apt-get install -y hdf5-tools); required when CI=true")
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=2)
    out = subprocess.run(["h5dump", "-H", str(path)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    for name in ("rounds", "messages", "clients", "checkpoint", "test_accuracy", "status"):
        assert name in out.stdout


_KILLED = """
import os, numpy as np
from fedmpi.results import ResultsWriter, schema
w = ResultsWriter({path!r}, attrs=dict(name="killed", seed=1))
for r in range(3):
    row = {{c: 0 for c in schema.columns("rounds")}}
    row.update(round=r, test_accuracy=0.1 * (r + 1))
    w.append_round(row)
    cols = {{c: np.zeros(2) for c in schema.columns("messages")}}
    cols.update(round=np.full(2, r), kind=np.full(2, 2))
    w.append_messages(cols)
    w.save_checkpoint(round=r, global_state={{"w": np.full(4, r, np.float32)}},
                      memories={{}}, rng={{}})
    w.flush()
{tail}
os.kill(os.getpid(), 9)
"""


def _run_killed(path, tail: str = "") -> None:
    code = _KILLED.format(path=str(path), tail=textwrap.dedent(tail))
    root = os.path.dirname(os.path.dirname(fedmpi.__file__))  # however pytest was started
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == -9, proc.stderr


def test_killed_between_rounds_keeps_every_completed_round(tmp_path):
    path = tmp_path / "killed.h5"
    _run_killed(path)
    res = load(path)
    assert list(res.rounds["round"]) == [0, 1, 2]
    assert res.runs.loc[0, "status"] == "running"
    assert res.runs.loc[0, "completed_rounds"] == 3
    assert len(res.messages) == 6
    assert read_checkpoint(path).round == 2


def test_killed_mid_checkpoint_keeps_a_complete_checkpoint(tmp_path):
    path = tmp_path / "killed.h5"
    # A 4th round: its row is appended, then the process dies halfway through
    # writing the checkpoint's tensors (no flush after round 2).
    _run_killed(path, tail="""
    class Dying(dict):
        def items(self):
            yield "a", np.ones(1000, np.float32)
            os.kill(os.getpid(), 9)
    w.append_round({**row, "round": 3})
    w.save_checkpoint(round=3, global_state=Dying(), memories={}, rng={})
    """)
    c = read_checkpoint(path)
    assert c.round == 2 and np.array_equal(c.global_state["w"], np.full(4, 2, np.float32))
    assert list(load(path).rounds["round"])[:3] == [0, 1, 2]


def test_checkpoint_swap_states(tmp_path):
    path = tmp_path / "c.h5"
    w = ResultsWriter(path, attrs={})
    state = {"layer1.0.conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "odd/name%": np.ones(2, np.float32), ".": np.zeros(1, np.float32),
             "num_batches": np.array(7, dtype=np.int64)}
    mem = {"server": {"fc.weight": np.ones(3, np.float32)}, "client_4": {"a/b": np.zeros(2)}}
    w.save_checkpoint(round=1, global_state=state, memories=mem, rng={"torch": b"\x00\x01\xff"})
    c = read_checkpoint(path)
    assert c.round == 1 and c.rng == {"torch": b"\x00\x01\xff"}
    assert set(c.global_state) == set(state) and set(c.memories) == set(mem)
    for k, v in state.items():
        assert c.global_state[k].dtype == v.dtype and np.array_equal(c.global_state[k], v)
    assert np.array_equal(c.memories["client_4"]["a/b"], np.zeros(2))

    f = w._file
    # Kill while writing the new copy: it is incomplete, so the old one is used.
    f.create_group(ckpt.NEW_NAME).attrs["complete"] = False
    w.flush()
    assert read_checkpoint(path).round == 1
    # Kill between the two moves: only the complete new copy and the old one exist.
    del f[ckpt.NEW_NAME]
    f.move(ckpt.NAME, ckpt.OLD_NAME)
    g = f.create_group(ckpt.NEW_NAME)
    for sub in ("global", "memory", "rng"):
        g.create_group(sub)
    g.attrs.update(round=2, complete=True, sha256=checkpoint_digest(2, []))
    w.flush()
    assert read_checkpoint(path).round == 2
    # The next save starts from that state and leaves exactly one checkpoint.
    w.save_checkpoint(round=3, global_state={}, memories={}, rng={})
    assert ckpt.NEW_NAME not in f and ckpt.OLD_NAME not in f
    assert read_checkpoint(path).round == 3
    w.finish("completed")


def test_refuses_to_overwrite_without_flag(tmp_path):
    path = tmp_path / "run.h5"
    synthetic.write_run(path, rounds=1)
    before = path.read_bytes()
    with pytest.raises(ResultsExistError, match="--overwrite") as info:
        ResultsWriter(path, attrs={})
    assert str(path) in str(info.value) and isinstance(info.value, FedMPIError)
    assert path.read_bytes() == before


def test_overwrite_replaces_only_at_first_flush(tmp_path):
    path = tmp_path / "sub" / "run.h5"
    synthetic.write_run(path, rounds=2)  # creates the parent directory
    w = ResultsWriter(path, attrs={"name": "new"}, overwrite=True)
    assert load(path).runs.loc[0, "status"] == "completed"  # old file untouched so far
    w.close()  # a start that fails before any round
    assert load(path).runs.loc[0, "completed_rounds"] == 2
    w = ResultsWriter(path, attrs={"name": "new"}, overwrite=True)
    w.finish("failed", "boom before round 0")  # handled failure: old results kept too
    assert load(path).runs.loc[0, "status"] == "completed"
    w = ResultsWriter(path, attrs={"name": "new"}, overwrite=True)
    w.append_round(_row(0))
    w.flush()
    runs = load(path).runs
    assert runs.loc[0, "name"] == "new" and runs.loc[0, "status"] == "running"
    w.finish("completed")
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.h5"]  # no temp left


def test_rows_are_validated(tmp_path):
    w = ResultsWriter(tmp_path / "v.h5", attrs={})
    with pytest.raises(ValueError, match="unknown columns \\['bogus'\\]"):
        w.append_round({**_row(0), "bogus": 1})
    row = _row(0)
    del row["wait_s"]
    with pytest.raises(ValueError, match="missing columns \\['wait_s'\\]"):
        w.append_round(row)
    with pytest.raises(ValueError, match="up_bytes"):
        w.append_round(_row(0, up_bytes=2.5))
    with pytest.raises(ValueError, match="kind"):
        w.append_messages({**_messages(0), "kind": np.full(3, 9)})
    with pytest.raises(ValueError, match="equal length"):
        w.append_messages({**_messages(0), "client": np.zeros(2)})
    with pytest.raises(ValueError, match="invalid results attribute name"):
        w.set_attrs(**{"a/b": 1})
    with pytest.raises(ValueError, match="cannot store"):
        w.set_attrs(colour=object())
    with pytest.raises(ValueError, match="must be an integer"):
        w.set_attrs(world_size=2.5)
    with pytest.raises(ValueError, match="status"):
        w.set_attrs(status="exploded")
    assert len(w._file["rounds/round"]) == 0 and len(w._file["messages/round"]) == 0
    w.finish("completed")


def test_resume_truncates_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "r.h5"
    synthetic.write_run(path, rounds=5, finish="interrupted")
    with pytest.raises(ResultsError, match="does not exist"):
        ResultsWriter(tmp_path / "missing.h5", attrs={}, resume=True)
    w = ResultsWriter(path, attrs={"command": "fedmpi run --resume"}, resume=True)
    w.truncate_after(2)
    assert h5py.File(path, "r", locking=False).attrs["status"] == "running"
    w.append_round(_row(3))
    w.append_messages(_messages(3))
    w.finish("completed")
    res = load(path)
    assert list(res.rounds["round"]) == [0, 1, 2, 3]
    assert res.messages["round"].max() == 3 and set(res.messages["round"]) == {0, 1, 2, 3}
    assert res.runs.loc[0, "completed_rounds"] == 4
    assert res.runs.loc[0, "command"] == "fedmpi run --resume"


def test_context_manager_records_failure(tmp_path):
    path = tmp_path / "f.h5"
    with pytest.raises(RuntimeError):
        with ResultsWriter(path, attrs={}) as w:
            w.append_round(_row(0))
            raise RuntimeError("worker 3 died")
    runs = load(path).runs
    assert runs.loc[0, "status"] == "failed"
    assert runs.loc[0, "failure_reason"] == "RuntimeError: worker 3 died"
    assert runs.loc[0, "end_time"]


def test_schema_markdown_lists_every_column():
    md = schema_markdown()
    for fields in (*schema.TABLES.values(), schema.ROOT_ATTRS):
        for field in fields:
            assert f"| `{field.name}` | {field.dtype} |" in md
