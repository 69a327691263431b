"""A sweep directory's life: made whole or not at all, owned by one driver at a time, and
continued from any state it can be left in, wherever it has been moved since.

``make_sweep_dir`` writes ``sweep.yaml``, ``base.yaml`` and the marker ``.sweep.json`` (where
the directory was made, and a digest of its sweep.yaml) into a hidden staging directory and
renames it into place, so a half-made sweep directory never appears. ``owning`` locks it for
the driver's whole life. ``why_restart`` says, on ``--resume``, whether Ray Tune's saved state
can be trusted: it cannot when it is missing (Ctrl-C while Ray started), when the directory was
moved or copied (Tune's state names the old path), or when it is damaged; then the search
starts again in the same directory, and each trial finds its run directory as it was left
(``mnistctl.many.jobs.run_job``: finished ones are reported, unfinished ones resume).
No Ray here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from mnistctl.config import dump_yaml
from mnistctl.errors import DamagedFileError
from mnistctl.files import read_json, to_json, write_atomic
from mnistctl.many.sweep import BASE_FILE, SWEEP_FILE, TUNE_DIR, Sweep, SweepError, dump_sweep
from mnistctl.run.directory import RunLock

MARKER = ".sweep.json"
LOCK = ".sweep.lock"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_sweep_dir(sweep: Sweep, runs_dir: Path) -> Path:
    """``runs_dir/<sweep name>``, made with everything a resume needs, or not at all."""
    final = (runs_dir / sweep.name).absolute()
    if final.exists():
        raise SweepError(f"{final}: exists already; continue it with --resume {final}, or --name another")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{sweep.name}.making-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        text = dump_sweep(sweep)
        write_atomic(staging / BASE_FILE, dump_yaml(sweep.base))
        write_atomic(staging / SWEEP_FILE, text)
        _write_marker(staging, final, text)
        try:
            os.rename(staging, final)  # fails if another driver made it meanwhile
        except OSError:
            raise SweepError(
                f"{final}: exists already (made a moment ago by another sweep); --name another"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _write_marker(sweep_dir: Path, path: Path, sweep_text: str) -> None:
    marker = {"path": str(path), "sweep_sha256": _digest(sweep_text), "made": time.time()}
    write_atomic(sweep_dir / MARKER, to_json(marker, indent=2) + "\n")


def owning(sweep_dir: Path) -> RunLock:
    """The lock a driver holds on its sweep directory while it runs; a second driver (a
    ``--resume`` of a sweep still running) is refused with the pid that holds it."""
    return RunLock(sweep_dir, LOCK)


def check_unchanged(sweep_dir: Path) -> None:
    """Refuse a sweep.yaml edited since the sweep began: a sweep continues as it was started."""
    marker = _marker(sweep_dir)
    if marker is None or "sweep_sha256" not in marker:
        return  # made by an earlier version: nothing to compare with
    if _digest((sweep_dir / SWEEP_FILE).read_text(encoding="utf-8")) != marker["sweep_sha256"]:
        raise SweepError(
            f"{sweep_dir / SWEEP_FILE}: edited since the sweep began; a sweep continues as it was "
            "started: put it back, or start a new sweep from the edited file (--name another)"
        )


def why_restart(sweep_dir: Path, can_restore: bool) -> str | None:
    """Why Ray Tune's saved state cannot be used to continue (None: it can)."""
    marker = _marker(sweep_dir)
    if not can_restore:
        return "Ray Tune saved no state there"
    if marker == {}:
        return f"its {MARKER} is damaged"
    if marker is not None and marker.get("path") != str(sweep_dir):
        return f"the sweep was moved or copied here from {marker.get('path')}"
    return None


def set_aside(sweep_dir: Path) -> None:
    """Keep Ray Tune's old state beside the new (never deleted), and note the directory's
    present path, before a search starts again in a sweep directory."""
    tune = sweep_dir / TUNE_DIR
    if tune.exists():
        tune.rename(sweep_dir / f"{TUNE_DIR}.before-{time.strftime('%Y%m%dT%H%M%S')}")
    _write_marker(sweep_dir, sweep_dir, (sweep_dir / SWEEP_FILE).read_text(encoding="utf-8"))


def _marker(sweep_dir: Path) -> dict | None:
    if not (sweep_dir / MARKER).exists():
        return None
    try:
        return read_json(sweep_dir / MARKER, what="sweep marker")
    except DamagedFileError:
        return {}  # damaged: the state it vouches for is not trusted
