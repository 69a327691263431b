"""Which datasets a config may name: the two mnistctl knows, and those ``mnistctl data import``
made from folders of pictures (each a folder of the data directory with a ``dataset.json``).

Here, in the config package, so that ``validate`` refuses a misspelt dataset before anything
loads; where the files come from is :mod:`mnistctl.data`'s business.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN = ("mnist", "fashion")
IMPORT_RECORD = "dataset.json"  # what `data import` writes beside a dataset's files


def data_root() -> Path:
    """``$MNISTCTL_DATA_DIR``, or ``~/.cache/mnistctl``: one folder per dataset."""
    env = os.environ.get("MNISTCTL_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mnistctl"


def imported_datasets(root: Path | None = None) -> list[str]:
    """The names of the datasets imported into ``root`` (the data directory), sorted."""
    try:
        found = (root or data_root()).glob(f"*/{IMPORT_RECORD}")
        return sorted(p.parent.name for p in found if p.parent.name not in BUILTIN)
    except OSError:
        return []


def unknown_dataset(name: str) -> str | None:
    """Why ``name`` is no dataset here, or None when it is one."""
    if name in BUILTIN:
        return None
    imported = imported_datasets()
    if name in imported:
        return None
    made = ", ".join(imported) if imported else "none here yet"
    return (
        f"unknown dataset {name!r}; expected one of: {', '.join(BUILTIN)}, or one made by "
        f"`mnistctl data import FOLDER --name NAME` ({made})"
    )
