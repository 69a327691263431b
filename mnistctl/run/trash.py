"""Trash, restore, clean up: nothing of a run is deleted except by ``gc``.

``trash`` moves a run directory into ``.trash/`` beside it (a rename: instant, the same bytes),
with a note of where it came from; ``restore`` moves it back; ``gc`` empties the trash (or its
entries older than some days) and, asked, trims each finished run's checkpoints to its best and
latest. A run a process is training is refused (its lock is held). Every function returns what
it did, with the bytes involved, and changes nothing when ``dry_run``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mnistctl.errors import MnistctlError
from mnistctl.files import read_json, to_json, write_atomic
from mnistctl.run.checkpoints import LATEST, complete_steps
from mnistctl.run.directory import CHECKPOINT_DIR, LOCK_FILE, Run
from mnistctl.run.listing import find_runs

TRASH_DIR = ".trash"
ORIGIN_FILE = ".origin.json"  # in a trashed run: where it was, and when it was trashed


class TrashError(MnistctlError):
    """A run that cannot be trashed or restored as asked."""


@dataclass(frozen=True)
class Done:
    """One thing done (or, with ``dry_run``, that would be)."""

    what: str  # "trashed", "restored", "deleted", "trimmed"
    path: Path
    to: Path | None
    bytes: int


def size_of(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def trash(runs: list[Run], dry_run: bool = False) -> list[Done]:
    """Move each run into ``.trash/`` beside it; a run being trained is refused, before any moves."""
    for run in runs:
        _refuse_busy(run.path)
    done = []
    for run in runs:
        source = run.path.absolute()
        target = source.parent / TRASH_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}-{source.name}"
        while target.exists():
            target = target.with_name(target.name + "-again")
        size = size_of(source)
        if not dry_run:
            target.parent.mkdir(exist_ok=True)
            write_atomic(source / ORIGIN_FILE, to_json({"path": str(source), "trashed": time.time()}) + "\n")
            os.rename(source, target)
        done.append(Done("trashed", source, target, size))
    return done


def _refuse_busy(run_dir: Path) -> None:
    """Refuse a run whose lock a process holds (it is training), without writing the lock file:
    a run trashed and restored comes back byte for byte."""
    import fcntl

    lock = run_dir / LOCK_FILE
    if not lock.exists():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        raise TrashError(f"{run_dir}: in use by {holder}; stop it, or let it finish, first") from None
    finally:
        os.close(fd)


def trashed(folder: Path) -> list[Path]:
    """The runs in ``folder``'s trash, oldest first."""
    trash_dir = folder / TRASH_DIR
    return sorted(p for p in trash_dir.iterdir() if (p / ORIGIN_FILE).is_file()) if trash_dir.is_dir() else []


def _origin(entry: Path) -> dict:
    return read_json(entry / ORIGIN_FILE, what="trash note")


def restore(entries: list[Path], dry_run: bool = False) -> list[Done]:
    """Move trashed runs back where they were; a place taken since is refused, before any moves."""
    plans = []
    for entry in entries:
        if not (entry / ORIGIN_FILE).is_file():
            raise TrashError(f"{entry}: not a trashed run (no {ORIGIN_FILE})")
        back = Path(_origin(entry)["path"])
        if back.exists():
            raise TrashError(f"{entry}: {back} exists again; move it away first")
        plans.append((entry, back))
    done = []
    for entry, back in plans:
        size = size_of(entry)
        if not dry_run:
            back.parent.mkdir(parents=True, exist_ok=True)
            os.rename(entry, back)
            (back / ORIGIN_FILE).unlink()
        done.append(Done("restored", entry, back, size))
    return done


def gc(
    folder: Path, older_than_days: float | None = None, checkpoints: bool = False, dry_run: bool = False
) -> list[Done]:
    """Empty ``folder``'s trash (only entries trashed more than ``older_than_days`` ago, when
    given) and, with ``checkpoints``, keep only the best and the latest checkpoint of each
    finished run in ``folder`` (its sweeps' trials included)."""
    done = []
    now = time.time()
    for entry in trashed(folder):
        when = float(_origin(entry).get("trashed") or 0)
        if older_than_days is not None and now - when < older_than_days * 86400:
            continue
        done.append(Done("deleted", entry, None, size_of(entry)))
        if not dry_run:
            shutil.rmtree(entry)
    if checkpoints:
        for run in find_runs([folder], damaged=[], recursive=True):
            if run.status.finished:
                done += _trim(run, dry_run)
    return done


def _trim(run: Run, dry_run: bool) -> list[Done]:
    """The latest slot's older checkpoints (a resume may need only the newest)."""
    slot = run.path / CHECKPOINT_DIR / LATEST
    steps = complete_steps(slot) if slot.is_dir() else []
    done = []
    for step in steps[:-1]:
        files = [p for p in slot.iterdir() if p.name.split(".")[0] == f"model-{step}"]
        size = sum(p.stat().st_size for p in files)
        if not dry_run:
            _refuse_busy(run.path)
            for path in files:
                path.unlink()
        done.append(Done("trimmed", slot / f"model-{step}", None, size))
    return done


def resolve_trashed(folder: Path, names: list[str]) -> list[Path]:
    """Trash entries named as ``restore`` is given them: a path, or a name in ``folder``'s trash."""
    found = []
    for name in names:
        path = Path(name)
        if not path.exists():
            path = folder / TRASH_DIR / name
        if not path.exists():
            raise TrashError(f"{name}: not in {folder / TRASH_DIR} (mnistctl restore lists it)")
        found.append(path)
    return found
