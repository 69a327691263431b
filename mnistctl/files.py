"""Small file helpers: whole files appear atomically or not at all, and every file mnistctl
reads comes through one guarded door (``read_regular``: a regular file only, never more than a
limit; ``read_json``: the same, then strict, bounded JSON), so a FIFO, a device, a huge or
damaged file is one line naming it, never a hang, a traceback or memory run out."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from mnistctl.errors import DamagedFileError

MAX_RECORD_BYTES = 64 << 20  # run.json, mnistctl.json, ledgers: far above any real one


def read_regular(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    Opened without blocking, so a FIFO or a device is refused at once instead of waiting for
    a writer or reading without end; the size is checked before anything is read.

    Raises:
        DamagedFileError: one line naming ``path``: missing, not a regular file, unreadable,
            or larger than ``limit``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise DamagedFileError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise DamagedFileError(f"{path}: is a directory, not a {what}") from None
    except OSError as err:
        raise DamagedFileError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DamagedFileError(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise DamagedFileError(f"{path}: not a regular file ({_kind(info.st_mode)}); expected a {what}")
        if info.st_size > limit:
            raise DamagedFileError(f"{path}: {info.st_size:,} bytes; a {what} is at most {limit:,}")
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        raise DamagedFileError(f"{path}: cannot read: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew while being read
        raise DamagedFileError(f"{path}: more than {limit:,} bytes; a {what} is at most {limit:,}")
    return data


def read_text(path: Path, limit: int, what: str = "file") -> str:
    """``read_regular``, then UTF-8 (a file that is not is refused in one line)."""
    data = read_regular(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path}: not UTF-8 text (byte {err.start}); damaged?") from None


def read_json(path: Path, limit: int = MAX_RECORD_BYTES, what: str = "JSON file", expect: type = dict) -> Any:
    """A JSON file holding an ``expect`` (an object, by default), read through ``read_regular``;
    nesting too deep for the parser, or anything but JSON, is one line naming the file."""
    text = read_text(path, limit, what)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno}, column {err.colno}"
        raise DamagedFileError(f"{path}: {where}: not JSON ({err.msg})") from None
    except RecursionError:
        raise DamagedFileError(f"{path}: nested too deeply to be a {what}") from None
    if not isinstance(value, expect):
        raise DamagedFileError(f"{path}: expected a JSON {_JSON_KINDS.get(expect, expect.__name__)}")
    return value


_JSON_KINDS = {dict: "object", list: "array"}


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a plain file"


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename.

    A reader (or a process restarted after ``kill -9``) sees the old file or the new one,
    never half of either.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:  # a full disk: the error names the file it was writing
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
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


def human_bytes(size: int) -> str:
    """``1,234,567`` -> ``1.2 MB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


@contextlib.contextmanager
def taking_turns(lock: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock`` (made if missing), waited for: short changes to a file
    several processes may make at once (tags, a queue) take turns. The kernel releases it
    however the holder ends."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
