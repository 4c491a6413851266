"""Device binding per rank, with the launchers' and Slurm's GPU visibility simulated."""

import pytest
import torch

from fedmpi import config as cfgmod
from fedmpi.devices import Node, announce, env_local_rank, place, restricted, select
from fedmpi.errors import ConfigError
from fedmpi.experiment import select_device


def server_node(local_rank, size):
    return Node(local_rank, size, True, "test")


def other_node(local_rank, size):
    return Node(local_rank, size, False, "test")


def test_local_rank_from_launchers_most_specific_first():
    assert env_local_rank({}) is None
    assert env_local_rank({"SLURM_LOCALID": "3"}) == (3, None, "SLURM_LOCALID")
    env = {"SLURM_LOCALID": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert env_local_rank(env) == (2, 4, "OMPI_COMM_WORLD_LOCAL_RANK")
    env["MPI_LOCALRANKID"] = "1"  # hydra (MPICH, Intel MPI) wins
    assert env_local_rank(env) == (1, None, "MPI_LOCALRANKID")
    assert env_local_rank({"MPI_LOCALRANKID": "", "SLURM_LOCALID": "5"})[0] == 5


def test_every_task_sees_all_gpus_one_per_worker():
    """Node 0: server + 4 workers on 4 GPUs; node 1: 4 workers. Each worker owns a GPU."""
    got = [place("auto", rank=r, node=server_node(r, 5), visible=4) for r in range(5)]
    assert [p.device for p in got] == ["cuda:3", "cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [p.sharing for p in got[1:]] == [1, 1, 1, 1]
    assert "server" in got[0].note
    other = [place("cuda", rank=5 + r, node=other_node(r, 4), visible=4) for r in range(4)]
    assert [p.device for p in other] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]


def test_slurm_gives_each_task_one_gpu():
    """--gpus-per-task=1: one visible GPU per task, named in CUDA_VISIBLE_DEVICES."""
    for local in range(5):
        env = {"CUDA_VISIBLE_DEVICES": str(local % 4), "SLURM_LOCALID": str(local)}
        assert restricted(env, 1)
        p = place("auto", rank=local, node=server_node(local, 5), visible=1,
                  one_gpu_per_rank=restricted(env, 1))
        assert p.device == "cuda:0" and "launcher gave this rank one GPU" in p.note
    assert not restricted({"CUDA_VISIBLE_DEVICES": "0,1"}, 2)
    assert not restricted({}, 1)  # one GPU in the machine, nobody restricted anything


def test_more_workers_than_gpus_is_an_error_unless_sharing_is_asked():
    with pytest.raises(ConfigError) as err:
        place("auto", rank=1, node=server_node(1, 3), visible=1)
    assert err.value.field == "run.ranks_per_gpu" and "an integer >= 2" in str(err.value)
    shared = [place("auto", rank=r, node=server_node(r, 3), visible=1, ranks_per_gpu=2)
              for r in range(3)]
    assert [p.device for p in shared] == ["cuda:0"] * 3
    assert [p.sharing for p in shared] == [2, 2, 2]
    with pytest.raises(ConfigError) as err:  # 5 workers, 4 GPUs, at most 1 per GPU
        place("auto", rank=1, node=other_node(0, 5), visible=4, ranks_per_gpu=1)
    assert err.value.field == "run.ranks_per_gpu" and err.value.value == 1


def test_sharing_packs_consecutive_workers():
    """8 workers on a node with 4 GPUs, 2 per GPU: workers (0,1) on GPU 0, (2,3) on 1, ..."""
    got = [place("auto", rank=9 + r, node=other_node(r, 8), visible=4, ranks_per_gpu=2).device
           for r in range(8)]
    assert got == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2", "cuda:2", "cuda:3", "cuda:3"]
    server = place("auto", rank=0, node=server_node(0, 7), visible=4, ranks_per_gpu=2)
    assert server.device == "cuda:3" and server.sharing == 0  # workers 0..5 use GPUs 0..2


def test_cpu_choices():
    assert place("cpu", rank=1, node=server_node(1, 3), visible=4).device == "cpu"
    assert place("auto", rank=1, node=server_node(1, 9), visible=0).device == "cpu"
    with pytest.raises(ConfigError) as err:
        place("cuda", rank=2, node=server_node(2, 3), visible=0)
    assert err.value.field == "run.device" and "rank 2" in str(err.value)


def test_select_reads_torch_and_the_environment(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    run = cfgmod.from_dict({"run": {"device": "auto", "ranks_per_gpu": 2}}).run
    p = select(run, rank=2, node=server_node(2, 5), env={})
    assert p.device == "cuda:0" and p.visible == 2  # workers 0,1 -> GPU 0; 2,3 -> GPU 1
    p = select(run, rank=3, node=server_node(3, 5), env={})
    assert p.device == "cuda:1"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    p = select(run, rank=3, node=server_node(3, 5), env={"CUDA_VISIBLE_DEVICES": "GPU-7f3a"})
    assert p.device == "cuda:0" and "one GPU" in p.note


def test_fp16_autocast_on_the_cpu_is_a_config_error():
    cfg = cfgmod.from_dict({"run": {"device": "cpu"}, "train": {"amp": "fp16"}})
    with pytest.raises(ConfigError) as err:
        select_device(cfg, 1, server_node(1, 2))
    assert err.value.field == "train.amp"
    cfg = cfgmod.from_dict({"run": {"device": "cpu"}, "train": {"amp": "bf16"}})
    assert select_device(cfg, 1, server_node(1, 2))[0].type == "cpu"


@pytest.mark.parametrize("key,value,allowed", [
    ("train.amp", "fp8", "off | bf16 | fp16"),
    ("train.compile", True, "a string"),
    ("train.compile", "fast", "off | default | reduce-overhead | max-autotune"),
    ("run.ranks_per_gpu", 0, "null or an integer in 1..1024"),
    ("run.ranks_per_gpu", 100_000, "null or an integer in 1..1024"),  # bounded like threads
])
def test_new_options_are_validated(key, value, allowed):
    raw = {}
    cfgmod.set_path(raw, key, value)
    with pytest.raises(ConfigError) as err:
        cfgmod.from_dict(raw)
    assert err.value.field == key and allowed in str(err.value)


def test_new_options_default_off_and_are_recorded():
    cfg = cfgmod.from_dict({})
    assert (cfg.train.amp, cfg.train.compile, cfg.run.ranks_per_gpu) == ("off", "off", None)
    assert '"amp": "off"' in cfg.to_json() and '"ranks_per_gpu": null' in cfg.to_json()


def test_announce_only_when_a_gpu_is_used(capsys):
    announce(["cpu", "cpu"])
    assert capsys.readouterr().err == ""
    announce(["cuda:0 (H100) [x]", "cuda:0 (H100) [y]"])
    assert "rank 1 -> cuda:0 (H100) [y]" in capsys.readouterr().err


def test_cuda_aware_mpi_query(monkeypatch):
    from mpi4py import MPI  # noqa: F401  (loads the MPI library the query inspects)

    from fedmpi import cuda_mpi

    monkeypatch.delenv(cuda_mpi.ENV, raising=False)
    aware, how = cuda_mpi.query()
    assert aware in (True, False, None) and how
    if "MPICH" in MPI.Get_library_version() or "Open MPI" in MPI.Get_library_version():
        assert how.startswith("MPIX_")  # both export a query; the test venv's are CPU builds
    monkeypatch.setenv(cuda_mpi.ENV, "1")
    assert cuda_mpi.query() == (True, "FEDMPI_CUDA_AWARE=1")
    assert cuda_mpi.describe().startswith("MPI CUDA-aware (FEDMPI_CUDA_AWARE=1)")


def test_in_process_rule_agrees_with_gpu_bind_sh():
    """Where each worker owns a GPU, rank L gets GPU (L - 1) mod G, as jobs/gpu-bind.sh does."""
    for g in (1, 2, 4, 8):
        for size in range(2, g + 2):  # server + up to G workers on the node
            for local in range(size):
                p = place("auto", rank=local, node=server_node(local, size), visible=g)
                assert p.device == f"cuda:{(local - 1) % g}", (g, size, local)
