"""An export's ``mnistctl.json``: what the SavedModel beside it was exported from (no
TensorFlow here, so ``serve --workers`` checks it before it forks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnistctl.config import NUM_CLASSES
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_json

INFO_FILE = "mnistctl.json"  # what was exported, next to the SavedModel files


class InfoError(MnistctlError):
    """An export's description that cannot be read."""


def read_info(path: Path) -> dict[str, Any]:
    """An export's ``mnistctl.json`` (what it was exported from), checked: a damaged one is
    one line naming it, in ``predict`` and ``serve`` alike, before the model loads."""
    info_path = path / INFO_FILE
    if not info_path.exists():
        return {"run": None}
    try:
        info = read_json(info_path, what="export description")
    except DamagedFileError as err:
        raise InfoError(
            f"{err} (export it again, or delete {INFO_FILE}: it only describes the model)"
        ) from None
    classes = info.get("classes")
    if classes is not None and (
        not isinstance(classes, list)
        or len(classes) != NUM_CLASSES
        or not all(isinstance(c, str) for c in classes)
    ):
        raise InfoError(f"{info_path}: classes: expected a list of {NUM_CLASSES} names")
    return info


def check_info(source: Path) -> None:
    """Where ``source`` is an export (a SavedModel's folder, or a base folder of versions),
    its description reads: checked before TensorFlow loads, or workers fork."""
    for folder in (
        (source, *sorted(p for p in source.iterdir() if p.name.isdigit())) if source.is_dir() else ()
    ):
        if (folder / "saved_model.pb").is_file():
            read_info(folder)
