"""Small file helpers shared by the stages that write: whole files appear atomically or not at all."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename.

    A reader (or a process restarted after ``kill -9``) sees the old file or the new one,
    never half of either.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_in_place(path: Path, data: bytes | str) -> None:
    """Overwrite ``path``'s bytes where they are: the last resort when the disk is full and
    :func:`write_atomic` has no room for its temporary copy (a small file that does not grow
    past its last block needs no new space). Not atomic: only for a run's last word."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with path.open("r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


def version(path: Path) -> tuple[int, int, int] | None:
    """Which write of ``path`` this is (its mtime, size and inode; None when it cannot be read):
    a key for caching what was parsed from it, since an atomic rewrite changes the inode."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and infinity (in nested dicts, lists and tuples) made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def to_json(value: Any, **options: Any) -> str:
    """Strict JSON: NaN and infinities, which JSON has no words for, are written as ``null``.

    Python's ``json`` writes them as bare ``NaN``/``Infinity`` by default, which strict parsers
    (browsers' ``JSON.parse``, jq, Go, Rust) refuse. Readers turn ``null`` back into NaN where
    a number is expected.
    """
    return json.dumps(finite_or_none(value), allow_nan=False, **options)


def csv_text(
    fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]], *, ignore_extra: bool = False
) -> str:
    """A CSV file's text: the header, then one line per row (``\\n`` line ends)."""
    out = io.StringIO()
    writer = csv.DictWriter(
        out,
        fieldnames=list(fieldnames),
        lineterminator="\n",
        extrasaction="ignore" if ignore_extra else "raise",
    )
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_csv(
    path: Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]], *, ignore_extra: bool = False
) -> None:
    """Write a whole CSV file atomically (see :func:`write_atomic`)."""
    write_atomic(path, csv_text(fieldnames, rows, ignore_extra=ignore_extra))
