"""Your own pictures as a dataset: ``mnistctl data import FOLDER --name NAME``.

FOLDER holds one subfolder per class (its name is the class's: ``0``..``9``, or ``cat``,
``dog``); each picture (PNG or JPEG, any size) is prepared as ``predict`` prepares one —
grayscale, inverted when dark on light, cropped, fitted to 20x20 and centred by its centre of
mass in 28x28 — and the pictures are split, class by class, into training and test images.
They are written as the four IDX files MNIST comes in, with ``dataset.json`` beside them (the
classes and each file's digest), in the data directory, where they are verified like MNIST on
every load; ``data.dataset: NAME`` then trains on them, and everything else follows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnistctl.config import NAME_RULE, NUM_CLASSES, is_valid_name
from mnistctl.config.datasets import BUILTIN, IMPORT_RECORD, data_root
from mnistctl.data import DATASET_SPECS, ROLES, encode_idx, write_gz_atomic
from mnistctl.errors import MnistctlError
from mnistctl.files import to_json, write_atomic
from mnistctl.pictures import ImageError, read_image_file

EXTENSIONS = (".png", ".jpg", ".jpeg")
FILE_NAMES = {role: f.name for role, f in DATASET_SPECS["mnist"].files.items()}  # MNIST's own names


class DatasetImportError(MnistctlError):
    """A folder that cannot become a dataset."""


@dataclass
class Imported:
    """What ``data import`` made."""

    name: str
    path: Path
    classes: list[str]
    train: int
    test: int
    per_class: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "file: why", one per picture left out


def import_folder(
    folder: Path,
    name: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    force: bool = False,
    root: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Imported:
    """Prepare, split and write the pictures of ``folder`` as the dataset ``name``.

    Raises:
        DatasetImportError: one line naming the problem and where: not a folder, fewer than two
            classes, more than ten, a class with no usable picture, a name taken.
    """
    target = (root or data_root()) / name
    _check_name(name, target, force)
    classes = _classes(folder)
    images: list[np.ndarray] = []
    labels: list[int] = []
    imported = Imported(name, target, classes, 0, 0)
    for label, cls in enumerate(classes):
        good = 0
        for path in sorted(p for p in (folder / cls).iterdir() if p.suffix.lower() in EXTENSIONS):
            try:
                images.append(np.round(read_image_file(path) * 255).astype(np.uint8))
            except ImageError as err:
                imported.skipped.append(str(err))
                continue
            labels.append(label)
            good += 1
        if good == 0:
            raise DatasetImportError(
                f"{folder / cls}: no usable PNG or JPEG pictures; every class needs some"
            )
        imported.per_class[cls] = good
        log(f"{cls}: {good} pictures")
    train, test = _split(np.array(labels), test_fraction, seed)
    if len(test) == 0:
        raise DatasetImportError(f"--test-fraction {test_fraction}: leaves no test pictures of {len(labels)}")
    x, y = np.stack(images), np.array(labels, dtype=np.uint8)
    arrays = {
        "train_images": x[train],
        "train_labels": y[train],
        "test_images": x[test],
        "test_labels": y[test],
    }
    _write(target, arrays, classes, folder, test_fraction, seed, imported.skipped)
    imported.train, imported.test = len(train), len(test)
    return imported


def _check_name(name: str, target: Path, force: bool) -> None:
    if not is_valid_name(name) or name in BUILTIN:
        taken = f"; {name!r} is mnistctl's own" if name in BUILTIN else ""
        raise DatasetImportError(f"--name: expected {NAME_RULE}{taken}, got {name!r}")
    if target.exists() and not force:
        raise DatasetImportError(f"{target}: a dataset {name!r} is there already; --force replaces it")


def _classes(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise DatasetImportError(f"{folder}: not a folder (expected one subfolder of pictures per class)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = f" ({', '.join(classes)})" if classes else ""
        plural = "" if len(classes) == 1 else "s"
        raise DatasetImportError(
            f"{folder}: {len(classes)} class folder{plural}{found}; a dataset needs at least two: "
            "one subfolder of pictures per class"
        )
    if len(classes) > NUM_CLASSES:
        raise DatasetImportError(
            f"{folder}: {len(classes)} class folders; at most {NUM_CLASSES} (the networks have ten outputs)"
        )
    return classes


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test pictures: ``test_fraction`` of each class (rounded;
    at least one where a class has two or more), both shuffled so classes mix."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = min(len(members) - 1, max(1, round(len(members) * test_fraction))) if test_fraction else 0
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return rng.permutation(np.array(train, dtype=int)), rng.permutation(np.array(test, dtype=int))


def _write(target: Path, arrays: dict, classes: list[str], folder: Path, fraction: float, seed: int,
           skipped: list[str]) -> None:  # fmt: skip
    """The four IDX files and dataset.json, made in a folder beside ``target`` and then put in
    its place: a dataset appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)  # as any other folder of the data directory (mkdtemp makes it private)
    try:
        files = {}
        for role in ROLES:
            raw = encode_idx(arrays[role])
            write_gz_atomic(staging / (FILE_NAMES[role] + ".gz"), raw)  # as the cache keeps MNIST
            files[role] = {"name": FILE_NAMES[role], "sha256": hashlib.sha256(raw).hexdigest(),
                           "count": len(arrays[role])}  # fmt: skip
        record = {
            "title": f"{target.name} (imported from {folder})",
            "classes": classes,
            "files": files,
            "source": str(folder.resolve()),
            "test_fraction": fraction,
            "seed": seed,
            "skipped": skipped,
        }
        write_atomic(staging / IMPORT_RECORD, to_json(record, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
