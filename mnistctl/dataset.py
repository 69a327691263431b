"""The dataset in memory: the verified images and labels (``Dataset``), loading them for an
experiment (its subset and validation hold-out), and the order of the training batches, a pure
function of the seed and the step. Where the files come from is :mod:`mnistctl.data`'s."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnistctl.data import cache_root, ensure_dataset, get_spec, parse_idx, read_maybe_gzip, verify_raw
from mnistctl.files import version, write_atomic

if TYPE_CHECKING:
    from mnistctl.config import Experiment

# -- in memory ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A verified dataset in memory: uint8 images [N, 28, 28] and uint8 labels [N]."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    checksums: dict[str, str]
    classes: tuple[str, ...]
    validation_images: np.ndarray | None = None
    validation_labels: np.ndarray | None = None

    def subset(self, train_size: int | None, test_size: int | None, validation: int | None = None) -> Dataset:
        """The first ``train_size`` training and ``test_size`` test images; of the training
        images, the last ``validation`` are held out for model selection."""
        train_x, train_y = self.train_images[:train_size], self.train_labels[:train_size]
        val_x = val_y = None
        if validation:
            train_x, val_x = train_x[:-validation], train_x[-validation:]
            train_y, val_y = train_y[:-validation], train_y[-validation:]
        return Dataset(
            self.name,
            train_x,
            train_y,
            self.test_images[:test_size],
            self.test_labels[:test_size],
            self.checksums,
            self.classes,
            val_x,
            val_y,
        )


def load_dataset(
    name: str,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Dataset:
    """Load a dataset, fetching and caching it first if needed, and verify it.

    A process that loads the same files again (a sweep's worker, trial after trial) gets the
    arrays it verified before, as long as the files are unchanged since (their versions).
    """
    spec = get_spec(name)
    cache = ensure_dataset(name, data_dir, cache_dir, log, verify_cache=False)
    sources = {}
    for expected in spec.files.values():
        unpacked = cache / expected.name  # the same bytes uncompressed: loads skip gunzip (0.3 s)
        sources[expected.name] = unpacked if unpacked.is_file() else cache / (expected.name + ".gz")
    key = (name, tuple((str(p), version(p)) for p in sources.values()))
    if key in _LOADED:
        return _LOADED[key]
    dataset = _read_dataset(name, cache, sources, log, data_dir, cache_dir)
    if all(v is not None for _, v in key[1]):
        while len(_LOADED) >= KEEP_LOADED:
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = dataset
    return dataset


KEEP_LOADED = 2  # datasets a process keeps verified in memory (MNIST and Fashion-MNIST: 110 MB each)
_LOADED: dict[tuple, Dataset] = {}


def _read_dataset(
    name: str,
    cache: Path,
    sources: dict[str, Path],
    log: Callable[[str], None],
    data_dir: Path | None,
    cache_dir: Path | None,
) -> Dataset:
    spec = get_spec(name)
    arrays = {}
    for role, expected in spec.files.items():
        path = cache / (expected.name + ".gz")
        unpacked = cache / expected.name
        source = sources[expected.name]
        try:
            raw = read_maybe_gzip(source)
            verify_raw(raw, expected)
        except (ValueError, OSError) as err:
            # The cache changed under us (another process, a disk error): refetch once.
            log(f"cached {source.name} is unusable ({err}); fetching again")
            path.unlink(missing_ok=True)
            unpacked.unlink(missing_ok=True)
            return load_dataset(name, data_dir, cache_dir, log)
        if not unpacked.is_file():
            with contextlib.suppress(OSError):  # a read-only or full cache: gunzip every time
                write_atomic(unpacked, raw)
        arrays[role] = parse_idx(raw, expected.name)
        arrays[role].setflags(write=False)  # kept for the process's next load: never changed in place
    return Dataset(
        name=name,
        **arrays,
        checksums={f.name: f.sha256 for f in spec.files.values()},
        classes=spec.classes,
    )


def load_experiment_data(
    exp: Experiment, *, data_dir: Path | None = None, log: Callable[[str], None] = lambda _: None
) -> Dataset:
    """The images an experiment trains, selects and tests on: its dataset, cut to its
    ``data.train_size`` and ``data.test_size``, with its ``data.validation`` hold-out."""
    data = load_dataset(exp.data.dataset, data_dir=data_dir, log=log)
    return data.subset(exp.data.train_size, exp.data.test_size, exp.data.validation)


def dataset_info(name: str, cache_dir: Path | None = None) -> dict:
    """Where the cached dataset is, and each file's size, count and verification status."""
    spec = get_spec(name)
    cache = cache_dir or cache_root() / name
    files = []
    for role, expected in spec.files.items():
        path = cache / (expected.name + ".gz")
        entry = {"role": role, "file": str(path), "expected_count": expected.count, "sha256": expected.sha256}
        if not path.is_file():
            entry.update(present=False, status="missing")
        else:
            entry.update(present=True, bytes=path.stat().st_size)
            try:
                raw = read_maybe_gzip(path)
                verify_raw(raw, expected)
                entry.update(count=int(parse_idx(raw, expected.name).shape[0]), status="verified")
            except (ValueError, OSError) as err:
                entry.update(status=f"corrupt: {err}")
        files.append(entry)
    return {"dataset": name, "title": spec.title, "cache": str(cache), "files": files}


# -- batches ------------------------------------------------------------------------------


class BatchOrder:
    """The order of training images: a pure function of (seed, step).

    Image ``k`` of the endless stream is ``perm(k // n)[k % n]``, with one seeded permutation
    per epoch, so step ``s`` always sees the same batch whether or not the run was resumed.
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        first, offset = divmod(start, self.n)
        if offset + self.batch_size <= self.n:  # the common case: one slice of one epoch
            return self._permutation(first)[offset : offset + self.batch_size]
        stream = np.arange(start, start + self.batch_size)
        return np.concatenate(
            [
                self._permutation(e)[stream[stream // self.n == e] % self.n]
                for e in np.unique(stream // self.n)
            ]
        )

    def epoch(self, step: int) -> float:
        """Epochs completed after ``step`` steps."""
        return step * self.batch_size / self.n
