"""scikit-learn's 8x8 handwritten digits: the embedded default (no download, 1,797 images)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fedmpi.data.dataset import Dataset, stratified_indices
from fedmpi.data.registry import register

# The train/test split is fixed (not the run seed) so accuracies of runs with
# different seeds are measured on the same test images and stay comparable.
SPLIT_SEED = 0
TEST_FRACTION = 0.2
INPUT_SHAPE = (1, 8, 8)  # what `fedmpi.data.describe` reports without loading
NUM_CLASSES = 10


def _raw() -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N x 64, values 0..16) and labels.

    Importing sklearn costs about two seconds on every MPI rank, so read the CSV that
    `load_digits` reads (same file, same format) and fall back to it if that moves.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/digits.csv.gz"
    if csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1], table[:, -1]
    from sklearn.datasets import load_digits

    raw = load_digits()
    return raw.data, raw.target


@register
def load(path: str | None = None) -> tuple[Dataset, Dataset]:
    pixels, target = _raw()
    x = (pixels.astype(np.float32) / 16.0).reshape(-1, *INPUT_SHAPE)
    y = target.astype(np.int64)
    n_test = int(round(len(y) * TEST_FRACTION))
    test_idx = stratified_indices(y, n_test, seed=SPLIT_SEED)
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    # Standardize with statistics of the training split only (one scalar: grey images).
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    return (
        Dataset(x[train_idx], y[train_idx], NUM_CLASSES, "digits"),
        Dataset(x[test_idx], y[test_idx], NUM_CLASSES, "digits"),
    )
