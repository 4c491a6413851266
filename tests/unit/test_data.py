"""Datasets: the embedded digits, subsets, the image-folder/tar/torchvision CIFAR-10 readers
(on a tiny synthetic tree, so they run everywhere) and the cache."""

from __future__ import annotations

import tarfile
import threading

import numpy as np
import pytest
from PIL import Image

import fedmpi.data as data
from fedmpi.data import cifar10, imagefolder
from fedmpi.errors import ConfigError


def test_digits_shapes_dtypes_and_normalization():
    train, test = data.load("digits")
    assert (len(train), len(test)) == (1438, 359)  # fixed 80/20 of 1,797
    assert train.x.shape == (1438, 1, 8, 8) and train.input_shape == (1, 8, 8)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.num_classes == 10 and train.name == "digits"
    assert abs(train.x.mean()) < 1e-5 and abs(train.x.std() - 1) < 1e-5
    assert np.bincount(test.y).min() >= 35  # stratified: every class ~20%


def test_digits_split_is_fixed_and_matches_sklearn():
    a, b = data.load("digits", seed=0), data.load("digits", seed=123)
    assert np.array_equal(a[0].x, b[0].x) and np.array_equal(a[1].y, b[1].y)
    from sklearn.datasets import load_digits

    raw = load_digits()
    ours = np.concatenate([a[0].x, a[1].x]).reshape(len(raw.target), -1).astype(np.float64)
    # Normalization is an increasing affine map, which keeps the lexicographic order of
    # rows: sorting both sides pairs every image with its source.
    ours, ref = ours[np.lexsort(ours.T)], raw.data[np.lexsort(raw.data.T)]
    slope, offset = np.polyfit(ref.ravel(), ours.ravel(), 1)
    assert slope > 0 and np.allclose(ours, slope * ref + offset, atol=1e-4)


def test_subsets_are_stratified_and_seeded():
    train, test = data.load("digits", train_subset=100, test_subset=50, seed=7)
    assert (len(train), len(test)) == (100, 50)
    assert np.bincount(train.y).tolist() == [10] * 10
    again = data.load("digits", train_subset=100, test_subset=50, seed=7)[0]
    other = data.load("digits", train_subset=100, test_subset=50, seed=8)[0]
    assert np.array_equal(train.x, again.x) and not np.array_equal(train.x, other.x)


@pytest.mark.parametrize(
    "name, kwargs, field",
    [
        ("mnist", {}, "data.dataset"),
        ("digits", {"train_subset": 5000}, "data.train_subset"),
        ("digits", {"test_subset": 0}, "data.test_subset"),
        ("cifar10", {"path": "/nonexistent/cifar.tar.xz"}, "data.path"),
    ],
)
def test_bad_names_and_values_name_the_field(name, kwargs, field):
    with pytest.raises(ConfigError) as e:
        data.load(name, **kwargs)
    assert e.value.field == field
    assert name in data.available() or "digits" in str(e.value)


def test_missing_cifar_says_where_it_looked(monkeypatch):
    monkeypatch.setenv("FEDMPI_CIFAR10", "/nowhere/cifar10-jpeg.tar.xz")
    with pytest.raises(ConfigError, match="/nowhere/cifar10-jpeg.tar.xz") as e:
        data.prepare("cifar10")
    assert e.value.field == "data.path"


# --- image-folder readers on a synthetic 3-class tree ------------------------------------

CLASSES = ("cat", "dog", "frog")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """train/<class>/NNNN.png (4 per class) and test/<class> (2 per class); each image has
    one flat colour that encodes (split, class, index) so the order can be checked."""
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tree"
    for split, per_class in (("train", 4), ("test", 2)):
        for c, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                colour = (10 * c + i, 100 + (split == "test"), 200)
                Image.new("RGB", (32, 32), colour).save(root / split / cls / f"{i:04d}.png")
    return root


def _archive(root, tmp_path):
    path = tmp_path / "tree.tar.xz"
    with tarfile.open(path, "w:xz") as tar:
        for split in ("train", "test"):
            tar.add(root / split, arcname=split)
    return path


def _raw_pixels(ds):
    return np.rint(ds.x * cifar10.STD[:, None, None] * 255 + cifar10.MEAN[:, None, None] * 255)


def test_tree_and_archive_load_identically_in_canonical_order(tree, tmp_path):
    train, test = data.load("cifar10", path=str(tree))
    assert train.x.shape == (12, 3, 32, 32) and test.x.shape == (6, 3, 32, 32)
    assert train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # classes sorted, then files
    red = _raw_pixels(train)[:, 0, 0, 0]
    assert red.tolist() == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]
    assert (_raw_pixels(test)[:, 1] == 101).all()
    a_train, a_test = data.load("cifar10", path=str(_archive(tree, tmp_path)))
    assert np.array_equal(a_train.x, train.x) and np.array_equal(a_test.y, test.y)


def test_subset_decodes_only_needed_images_and_cache_is_reused(tree, tmp_path, monkeypatch):
    decoded = []
    real = imagefolder.EncodedSplit.decode

    def counting(self, indices=None):
        decoded.append(len(self.blobs) if indices is None else len(indices))
        return real(self, indices)

    monkeypatch.setattr(imagefolder.EncodedSplit, "decode", counting)
    train, test = data.load("cifar10", path=str(tree), train_subset=6, test_subset=3, seed=1)
    assert decoded == [6, 3] and np.bincount(train.y).tolist() == [2, 2, 2]

    def fail(*a, **k):
        raise AssertionError("cache miss: the source was read again")

    monkeypatch.setattr(cifar10, "read_splits", fail)
    again, _ = data.load("cifar10", path=str(tree), train_subset=6, test_subset=3, seed=1)
    assert np.array_equal(again.x, train.x)
    monkeypatch.setattr(cifar10, "read_splits", imagefolder.read_splits)
    data.prepare("cifar10", path=str(tree))  # full cache; subsets are then cut from it
    monkeypatch.setattr(cifar10, "read_splits", fail)
    cut, _ = data.load("cifar10", path=str(tree), train_subset=6, test_subset=3, seed=1)
    assert np.array_equal(cut.x, train.x)
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 4 and not list((tmp_path / "cache").glob("*.tmp"))


def test_changed_source_invalidates_cache(tree):
    first, _ = data.load("cifar10", path=str(tree))
    Image.new("RGB", (32, 32), (255, 0, 0)).save(tree / "train" / "cat" / "9999.png")
    second, _ = data.load("cifar10", path=str(tree))
    assert len(second) == len(first) + 1


def test_concurrent_loads_agree(tree):
    results, errors = [], []

    def worker():
        try:
            results.append(data.load("cifar10", path=str(tree))[0].x)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(np.array_equal(r, results[0]) for r in results)


def test_not_an_image_tree_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    bogus = tmp_path / "bogus.tar.xz"
    bogus.write_bytes(b"not an archive")
    for path in (tmp_path / "empty", bogus):
        with pytest.raises(ConfigError) as e:
            data.load("cifar10", path=str(path))
        assert e.value.field == "data.path"


def test_torchvision_layout_is_routed_to_torchvision(tmp_path, monkeypatch):
    class FakeCIFAR10:  # stands in for the pickled batches, which we cannot ship
        def __init__(self, root, train, download):
            assert root == str(tmp_path) and download is False
            n = 20 if train else 10
            self.data = np.full((n, 32, 32, 3), 128, np.uint8)
            self.targets = [i % 10 for i in range(n)]

    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setattr(cifar10, "_torchvision_cifar10", lambda: FakeCIFAR10)
    train, test = data.load("cifar10", path=str(tmp_path), test_subset=5)
    assert train.x.shape == (20, 3, 32, 32) and len(test) == 5 and train.x.dtype == np.float32


# --- the real archive --------------------------------------------------------------------


def _real_archive():
    try:
        return cifar10.resolve_path(None)
    except ConfigError as e:
        pytest.skip(f"CIFAR-10 archive not found ({e}); set $FEDMPI_CIFAR10 to run this test")


@pytest.mark.cifar
def test_real_cifar10_subset_and_cache(tmp_path, monkeypatch):
    path = _real_archive()
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path))
    train, test = data.load("cifar10", path=str(path), train_subset=200, test_subset=100, seed=0)
    assert train.x.shape == (200, 3, 32, 32) and test.x.shape == (100, 3, 32, 32)
    assert np.bincount(train.y).tolist() == [20] * 10 and np.bincount(test.y).tolist() == [10] * 10
    # Normalized with CIFAR-10's channel statistics: roughly zero mean, unit spread.
    assert np.abs(train.x.mean(axis=(0, 2, 3))).max() < 0.25
    assert np.abs(train.x.std(axis=(0, 2, 3)) - 1).max() < 0.25
    monkeypatch.setattr(cifar10, "read_splits", lambda *a: pytest.fail("archive read twice"))
    again, _ = data.load("cifar10", path=str(path), train_subset=200, test_subset=100, seed=0)
    assert np.array_equal(again.x, train.x)


def test_describe_matches_what_loading_gives(tree):
    """`describe` (used by --resume before any data is loaded) cannot drift from the loaders."""
    train, _ = data.load("digits")
    assert data.describe("digits") == (train.input_shape, train.num_classes) == ((1, 8, 8), 10)
    train, _ = data.load("cifar10", path=str(tree))
    assert data.describe("cifar10") == (train.input_shape, train.num_classes) == ((3, 32, 32), 10)
    with pytest.raises(ConfigError):
        data.describe("mnist")


def test_cifar10_images_of_another_size_are_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMPI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16), (1, 2, 3)).save(root / split / cls / "0000.png")
    with pytest.raises(ConfigError) as e:
        data.load("cifar10", path=str(root))
    assert e.value.field == "data.path" and "(3, 32, 32)" in e.value.allowed


# --- the test subset does not depend on the run seed ---------------------------------------


def test_test_subset_is_the_same_for_every_seed_and_the_train_subset_is_not():
    """Seeds are compared on the same test images (issue 14): only training data varies."""
    (tr0, te0), (tr1, te1) = (data.load("digits", train_subset=300, test_subset=200, seed=s)
                              for s in (0, 1))
    assert np.array_equal(te0.x, te1.x) and np.array_equal(te0.y, te1.y)
    assert not np.array_equal(tr0.x, tr1.x)


def test_cifar10_test_subset_is_the_same_for_every_seed(tmp_path, monkeypatch):
    """Through the loader that cuts while decoding (and caches subsets by seed)."""
    class FakeCIFAR10:
        def __init__(self, root, train, download):
            n = 40 if train else 30
            rng = np.random.default_rng(1 if train else 2)
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 10 for i in range(n)]

    (tmp_path / "cifar-10-batches-py").mkdir()
    monkeypatch.setattr(cifar10, "_torchvision_cifar10", lambda: FakeCIFAR10)
    runs = [data.load("cifar10", path=str(tmp_path), train_subset=20, test_subset=10, seed=s)
            for s in (0, 1, 2)]
    assert all(np.array_equal(runs[0][1].x, r[1].x) for r in runs[1:])
    assert not all(np.array_equal(runs[0][0].x, r[0].x) for r in runs[1:])
