"""A queue of runs: entries added at any time, trained by the one driver (``mnistctl.many.driver``)
in turn or on Ray, each an ordinary run directory in the runs folder.

``RUNS/.queue/`` holds ``queue.jsonl`` (one entry a line, appended under a lock, so entries
added while the queue runs are picked up) and each entry's resolved config (``NAME.yaml``, fixed
when it was added: editing the source config later changes nothing queued). An entry's state is
its run directory's: none yet (pending), unfinished (resumed when the queue runs again), or
finished. A run that failed or diverged is not retried by itself: ``queue ls`` shows it, and it
can be added again. One runner at a time (``.runner.lock``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mnistctl.config import dump_yaml, is_valid_name, load_config
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_text, taking_turns, to_json, write_atomic
from mnistctl.many.jobs import Job, OnRay
from mnistctl.run.directory import RunLock, is_run_dir, load_run
from mnistctl.status import Status
from mnistctl.train.events import Hook

QUEUE_DIR = ".queue"
ENTRIES = "queue.jsonl"
RUNNER_LOCK = ".runner.lock"
NOT_RETRIED = (Status.FAILED, Status.DIVERGED)


class QueueError(MnistctlError):
    """A queue entry that cannot be added or read."""


@dataclass(frozen=True)
class Entry:
    name: str  # its run directory's, in the runs folder
    source: str  # the config it was made from, with its --set
    added: float


def add(runs_dir: Path, config: Path, overrides: tuple[str, ...] = (), name: str | None = None) -> Entry:
    """Check ``config`` with ``overrides`` now, and queue it (its resolved config kept)."""
    exp = load_config(config, list(overrides))
    queue_dir = runs_dir / QUEUE_DIR
    with taking_turns(queue_dir / ".lock"):  # adders at once take turns
        taken = {e.name for e in entries(runs_dir)}
        base = name or f"{time.strftime('%Y%m%dT%H%M%S')}-{exp.name}"
        if not is_valid_name(base):
            raise QueueError(f"--name {base!r}: not a valid run name")
        if name and (name in taken or (runs_dir / name).exists()):
            raise QueueError(f"--name {name}: taken already (in the queue or the runs folder)")
        unique = base
        for i in range(2, 1000):
            if unique not in taken and not (runs_dir / unique).exists():
                break
            unique = f"{base}-{i}"
        entry = Entry(unique, " ".join([str(config), *(f"--set {o}" for o in overrides)]), time.time())
        write_atomic(queue_dir / f"{unique}.yaml", dump_yaml(exp))
        with (queue_dir / ENTRIES).open("a", encoding="utf-8") as f:
            f.write(to_json({"name": entry.name, "source": entry.source, "added": entry.added}) + "\n")
    return entry


def entries(runs_dir: Path) -> list[Entry]:
    path = runs_dir / QUEUE_DIR / ENTRIES
    if not path.exists():
        return []
    found = []
    for number, line in enumerate(read_text(path, 64 << 20, "queue").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            found.append(Entry(str(data["name"]), str(data["source"]), float(data["added"])))
        except (ValueError, KeyError, TypeError):
            raise DamagedFileError(f"{path}: line {number}: not a queue entry") from None
    return found


def state(runs_dir: Path, entry: Entry) -> str:
    """``pending``, or the status of the entry's run (``completed``, ``interrupted``, ...)."""
    run_dir = runs_dir / entry.name
    return str(load_run(run_dir).status) if is_run_dir(run_dir) else "pending"


def job_of(runs_dir: Path, entry: Entry) -> Job:
    path = runs_dir / QUEUE_DIR / f"{entry.name}.yaml"
    return Job(entry.name, load_config(path))


def pending(runs_dir: Path) -> list[Entry]:
    """The entries still to train: no run yet, or one not finished that is worth resuming."""
    waiting = []
    for entry in entries(runs_dir):
        run_dir = runs_dir / entry.name
        if not is_run_dir(run_dir):
            waiting.append(entry)
            continue
        status = load_run(run_dir).status
        if not status.finished and status not in NOT_RETRIED:
            waiting.append(entry)
    return waiting


def run_queue(
    runs_dir: Path,
    *,
    on_ray: OnRay | None = None,
    extra_hooks: list[Hook] | None = None,
    log: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[str]:
    """Train the queue until nothing is pending (entries added meanwhile too), through the one
    driver; stops at an interruption, which the next call resumes. Returns the names trained."""
    from mnistctl.many.driver import run_jobs

    trained: list[str] = []
    with RunLock(runs_dir / QUEUE_DIR, RUNNER_LOCK):  # one runner at a time
        while not should_stop() and (waiting := pending(runs_dir)):
            wave = waiting if on_ray is not None else waiting[:1]  # in turn: look again after each
            runs = run_jobs([job_of(runs_dir, e) for e in wave], runs_dir, on_ray=on_ray,
                            extra_hooks=extra_hooks or [], log=log, should_stop=should_stop)  # fmt: skip
            trained += [r.name for r in runs if r.record.status.finished]
            if any(not r.record.status.finished and r.record.status not in NOT_RETRIED for r in runs):
                break  # interrupted: what is left stays queued
            if len(runs) < len(wave):
                break  # a job that made no run directory (it failed before): do not spin on it
    return trained
