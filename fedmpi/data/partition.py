"""Split a training set over federated clients: IID, Dirichlet (LDA) or label shards.

Every method returns one sorted int64 index array per client; together they cover every
sample exactly once, and the result depends only on the labels, the arguments and `seed`.

Client sizes: iid and lda give every client n // k samples or one more, unless
`size_sigma` > 0 (quantity skew, as in FedLab's "unbalanced" partitions): then client
sizes are proportional to lognormal(0, size_sigma) draws, so that rules that depend on
the local sample count (FedAvg's weights, `compression.client_rate` rule `samples`) see
clients of different sizes. Shards fix sizes by the shard count and take no skew.
"""

from __future__ import annotations

import math

import numpy as np

from fedmpi.errors import ConfigError

METHODS = ("iid", "lda", "shards")
MAX_SIZE_SIGMA = 10.0
# why skew is refused with shards (config validation and `partition` both say it)
SKEW_WITH_SHARDS = ("0 with method shards (shard counts fix the sizes); skew needs "
                    "method iid | lda")


def partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    method: str,
    seed: int,
    alpha: float = 100.0,
    shards_per_client: int = 2,
    min_samples: int = 1,
    size_sigma: float = 0.0,
) -> list[np.ndarray]:
    labels = np.asarray(labels)
    if method not in METHODS:
        raise ConfigError("data.partition.method", method, ", ".join(METHODS))
    if not (isinstance(num_clients, (int, np.integer)) and num_clients >= 1):
        raise ConfigError("clients.num_clients", num_clients, "an integer >= 1")
    if min_samples < 1:
        raise ConfigError("data.partition.min_samples", min_samples, "an integer >= 1")
    if not (math.isfinite(size_sigma) and 0.0 <= size_sigma <= MAX_SIZE_SIGMA):
        raise ConfigError("data.partition.size_sigma", size_sigma,
                          f"a number in [0, {MAX_SIZE_SIGMA:g}] (0: equal client sizes)")
    if size_sigma > 0 and method == "shards":
        raise ConfigError("data.partition.size_sigma", size_sigma, SKEW_WITH_SHARDS)
    rng = np.random.default_rng(seed)
    if method == "shards":
        if shards_per_client < 1:
            raise ConfigError(
                "data.partition.shards_per_client", shards_per_client, "an integer >= 1"
            )
        parts = _shards(labels, num_clients, shards_per_client, rng)
    else:
        if size_sigma > 0:
            _check_enough_samples(len(labels), num_clients)
            sizes = skewed_sizes(len(labels), num_clients, size_sigma, rng)
        else:
            _check_equal_sizes(len(labels), num_clients, min_samples)
            sizes = np.array([len(a) for a in np.array_split(np.arange(len(labels)),
                                                             num_clients)], dtype=np.int64)
        if method == "iid":
            parts = np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1])
        else:
            if not (math.isfinite(alpha) and alpha > 0):
                raise ConfigError("data.partition.alpha", alpha, "a finite number > 0")
            parts = _lda(labels, sizes, alpha, rng)
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise ConfigError(
            "data.partition.min_samples",
            min_samples,
            f"at most {smallest} (the smallest client's share with this method)",
        )
    return [np.sort(p).astype(np.int64) for p in parts]


def class_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Clients x classes sample counts (stored in the results to show the skew)."""
    labels = np.asarray(labels)
    return np.stack(
        [np.bincount(labels[p], minlength=num_classes) for p in parts]
    ).astype(np.int64)


def skewed_sizes(n: int, k: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """k client sizes summing to n, proportional to lognormal(0, sigma) draws (largest
    remainders get the leftover samples), every client at least 1."""
    w = rng.lognormal(0.0, sigma, k)
    share = (n - k) * w / w.sum()  # 1 each first, the rest by weight
    sizes = 1 + np.floor(share).astype(np.int64)
    left = n - int(sizes.sum())
    sizes[np.argsort(-(share - np.floor(share)), kind="stable")[:left]] += 1
    return sizes


def _check_enough_samples(n: int, num_clients: int) -> None:
    """More clients than samples is the client count's fault, whatever min_samples says."""
    if num_clients > n:
        raise ConfigError(
            "clients.num_clients",
            num_clients,
            f"at most {n} (the number of training samples; each client needs one)",
        )


def _check_equal_sizes(n: int, num_clients: int, min_samples: int) -> None:
    # iid and lda give every client n // num_clients or one more sample.
    _check_enough_samples(n, num_clients)
    if n // num_clients < min_samples:
        raise ConfigError(
            "data.partition.min_samples",
            min_samples,
            f"at most {n // num_clients} ({n} samples over {num_clients} clients)",
        )


def _lda(labels: np.ndarray, sizes: np.ndarray, alpha: float, rng: np.random.Generator) -> list:
    """Latent Dirichlet allocation as in the paper's Flower code.

    Each client draws class proportions p_k ~ Dir(alpha * 1) and receives an equal share of
    samples drawn from p_k. Classes run out, so, like Flower, we fill clients a little at a
    time in turns and renormalize p_k over the classes still available; unlike Flower we
    draw a chunk per turn rather than one sample, which is the same idea at numpy speed.
    """
    classes, y = np.unique(labels, return_inverse=True)
    k = len(sizes)
    avail = np.bincount(y, minlength=len(classes)).astype(np.int64)
    props = np.stack([_dirichlet(rng, alpha, len(classes)) for _ in range(k)])
    need = np.array(sizes, dtype=np.int64)
    counts = np.zeros((k, len(classes)), dtype=np.int64)
    chunk = max(1, int(need.max()) // 20)
    while need.any():
        for c in np.flatnonzero(need):
            p = props[c] * (avail > 0)
            if p.sum() <= 0:  # every class this client likes is gone: take what is left
                p = avail.astype(np.float64)
            draw = rng.multinomial(min(chunk, need[c]), p / p.sum())
            # Capping by availability always leaves >= 1 sample drawn (p > 0 only where
            # avail > 0), so the loop makes progress and ends with every sample placed.
            draw = np.minimum(draw, avail)
            counts[c] += draw
            avail -= draw
            need[c] -= draw.sum()
    pools = [rng.permutation(np.flatnonzero(y == j)) for j in range(len(classes))]
    starts = np.vstack([np.zeros(len(classes), np.int64), np.cumsum(counts, axis=0)])
    return [
        np.concatenate([pools[j][starts[c, j] : starts[c + 1, j]] for j in range(len(classes))])
        for c in range(k)
    ]


def _dirichlet(rng: np.random.Generator, alpha: float, n: int) -> np.ndarray:
    p = rng.dirichlet(np.full(n, alpha))
    if not np.all(np.isfinite(p)) or p.sum() <= 0:
        # Tiny alpha can underflow every gamma draw to 0; the limit is one class.
        p = np.zeros(n)
        p[rng.integers(n)] = 1.0
    return p


def _shards(labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator) -> list:
    """Sort by label, cut into k * per_client shards, deal each client per_client shards."""
    n_shards = k * per_client
    _check_enough_samples(len(labels), k)
    if len(labels) < n_shards:
        raise ConfigError(
            "data.partition.shards_per_client",
            per_client,
            f"at most {len(labels) // k} ({len(labels)} samples over {k} clients)",
        )
    # Shuffle first so that ties within a class are broken by the seed, not by file order.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    shards = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(k, per_client)
    return [np.concatenate([shards[s] for s in row]) for row in deal]
