"""Every strategy, with its default parameters, trains the MLP on non-IID digits to a sane
accuracy in 10 rounds of in-process federated learning (no MPI: the server and the clients
are loops here; tests/mpi run the real protocol)."""

import numpy as np
import pytest
import torch

from fedmpi import models
from fedmpi.data.digits import load
from fedmpi.data.partition import partition
from fedmpi.strategies import REGISTRY, RunInfo, build_strategy
from fedmpi.train import evaluate, train_local

CLIENTS, PER_ROUND, ROUNDS = 10, 5, 10


@pytest.fixture(scope="module")
def digits():
    train, test = load()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: more threads only contend (2 shared cores)
    yield train, test, partition(train.y, CLIENTS, method="lda", alpha=0.5, seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fedavg_loss(digits):
    return {t: _federate("fedavg", digits, t)[1] for t in ("weights", "update")}


def _federate(key, digits, target):
    train, test, parts = digits
    torch.manual_seed(0)
    model = models.build("mlp", input_shape=(1, 8, 8), num_classes=10)
    strategy = build_strategy(key)
    strategy.setup(RunInfo(seed=0, num_clients=CLIENTS, per_round=PER_ROUND,
                           samples=np.array([len(p) for p in parts]), target=target))
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for r in range(ROUNDS):
        strategy.begin(r, glob)
        for client, settings in strategy.select(r):
            model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in glob.items()})
            idx = parts[client]
            train_local(model, torch.from_numpy(train.x[idx]), torch.from_numpy(train.y[idx]),
                        epochs=2, batch_size=20, lr=0.05, momentum=0.9, weight_decay=0.0,
                        generator=torch.Generator().manual_seed(100 * r + client),
                        **strategy.local_options(settings))
            w = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
            sent = w if target == "weights" else {k: w[k] - glob[k] for k in w}
            strategy.fold(client, sent, len(idx))
        glob = strategy.finish()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in glob.items()})
    accuracy, loss = evaluate(model, torch.from_numpy(test.x), torch.from_numpy(test.y), 1000)
    return accuracy, loss


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_reaches_a_sane_accuracy_on_digits(key, digits, fedavg_loss):
    target = "weights" if key in ("fedavg", "fedprox") else "update"
    accuracy, loss = _federate(key, digits, target)
    assert accuracy >= 0.85, (key, accuracy)  # 10 classes: chance is 0.10
    if key != "fedavg":  # and the strategy really changed the training
        assert loss != fedavg_loss[target]
