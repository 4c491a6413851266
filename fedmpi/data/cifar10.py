"""CIFAR-10 from the shared JPEG image-folder archive (or its extracted tree), or from
torchvision's official `cifar-10-batches-py` layout.

Image-folder sources are decoded once and cached as uint8 arrays outside the repository
(see `cache.py`), one file per split. When a run asks for a subset and no full cache
exists yet, only the subset's images are decoded and cached under their own name: a CI
test then costs one pass over the archive (seconds) instead of a full decode.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
from pathlib import Path

import numpy as np

from fedmpi.data import cache
from fedmpi.data.dataset import Dataset, stratified_indices, subset_seed
from fedmpi.data.imagefolder import read_splits
from fedmpi.data.registry import register, register_prepare
from fedmpi.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PATH = "FEDMPI_CIFAR10"
# ../shared/data next to the repository root (fedmpi/data/cifar10.py is 3 levels down).
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.tar.xz"
TORCHVISION_DIR = "cifar-10-batches-py"
SPLITS = ("train", "test")
# Per-channel statistics of the CIFAR-10 training set (RGB, pixels scaled to [0, 1]).
MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
# Bump when the cached arrays change meaning, so stale caches are never read.
CACHE_FORMAT = 1
INPUT_SHAPE = (3, 32, 32)  # what `fedmpi.data.describe` reports without loading
NUM_CLASSES = 10


def resolve_path(path: str | None) -> Path:
    """Explicit path, else $FEDMPI_CIFAR10, else ../shared/data next to the repository."""
    if path:
        candidates = [("data.path", Path(os.path.expandvars(path)).expanduser())]
    elif os.environ.get(ENV_PATH):
        candidates = [(f"${ENV_PATH}", Path(os.environ[ENV_PATH]).expanduser())]
    else:
        candidates = [("default", DEFAULT_PATH.resolve())]
    for _, p in candidates:
        if p.exists():
            return p
    looked = "; ".join(f"{how}: {p}" for how, p in candidates)
    raise ConfigError(
        "data.path",
        path,
        f"a CIFAR-10 .tar.xz archive, an extracted train/ test/ tree or a directory holding "
        f"{TORCHVISION_DIR}/ (looked at {looked}; set data.path or ${ENV_PATH})",
    )


@register_prepare
def prepare(path: str | None = None) -> None:
    source = resolve_path(path)
    if not _is_torchvision(source):
        _cached_splits(source, {"train": None, "test": None}, seed=0)


@register
def load(
    path: str | None = None,
    *,
    seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> tuple[Dataset, Dataset]:
    source = resolve_path(path)
    wanted = {"train": train_subset, "test": test_subset}
    if _is_torchvision(source):
        raw = _torchvision_splits(source, wanted, seed)
    else:
        raw = _cached_splits(source, wanted, seed)
    for split in SPLITS:
        if tuple(raw[split][0].shape[1:]) != INPUT_SHAPE:
            raise ConfigError("data.path", str(source), f"CIFAR-10 images ({INPUT_SHAPE}); the "
                              f"{split} split holds {tuple(raw[split][0].shape[1:])}")
    return tuple(Dataset(_normalize(x), y, NUM_CLASSES, "cifar10")
                 for x, y in (raw[s] for s in SPLITS))


load.takes_subsets = True  # fedmpi.data.load passes the subsets instead of cutting after


def _normalize(x: np.ndarray) -> np.ndarray:
    # In place on the float copy: a full train split is 600 MB as float32, so avoid temporaries.
    out = x.astype(np.float32)
    out *= 1.0 / 255.0
    out -= MEAN[:, None, None]
    out /= STD[:, None, None]
    return out


def _subset_indices(labels: np.ndarray, n: int | None, seed: int, split: str) -> np.ndarray | None:
    if n is None or n == len(labels):
        return None
    return stratified_indices(labels, n, seed=subset_seed(split, seed),
                              field=f"data.{split}_subset")


def _is_torchvision(source: Path) -> bool:
    return source.is_dir() and (source / TORCHVISION_DIR).is_dir()


def _torchvision_cifar10():
    from torchvision.datasets import CIFAR10  # imported late: torchvision is slow to import

    return CIFAR10


def _torchvision_splits(source: Path, wanted: dict, seed: int) -> dict:
    # The official pickled batches load in about a second: no need for our cache.
    out = {}
    for split in SPLITS:
        ds = _torchvision_cifar10()(str(source), train=split == "train", download=False)
        x = ds.data.transpose(0, 3, 1, 2)
        y = np.asarray(ds.targets, dtype=np.int64)
        idx = _subset_indices(y, wanted[split], seed, split)
        out[split] = (x, y) if idx is None else (x[idx], y[idx])
    return out


def _fingerprint(source: Path) -> str:
    """Changes whenever the archive (size, mtime) or the tree's directories change."""
    items = [source.resolve()]
    if source.is_dir():
        dirs = [p for s in SPLITS for p in [source / s, *(source / s).glob("*")]]
        items += sorted(p for p in dirs if p.exists())
    parts = [f"v{CACHE_FORMAT}"] + [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in items]
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _cached_splits(source: Path, wanted: dict, seed: int) -> dict:
    """{split: (uint8 x, int64 y)} from the cache, decoding whatever is missing."""
    base = cache.cache_dir() / f"cifar10-{_fingerprint(source)}"
    full = {s: Path(f"{base}-{s}.npz") for s in SPLITS}
    out = _from_cache(full, wanted, seed)
    if len(out) == len(SPLITS):
        return out
    with cache.locked(base):
        out = _from_cache(full, wanted, seed)  # another rank may have built it meanwhile
        missing = tuple(s for s in SPLITS if s not in out)
        if not missing:
            return out
        t0 = time.perf_counter()
        try:
            classes, encoded = read_splits(source, missing)
        except (ValueError, tarfile.TarError) as e:
            allowed = f"a CIFAR-10 image-folder archive or tree ({e})"
            raise ConfigError("data.path", str(source), allowed) from e
        t_read = time.perf_counter() - t0
        for split in missing:
            enc = encoded[split]
            idx = _subset_indices(enc.labels, wanted[split], seed, split)
            t1 = time.perf_counter()
            x = enc.decode(idx)
            y = enc.labels if idx is None else enc.labels[idx]
            target = full[split] if idx is None else _subset_path(base, split, len(y), seed)
            cache.write(target, x=x, y=y, classes=np.asarray(classes))
            log.info(
                "cifar10: read %s in %.1fs, decoded %d %s images in %.1fs -> %s",
                source, t_read, len(y), split, time.perf_counter() - t1, target,
            )
            out[split] = (x, y)
    return out


def _subset_path(base: Path, split: str, n: int, seed: int) -> Path:
    return Path(f"{base}-{split}-n{n}-seed{subset_seed(split, seed)}.npz")


def _from_cache(full: dict, wanted: dict, seed: int) -> dict:
    """The splits the cache can serve: a full split (then cut) or that exact subset."""
    out = {}
    for split, path in full.items():
        arrays = cache.read(path)
        if arrays is not None:
            x, y = arrays["x"], arrays["y"]
            idx = _subset_indices(y, wanted[split], seed, split)
            out[split] = (x, y) if idx is None else (x[idx], y[idx])
        elif wanted[split] is not None:
            base = str(path)[: -len(f"-{split}.npz")]
            arrays = cache.read(_subset_path(Path(base), split, wanted[split], seed))
            if arrays is not None:
                out[split] = (arrays["x"], arrays["y"])
    return out
