"""Datasets and their federated partitioning.

    train, test = load("digits", train_subset=500, seed=1)
    parts = partition(train.y, 10, method="lda", alpha=0.5, seed=1)

Dataset modules register themselves by file name (`digits.py` is "digits"); importing them
here fills the registry.
"""

from __future__ import annotations

import sys

from fedmpi.data import cifar10, digits  # noqa: F401  (registers the datasets)
from fedmpi.data.dataset import Dataset, stratified_indices, subset_seed
from fedmpi.data.partition import METHODS, class_histogram, partition
from fedmpi.data.registry import loader, preparer

__all__ = [
    "Dataset",
    "METHODS",
    "available",
    "class_histogram",
    "describe",
    "load",
    "partition",
    "prepare",
    "stratified_indices",
]


def available() -> list[str]:
    from fedmpi.data.registry import _LOADERS

    return sorted(_LOADERS)


def describe(name: str) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of a dataset, without loading it.

    Why: `fedmpi run --resume` checks that the stored config still builds the model its
    checkpoint holds before it touches the file, and loading CIFAR-10 for that is slow.
    """
    module = sys.modules[loader(name).__module__]
    return tuple(module.INPUT_SHAPE), int(module.NUM_CLASSES)


def prepare(name: str, *, path: str | None = None) -> None:
    """Build the dataset's on-disk cache; rank 0 calls it before the other ranks load."""
    fn = preparer(name)
    if fn is not None:
        fn(path)


def load(
    name: str,
    *,
    path: str | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, Dataset]:
    """(train, test), each optionally cut to a class-balanced subset: the training one
    chosen by `seed`, the test one the same for every seed (`subset_seed`)."""
    fn = loader(name)
    subsets = {"train_subset": train_subset, "test_subset": test_subset}
    # Loaders that can skip decoding images outside the subsets (cifar10) take them.
    if getattr(fn, "takes_subsets", False):
        return fn(path, seed=seed, **subsets)
    train, test = fn(path)
    return (_cut(train, train_subset, subset_seed("train", seed), "data.train_subset"),
            _cut(test, test_subset, subset_seed("test", seed), "data.test_subset"))


def _cut(ds: Dataset, n: int | None, seed: int, field: str) -> Dataset:
    if n is None or n == len(ds):
        return ds
    return ds.subset(stratified_indices(ds.y, n, seed=seed, field=field))
