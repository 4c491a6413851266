"""Worker-local client-state files (fedmpi.results.clientstate): round trip, crash safety,
run identity, two generations kept, damage found, one writer."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from fedmpi.results import clientstate as cs
from fedmpi.results.clientstate import ClientStateError, ClientStateStore
from fedmpi.results.errors import ResultsError, ResultsLockedError

RUN = cs.run_identity({"seed": 0, "rounds": 5}, "2026-11-27T12:00:00+00:00")


def _states(seed, clients=(3, 5, 8)):
    rng = np.random.default_rng(seed)
    return {c: {"layer1.0.conv.weight": rng.normal(size=(4, 3)).astype(np.float32),
                "fc/bias": rng.normal(size=5).astype(np.float32),  # '/' in a name
                "q": rng.normal(size=(2, 2)).astype(np.float64),
                "steps": np.array([seed, c], np.int64)} for c in clients}


def _assert_states_equal(got, want):
    assert sorted(got) == sorted(want)
    for c in want:
        assert sorted(got[c]) == sorted(want[c])
        for k, v in want[c].items():
            assert got[c][k].dtype == v.dtype and got[c][k].shape == v.shape
            assert got[c][k].tobytes() == v.tobytes()  # bit for bit


def test_round_trip_is_bit_exact(tmp_path):
    result = tmp_path / "run.h5"
    want = _states(1)
    want[9] = {}  # a client without state yet
    want[3]["mask"] = np.array([True, False, True])
    with ClientStateStore(result, 1, RUN) as store:
        path = store.save(4, want)
        assert path == tmp_path / "run.h5.rank1.round4.state"
        _assert_states_equal(store.load(4), want)
        _assert_states_equal(store.load(4, clients=[9, 8, 5, 3]), want)
    # another process (a resumed worker) reads it back the same
    with ClientStateStore(result, 1, RUN) as again:
        _assert_states_equal(again.load(4), want)
    assert sorted(os.listdir(tmp_path)) == ["run.h5.rank1.round4.state"]  # no lock, no temp


def test_load_gives_exactly_the_round_asked_for(tmp_path):
    with ClientStateStore(tmp_path / "run.h5", 2, RUN) as store:
        store.save(1, _states(1))
        store.save(2, _states(2))
        _assert_states_equal(store.load(1), _states(1))
        _assert_states_equal(store.load(2), _states(2))
        with pytest.raises(ClientStateError, match=r"run\.h5\.rank2\.round3\.state: no client-state "
                                                   r"file for rank 2 at round 3 .*rounds \[1, 2\]"):
            store.load(3)
        with pytest.raises(ClientStateError, match=r"missing \[4\], not hosted \[8\]"):
            store.load(2, clients=[3, 4, 5])


def test_pruning_keeps_exactly_three_generations(tmp_path):
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 1, RUN) as store:
        store.save(0, _states(0))
        assert store.rounds() == [0]
        store.save(2, _states(2))
        assert store.rounds() == [0, 2]
        for r in (4, 6, 8):
            store.save(r, _states(r))
            assert store.rounds() == [r - 4, r - 2, r]
        # A resume from the server's checkpoint at 6 redoes round 7: round 8 belongs to the
        # abandoned timeline and goes; 4 and 6 (checkpoints the server may still hold) stay.
        store.save(7, _states(7))
        assert store.rounds() == [4, 6, 7]
        _assert_states_equal(store.load(6), _states(6))
        store.save(7, _states(77))  # the same round again replaces it
        assert store.rounds() == [4, 6, 7]
        _assert_states_equal(store.load(7), _states(77))
    with ClientStateStore(result, 2, RUN) as other:  # ranks prune only their own files
        other.save(9, _states(9))
    assert cs.generations(result, 1).keys() == {4, 6, 7}
    assert sorted(os.listdir(tmp_path)) == ["run.h5.rank1.round4.state", "run.h5.rank1.round6.state",
                                            "run.h5.rank1.round7.state", "run.h5.rank2.round9.state"]
    with ClientStateStore(result, 1, RUN) as store:  # a completed run drops its generations
        store.discard()
    assert sorted(os.listdir(tmp_path)) == ["run.h5.rank2.round9.state"]


def test_a_file_of_another_run_is_refused(tmp_path):
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 1, RUN) as store:
        store.save(3, _states(3))
    other = cs.run_identity({"seed": 0, "rounds": 5}, "2026-11-27T13:00:00+00:00")
    assert other != RUN
    with ClientStateStore(result, 1, other) as store:
        with pytest.raises(ClientStateError, match=r"run\.h5\.rank1\.round3\.state: belongs to "
                                                   "another run"):
            store.load(3)


def test_a_renamed_file_is_refused(tmp_path):
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 1, RUN) as store:
        store.save(3, _states(3))
    os.rename(cs.state_path(result, 1, 3), cs.state_path(result, 2, 3))
    os.link(cs.state_path(result, 2, 3), cs.state_path(result, 2, 4))
    with ClientStateStore(result, 2, RUN) as store:
        with pytest.raises(ClientStateError, match="holds rank 1, expected 2"):
            store.load(3)
    with pytest.raises(ClientStateError, match="holds round 3, expected 4"):
        cs.read_states(cs.state_path(result, 2, 4), run=RUN, rank=1, round=4)


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    import h5py, numpy as np
    from fedmpi.results.clientstate import ClientStateStore
    store = ClientStateStore(sys.argv[1], 1, sys.argv[2])
    store.save(1, {0: {"r": np.arange(4, dtype=np.float32)}})
    made = []
    real = h5py.Group.create_dataset
    def dying(self, *a, **k):  # the process is killed while it writes round 2
        made.append(real(self, *a, **k))
        if len(made) == 2:
            self.file.flush()
            os._exit(9)
        return made[-1]
    h5py.Group.create_dataset = dying
    store.save(2, {0: {"r": np.ones(4, np.float32)}, 1: {"r": np.ones(4, np.float32)}})
""")


def test_a_crash_while_writing_leaves_the_previous_generation(tmp_path):
    result = tmp_path / "run.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(cs.__file__).parents[2])}  # this checkout
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(result), RUN], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    left = sorted(os.listdir(tmp_path))
    temps = [n for n in left if n.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith(".run.h5.rank1.round2.state.")
    # The dead writer's lock went with it; the new store removes its temporary.
    with ClientStateStore(result, 1, RUN) as store:
        assert store.rounds() == [1]
        np.testing.assert_array_equal(store.load(1)[0]["r"], np.arange(4))
        with pytest.raises(ClientStateError, match="round2.state: no client-state file"):
            store.load(2)
    assert sorted(os.listdir(tmp_path)) == ["run.h5.rank1.round1.state"]


def test_a_failed_save_keeps_the_previous_generation_and_no_temporary(tmp_path):
    with ClientStateStore(tmp_path / "run.h5", 1, RUN) as store:
        store.save(1, _states(1))
        with pytest.raises(ValueError, match=r"client 3 state 'bad': dtype <U1 cannot be stored"):
            store.save(2, {3: {"bad": np.array(["x"])}})
        with pytest.raises(ValueError, match="client -1 is not a distinct number"):
            store.save(2, {-1: {}})
        assert store.rounds() == [1]
        _assert_states_equal(store.load(1), _states(1))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_one_writer_per_rank(tmp_path):
    result = tmp_path / "run.h5"
    first = ClientStateStore(result, 1, RUN)
    try:
        with pytest.raises(ResultsLockedError, match=rf"pid {os.getpid()} .*\.run\.h5\.rank1\.state\.lock"):
            ClientStateStore(result, 1, RUN)
        ClientStateStore(result, 2, RUN).close()  # another rank: its own file
    finally:
        first.close()
    with pytest.raises(ValueError, match="save after close"):
        first.save(1, {})
    ClientStateStore(result, 1, RUN).close()


def _saved(tmp_path):
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 1, RUN) as store:
        store.save(7, _states(7))
    return result, cs.state_path(result, 1, 7)


def test_a_corrupted_array_fails_its_checksum(tmp_path):
    result, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    needle = _states(7)[5]["layer1.0.conv.weight"].tobytes()
    at = bytes(data).index(needle)
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with ClientStateStore(result, 1, RUN) as store:
        with pytest.raises(ClientStateError, match=r"round7\.state: client states do not match "
                                                   "their checksum; the file is damaged"):
            store.load(7)


def test_a_lost_client_without_state_fails_the_checksum(tmp_path):
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 1, RUN) as store:
        store.save(2, {4: {}, 6: {"r": np.zeros(2, np.float32)}})
    with h5py.File(cs.state_path(result, 1, 2), "r+") as f:
        del f["clients/4"]
    with pytest.raises(ClientStateError, match="do not match their checksum"):
        cs.read_states(cs.state_path(result, 1, 2), run=RUN, rank=1, round=2)


def test_a_truncated_or_foreign_file_gives_a_clear_error(tmp_path):
    result, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClientStateError, match=r"round7\.state: "):
        cs.read_states(path, run=RUN, rank=1, round=7)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(ClientStateError, match="not a readable client-state file"):
        cs.read_states(path, run=RUN, rank=1, round=7)


def test_every_sampled_bit_flip_is_found_or_harmless(tmp_path):
    """A flip anywhere gives a ClientStateError naming the file, or the exact states."""
    result, path = _saved(tmp_path)
    clean = path.read_bytes()
    want = _states(7)
    rng = np.random.default_rng(0)
    for offset in sorted(rng.choice(len(clean), size=min(150, len(clean)), replace=False)):
        data = bytearray(clean)
        data[offset] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(data))
        try:
            got = cs.read_states(path, run=RUN, rank=1, round=7)
        except ResultsError as exc:
            assert isinstance(exc, ClientStateError) and str(path) in str(exc)
        else:
            _assert_states_equal(got, want)


def test_remove_all_takes_every_rank_of_this_result_and_nothing_else(tmp_path):
    """What a new run of a result (--overwrite) deletes: every rank's files of it, not
    another result's, not a temporary, not the result itself."""
    result = tmp_path / "run.h5"
    for rank in (1, 2, 7):
        with ClientStateStore(result, rank, RUN) as store:
            store.save(3, _states(rank, clients=(rank,)))
    with ClientStateStore(tmp_path / "run.h5x", 1, RUN) as other:  # a name that extends it
        other.save(3, _states(9, clients=(1,)))
    result.write_bytes(b"results")
    keep = {p.name for p in tmp_path.iterdir()} - {f"run.h5.rank{r}.round3.state"
                                                   for r in (1, 2, 7)}
    assert [p.name for p in cs.all_files(result)] == [
        "run.h5.rank1.round3.state", "run.h5.rank2.round3.state", "run.h5.rank7.round3.state"]
    assert len(cs.remove_all(result)) == 3
    assert {p.name for p in tmp_path.iterdir()} == keep
    assert cs.all_files(tmp_path / "missing" / "run.h5") == []


def test_load_states_without_a_store_names_the_file(tmp_path):
    """The resume check of a worker reads without taking the rank's writer lock."""
    result = tmp_path / "run.h5"
    with ClientStateStore(result, 2, RUN) as store:
        store.save(4, _states(4, clients=(2, 4)))
        _assert_states_equal(cs.load_states(result, rank=2, round=4, run=RUN, clients=[2, 4]),
                             _states(4, clients=(2, 4)))
    with pytest.raises(ClientStateError, match=r"run\.h5\.rank2\.round3\.state: no client-state "
                                               r"file for rank 2 at round 3 \(this rank has "
                                               r"rounds \[4\]\)"):
        cs.load_states(result, rank=2, round=3, run=RUN)
    with pytest.raises(ClientStateError, match=r"rank2\.round4\.state: holds other clients "
                                               r"than this rank hosts \(missing \[6\]"):
        cs.load_states(result, rank=2, round=4, run=RUN, clients=[2, 4, 6])
