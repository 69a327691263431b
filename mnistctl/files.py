"""Small file helpers shared by the stages that write: whole files appear atomically or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
