"""What every rank builds identically from the config: data split, model, pipelines.

Determinism hinges on this module: client sampling, client placement and each
client's training randomness are pure functions of (seed, round, client), never
of the number of ranks or of message arrival order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from fedmpi import data as datasets
from fedmpi import models
from fedmpi.compress import ModelSpec, spec_of
from fedmpi.compressors import Compressor, build_compressor
from fedmpi.compressors.base import numel_of
from fedmpi.compressors.stages import StagePipeline
from fedmpi.config import Config
from fedmpi.devices import Node, Placement, label, select
from fedmpi.errors import ConfigError
from fedmpi.train import device_state, get_state


def worker_of(client: int, num_workers: int) -> int:
    """The static home rank of a virtual client: where it runs when its compressor state
    (error-feedback residuals) lives on its worker, fixed for the whole run."""
    return 1 + client % num_workers


def balance(work: dict[int, float], num_workers: int) -> dict[int, list[int]]:
    """Longest processing time first: rank -> its clients (ascending), for clients with
    `work` (samples × local epochs), each in turn (most work first, ties by id) given to
    the rank with the least work so far (ties: the lowest rank). A pure function of its
    inputs, so the server and the tests agree; the makespan is at most 4/3 of the optimum
    (Graham 1969)."""
    load = [0.0] * num_workers
    out: dict[int, list[int]] = {w: [] for w in range(1, num_workers + 1)}
    for c in sorted(work, key=lambda c: (-work[c], c)):
        i = min(range(num_workers), key=lambda i: (load[i], i))
        load[i] += work[c]
        out[i + 1].append(c)
    return {w: sorted(cs) for w, cs in out.items()}


def sample_clients(seed: int, round: int, num_clients: int, k: int) -> np.ndarray:
    rng = np.random.default_rng([seed, round, 0x5A])
    return np.sort(rng.choice(num_clients, size=k, replace=False))


def client_generator(seed: int, round: int, client: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([seed, round, client]).generate_state(1)[0]))
    return g


def build_links(cfg: Config, device: torch.device | None = None
                ) -> tuple[Compressor, Compressor]:
    """The uplink and downlink compressors. `device`: where the torch codec of the
    stage pipeline decodes (only when both links are stage pipelines: registered
    methods encode and decode numpy arrays on the host)."""
    up = build_compressor(cfg.compression.uplink, field="compression.uplink")
    down = build_compressor(cfg.compression.downlink, field="compression.downlink")
    if device is not None and _stages(up, down):
        up, down = StagePipeline(up.pipeline, device), StagePipeline(down.pipeline, device)
    return up, down


build_pipelines = build_links  # the name before compressors were pluggable


def _stages(*links: Compressor) -> bool:
    return all(isinstance(c, StagePipeline) for c in links)


def build_strategy(cfg: Config, samples: np.ndarray, numel: int = 0):
    """The strategy, set up identically on every rank (settings are known on both ends);
    with `compression.client_rate`, each client's prune rate added to its settings."""
    from fedmpi.compressors import client_rate
    from fedmpi.strategies import RunInfo
    from fedmpi.strategies import build_strategy as build

    strategy = build(cfg.strategy, field="strategy")
    strategy.setup(RunInfo(seed=cfg.seed, num_clients=cfg.clients.num_clients,
                           per_round=cfg.clients_per_round(), samples=samples,
                           target=cfg.compression.target))
    rule = client_rate.parse(cfg.compression.client_rate, num_clients=cfg.clients.num_clients)
    if rule is not None:
        links = None
        if rule.seconds is not None and cfg.link.kind != "none":
            from fedmpi import linkmodel

            links = linkmodel.from_config(cfg.link, cfg.seed, cfg.clients.num_clients)
        strategy.add_settings(*client_rate.settings_source(rule.rates(samples, numel, links)))
    return strategy


def effective_threads(configured: int | None, environ=os.environ) -> int:
    """torch threads per rank: `run.threads` when set, else Slurm's --cpus-per-task, else 1.

    Slurm gives every rank SLURM_CPUS_PER_TASK cores; one thread would leave all but
    one idle, so an unset `run.threads` (null, the default) follows the allocation,
    capped at this machine's core count. `fedmpi run` stores the value it used in the
    resolved config, so a resumed run keeps it.
    """
    if configured is not None:
        return configured
    raw = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or int(raw) < 1:
        from fedmpi.errors import ConfigError

        raise ConfigError("run.threads", None, f"an integer >= 1 (it follows "
                          f"SLURM_CPUS_PER_TASK when unset, and that is {raw!r})")
    return min(int(raw), os.cpu_count() or 1)


def select_device(cfg: Config, rank: int, node: Node) -> tuple[torch.device, Placement]:
    """The rank's device by the rule in devices.py; amp/compile settings the device allows."""
    placement = select(cfg.run, rank=rank, node=node)
    device = torch.device(placement.device)
    if device.type == "cpu" and cfg.train.amp == "fp16":
        raise ConfigError("train.amp", "fp16", f"off or bf16 on rank {rank}, which runs on the "
                          "CPU (float16 autocast needs a GPU)")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels, pinned staging and NCCL-free MPI use this GPU
    return device, placement


@dataclass
class Experiment:
    cfg: Config
    rank: int
    num_workers: int
    device: torch.device
    model: torch.nn.Module
    spec: ModelSpec
    uplink: Compressor
    downlink: Compressor
    train: datasets.Dataset
    test: datasets.Dataset
    parts: list[np.ndarray]
    histogram: np.ndarray
    placement: Placement | None = None
    strategy: object = None  # fedmpi.strategies.Strategy, set up

    @property
    def codec_device(self) -> torch.device | None:
        """Where messages are encoded and decoded (`run.codec`): this rank's device with the
        torch codec of the stage pipeline, or None for the host (numpy/numba codec, and
        every registered method)."""
        return getattr(self.uplink, "device", None) if _stages(self.uplink) else None

    def context(self, round: int, client: int, link: str, state=None, settings=None):
        """A compressor context: what (seed, round, client, link) make pure."""
        from fedmpi.compressors import Context

        return Context(self.cfg.seed, round, client, link,
                       state if state is not None else {}, settings or {})

    def encode(self, comp: Compressor, tensors: dict, ctx):
        """`comp.encode`, giving a registered method host numpy arrays."""
        if not isinstance(comp, StagePipeline):
            tensors = host(tensors)
        return comp.encode(tensors, ctx)

    def model_state(self) -> dict:
        """The model's state for encoding: device tensors with the torch codec (only the
        encoded bytes then leave the GPU), float32 numpy arrays otherwise."""
        return device_state(self.model) if self.codec_device is not None else get_state(self.model)

    @property
    def device_label(self) -> str:
        """This rank's entry in the result file's `devices`."""
        return label(self.placement) if self.placement else str(self.device)

    @property
    def samples(self) -> np.ndarray:
        return np.array([len(p) for p in self.parts], dtype=np.int64)

    @property
    def stateful(self) -> bool:
        """Whether clients keep uplink compressor state (it then lives on their home rank)."""
        return self.uplink.new_state() is not None

    def clients_of(self, rank: int) -> list[int]:
        """The clients rank `rank` may run: every client when clients are stateless (the
        placement of a round decides), else those whose state it keeps."""
        if not self.stateful:
            return list(range(self.cfg.clients.num_clients))
        return [c for c in range(self.cfg.clients.num_clients)
                if worker_of(c, self.num_workers) == rank]

    def place(self, clients) -> dict[int, list[int]]:
        """Rank -> its clients of a round (ascending). Stateless clients: balanced by their
        work (samples × local epochs, `balance`); stateful ones: their home rank (their
        compressor state lives there). Results never depend on it: the server folds in
        client order in deterministic mode."""
        if self.stateful:
            return {w: [c for c in clients if worker_of(c, self.num_workers) == w]
                    for w in range(1, self.num_workers + 1)}
        samples, epochs = self.samples, self.cfg.train.local_epochs
        return balance({int(c): float(samples[c]) * epochs for c in clients}, self.num_workers)

    def initial_state(self) -> dict[str, np.ndarray]:
        return get_state(self.model)


def build(cfg: Config, *, rank: int, world_size: int, node: Node | int | None = None
          ) -> Experiment:
    """`node`: this rank's Node (devices.node_of), or a node-local rank for one node."""
    if cfg.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(effective_threads(cfg.run.threads))
    if not isinstance(node, Node):
        node = Node(rank if node is None else node, world_size, True, "one node assumed")
    device, placement = select_device(cfg, rank, node)
    d = cfg.data
    train, test = datasets.load(d.dataset, path=d.path, train_subset=d.train_subset,
                                test_subset=d.test_subset, seed=cfg.seed)
    p = d.partition
    parts = datasets.partition(train.y, cfg.clients.num_clients, method=p.method, seed=cfg.seed,
                               alpha=p.alpha, shards_per_client=p.shards_per_client,
                               min_samples=p.min_samples, size_sigma=p.size_sigma)
    histogram = datasets.class_histogram(train.y, parts, train.num_classes)
    torch.manual_seed(cfg.seed)  # identical initial model on every rank
    model = models.build(cfg.train.model, input_shape=train.input_shape,
                         num_classes=train.num_classes).to(device)
    spec = spec_of(get_state(model))
    if cfg.train.compile != "off":  # in place: parameters and state_dict names stay the same
        model.compile(mode=cfg.train.compile)
    codec = cfg.run.codec
    on_device = codec == "torch" or (codec == "auto" and device.type == "cuda")
    up, down = build_links(cfg, device if on_device else None)
    samples = np.array([len(p) for p in parts], dtype=np.int64)
    return Experiment(cfg=cfg, rank=rank, num_workers=world_size - 1, device=device,
                      model=model, spec=spec, uplink=up, downlink=down,
                      train=train, test=test, parts=parts, histogram=histogram,
                      placement=placement, strategy=build_strategy(cfg, samples,
                                                             sum(numel_of(spec))))


def host(tensors: dict) -> dict[str, np.ndarray]:
    """numpy arrays of numpy arrays or torch tensors on any device."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in tensors.items()}
