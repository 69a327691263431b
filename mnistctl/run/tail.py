"""A run's ``metrics.csv`` read as it grows: what was read is kept (compactly), and a later read
parses only the lines appended since, so a page polling a run with 300,000 evaluations costs
what the new rows cost, not the whole file each time.

The training appends to metrics.csv and a resume rewrites it shorter; a file that shrank, was
replaced, or whose first line changed is read again from the start.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from mnistctl.errors import DamagedFileError
from mnistctl.train.events import FIELDS

MAX_READ_BYTES = 64 << 20  # one read at most: a bigger backlog is read over several polls
_STEP, _TEST = FIELDS.index("step"), FIELDS.index("test_accuracy")


class MetricsTail:
    """``read()`` is ``writers.read_metrics`` of the file as it is now, incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._header: bytes = b""
        self._columns: list[int | None] = []
        self._values: list[tuple[float, ...]] = []

    def read(self) -> list[dict[str, float]]:
        """Every whole row so far, as numbers (a torn last line waits for the next read)."""
        self._advance()
        return [dict(zip(FIELDS, values, strict=True)) for values in self._values]

    def rows_from(self, start: int) -> list[dict[str, float]]:
        """The rows after the first ``start`` (all of them if the file is now shorter)."""
        self._advance()
        return [dict(zip(FIELDS, values, strict=True)) for values in self._values[start:]]

    def count(self) -> int:
        """How many whole rows there are now."""
        self._advance()
        return len(self._values)

    def _advance(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._reset()
            return
        identity = (info.st_dev, info.st_ino)
        if identity != self._identity or info.st_size < self._offset:
            self._reset()
            self._identity = identity
        if info.st_size == self._offset:
            return
        with self.path.open("rb") as f:
            if self._header and f.readline() != self._header:  # rewritten in place: start over
                self._reset()
                self._identity = identity
            f.seek(self._offset)
            data = f.read(min(info.st_size - self._offset, MAX_READ_BYTES))
        whole = data[: data.rfind(b"\n") + 1]
        if not whole:
            return
        if not self._header:
            first = whole.index(b"\n") + 1
            self._header, whole = whole[:first], whole[first:]
            self._offset += first
            names = self._parse(self._header)[0] if self._header.strip() else []
            if "step" not in names or "test_accuracy" not in names:
                raise DamagedFileError(f"{self.path}: damaged: no step and test_accuracy columns")
            self._columns = [names.index(k) if k in names else None for k in FIELDS]
        for cells in self._parse(whole):
            values = tuple(_number(cells, i) for i in self._columns)
            if not (math.isnan(values[_STEP]) or math.isnan(values[_TEST])):
                self._values.append(values)  # else a torn or damaged line: skipped, as read_metrics does
        self._offset += len(whole)

    def _parse(self, data: bytes) -> list[list[str]]:
        try:
            return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        except (UnicodeDecodeError, csv.Error) as err:
            raise DamagedFileError(
                f"{self.path}: damaged: not a CSV text file ({type(err).__name__})"
            ) from None


def _number(cells: list[str], index: int | None) -> float:
    if index is None or index >= len(cells) or cells[index] == "":
        return math.nan
    try:
        return float(cells[index])
    except ValueError:
        return math.nan
