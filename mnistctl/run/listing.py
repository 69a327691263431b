"""Finding the runs in folders, and an index that lists a folder of thousands of them at once.

Reading a run again - its run.json, its config.yaml through the YAML parser and the config
schema, its metrics - costs about a millisecond; ``compare`` of a folder of 10,000 runs would
spend seconds on runs that have not changed since the last call. A folder's index keeps, for
each run directory in it, the version (mtime, size, inode) of each file a listing reads and
what the listing derived from them (``Run.derived``: compare's row, the flat config, ...); a
run whose files are all unchanged is listed from the index without opening them (its run.json
is read only if something asks for its record). The index is ``.mnistctl-index.json`` in the
folder (hidden: listings skip it), rewritten atomically when something changed. It is only a
cache: a damaged or foreign one is ignored and rebuilt, a folder that cannot be written goes
without, and a run that claims to be training is always read afresh (its status depends on
its process, not only on its files).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mnistctl.errors import DamagedFileError
from mnistctl.files import read_json, write_atomic
from mnistctl.run.directory import (
    CONFIG_FILE,
    META_FILE,
    METRICS_FILE,
    Run,
    RunError,
    RunRecord,
    is_run_dir,
    load_run,
)
from mnistctl.run.labels import LABELS_FILE

INDEX_FILE = ".mnistctl-index.json"
INDEX_FORMAT = 3
MAX_INDEX_BYTES = 1 << 30
MAX_DEPTH = 4  # folders inside folders a recursive listing looks into (runs/<sweep>/trial-*)
WATCHED = (META_FILE, CONFIG_FILE, METRICS_FILE, LABELS_FILE)  # what a listing reads of a run


def find_runs(
    paths: list[Path], damaged: list[RunError] | None = None, recursive: bool = False, indexed: bool = False
) -> list[Run]:
    """Runs named directly, or every run inside a runs directory, oldest first.

    Args:
        damaged: where to put the errors of runs inside a runs directory whose run.json cannot
            be read, skipping them (default: the first one is raised).
        recursive: also the runs in folders inside it (a sweep's trials, grouped under the
            sweep: ``sweep/trial-00000``); hidden folders and Ray Tune's state are skipped.
        indexed: list a runs directory through its index (see the module); call
            :func:`save_index` once the runs' ``derived`` values are filled in.
    """
    runs = []
    for path in paths:
        if is_run_dir(path):
            runs.append(load_run(path))
        elif path.is_dir():
            depth = MAX_DEPTH if recursive else 0
            index = FolderIndex(path, depth) if indexed else None
            root = len(os.path.join(str(path), ""))
            for inside, stamp in _run_dirs(path, depth):
                key = str(inside)[root:]  # its path from the folder: trial-00000, sweep/trial-00000
                try:
                    run = index.open(inside, key, stamp) if index is not None else load_run(inside)
                except RunError as err:
                    if damaged is None:
                        raise
                    damaged.append(err)
                    continue
                if inside.parent != path:
                    run.label = key
                runs.append(run)
        else:
            raise RunError(f"{path}: no such run or runs directory")
    return runs


def save_index(runs: list[Run]) -> None:
    """Keep what was derived from the runs listed through an index, for the next listing."""
    indexes = {id(run.index[0]): run.index[0] for run in runs if run.index is not None}
    for run in runs:
        if run.index is not None and run.derived is not None:
            index, key, stamp, fresh = run.index
            if fresh:  # read from its files this time (the others are in the index as they are)
                index.remember(key, stamp, run)
    for index in indexes.values():
        index.save()


def _run_dirs(folder: Path, depth: int) -> Iterator[tuple[Path, list]]:
    """Each run directory inside ``folder`` (``depth`` folders deep), with its files' stamp."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return
    base = str(folder)
    for name in names:  # plain strings until a run is found: pathlib's parsing costs more than stat
        stamp = _stamp(f"{base}/{name}")
        if stamp[0] is not None and stamp[1] is not None:  # run.json and config.yaml
            yield folder / name, stamp
        elif depth > 0 and name != "tune" and not name.startswith("tune."):
            yield from _run_dirs(folder / name, depth - 1)


def _stamp(run_dir: str) -> list[list[int] | None]:
    """The version of each file a listing reads of the run (None: absent, or not a file)."""
    stamp = []
    for name in WATCHED:  # plain strings: pathlib's joins cost more than the stat calls
        try:
            s = os.stat(f"{run_dir}/{name}")
        except OSError:
            stamp.append(None)
            continue
        stamp.append([s.st_mtime_ns, s.st_size, s.st_ino] if stat.S_ISREG(s.st_mode) else None)
    return stamp


class FolderIndex:
    """The index of one folder of runs (see the module)."""

    def __init__(self, folder: Path, depth: int) -> None:
        self.path = folder / INDEX_FILE
        self.depth = depth  # how deep the listing looks: what it has not seen is not gone
        self.keysets: list[list[str]] = []
        self._keysets: dict[tuple[str, ...], int] = {}
        self.entries = self._read()
        self.seen: set[str] = set()
        self.changed = False

    def _read(self) -> dict[str, Any]:
        try:
            if not self.path.is_file():
                return {}
            data = read_json(self.path, MAX_INDEX_BYTES, "run index")
        except (DamagedFileError, OSError):
            return {}  # rebuilt as the runs are read
        runs, keysets = data.get("runs"), data.get("keysets")
        if data.get("format") != INDEX_FORMAT or not isinstance(runs, dict) or not isinstance(keysets, list):
            return {}
        self.keysets = keysets
        self._keysets = {tuple(keys): i for i, keys in enumerate(keysets) if isinstance(keys, list)}
        return runs

    def open(self, run_dir: Path, key: str, stamp: list) -> Run:
        """The run, from the index when none of its files changed since it was indexed
        (``stamp``, taken before reading: a file changed meanwhile is read again next time)."""
        self.seen.add(key)
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            derived = self._unpack(entry.get("derived"))
            if derived is not None:
                run = _IndexedRun(run_dir)  # an unchanged run that was not training when indexed
                run.derived = derived
                run.index = (self, key, stamp, False)
                return run
        run = load_run(run_dir)
        run.index = (self, key, stamp, True)
        return run

    def remember(self, key: str, stamp: list, run: Run) -> None:
        if run.record.status.claimed:  # its status depends on its process: always read afresh
            self.changed |= self.entries.pop(key, None) is not None
            return
        self.entries[key] = {"stamp": stamp, "derived": self._pack(run.derived)}
        self.changed = True

    # A run's flat config and its row are most of an entry, and the runs of a folder mostly
    # have the same keys: each set of keys is kept once, and a run's mapping as its values in
    # that order (a third of the index to read for a folder of 10,000 runs).
    PACKED = ("config", "row")

    def _pack(self, derived: dict[str, Any]) -> dict[str, Any]:
        packed = dict(derived)
        for name in self.PACKED:
            mapping = derived.get(name)
            if isinstance(mapping, dict):
                packed[name] = {"keys": self._keyset(list(mapping)), "values": list(mapping.values())}
        return packed

    def _keyset(self, keys: list[str]) -> int:
        number = self._keysets.get(tuple(keys))
        if number is None:
            self.keysets.append(keys)
            number = self._keysets[tuple(keys)] = len(self.keysets) - 1
        return number

    def _unpack(self, derived: Any) -> dict[str, Any] | None:
        try:
            unpacked = dict(derived)
            for name in self.PACKED:
                packed = derived[name]
                unpacked[name] = dict(zip(self.keysets[packed["keys"]], packed["values"], strict=True))
            return unpacked
        except (KeyError, IndexError, TypeError, ValueError):
            return None  # damaged: read the run again

    def save(self) -> None:
        listed = {key for key in self.entries if key.count("/") <= self.depth}
        gone = listed - self.seen  # removed, moved or trashed since
        for key in gone:
            del self.entries[key]
        if not (self.changed or gone):
            return
        data = {"format": INDEX_FORMAT, "keysets": self.keysets, "runs": self.entries}
        text = json.dumps(data, separators=(",", ":"))
        with contextlib.suppress(OSError):  # a folder we cannot write: listed without an index
            write_atomic(self.path, text)


class _IndexedRun(Run):
    """A run listed from the index: what the listing shows is in ``derived``; its record
    (run.json) is read only if something asks for it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, None)

    @property
    def record(self) -> RunRecord:
        if self._record is None:
            self._record = load_run(self.path).record
        return self._record

    @record.setter
    def record(self, value: RunRecord | None) -> None:
        self._record = value
