"""The in-memory dataset every rank trains and evaluates on, and split helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmpi.errors import ConfigError


@dataclass
class Dataset:
    """Normalized float32 images (N x C x H x W) with int64 labels."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.x[indices], self.y[indices], self.num_classes, self.name)


TEST_SUBSET_SEED = 0


def subset_seed(split: str, seed: int) -> int:
    """The seed that picks a split's subset: the run's for the training split, a fixed
    one for the test split, so that runs of different seeds are evaluated on the same
    test images (their accuracies are then comparable, and a mean over seeds means
    something)."""
    return seed if split == "train" else TEST_SUBSET_SEED


def stratified_indices(
    labels: np.ndarray, n: int, *, seed: int, field: str = "data.subset"
) -> np.ndarray:
    """`n` sorted indices, as balanced over classes as the data allows, chosen by `seed`.

    Balanced rather than uniformly random so that a small subset still contains every
    class and accuracies of small CI runs are not dominated by sampling luck.
    """
    labels = np.asarray(labels)
    if not 1 <= n <= len(labels):
        raise ConfigError(field, n, f"an integer in 1..{len(labels)} (the split's size)")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    sizes = np.array([len(p) for p in pools])
    # Water level: every class gets min(size, level), with level as high as n allows; the
    # few samples still missing go one each to random classes that have more to give.
    level = n // len(classes)  # always fits: no class gets more than an equal share
    while level < sizes.max() and np.minimum(sizes, level + 1).sum() <= n:
        level += 1
    quota = np.minimum(sizes, level)
    spare = np.flatnonzero(sizes > level)
    quota[rng.choice(spare, n - quota.sum(), replace=False)] += 1
    return np.sort(np.concatenate([p[:q] for p, q in zip(pools, quota)]))
