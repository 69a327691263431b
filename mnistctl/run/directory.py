"""The run directory: each run describes itself, and eval/compare read only what it holds.

Layout of ``runs/<UTC timestamp>-<name>/``::

    config.yaml      the resolved experiment (after --set), re-loadable as a config
    run.json         status, times, seed, versions, host, git commit, dataset checksums, results
    metrics.csv      one row per evaluation
    distributions.csv  percentiles of weights, biases (and activations) per evaluation
    predictions.npz  test predictions at the end and at the best evaluation
    checkpoints/     latest/ and best/ TensorFlow checkpoints
    tensorboard/     TensorFlow event files

``run.json`` is a :class:`RunRecord`, rewritten atomically, so a crash never leaves half of it;
keys this version does not know (from a newer mnistctl) are kept as they are.
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
import hashlib
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mnistctl import __version__
from mnistctl.config import Experiment, dump_yaml, parse_experiment
from mnistctl.config.overrides import MAX_CONFIG_BYTES, ConfigError, parse_yaml
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_json, read_text, to_json, version, write_atomic, write_in_place
from mnistctl.machine import describe as describe_machine
from mnistctl.provenance import PATCH_FILE, code_state, command_line
from mnistctl.status import Status, StatusError
from mnistctl.train.events import EvalRecord, best_row

CONFIG_FILE = "config.yaml"
META_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
DISTRIBUTIONS_FILE = "distributions.csv"
PREDICTIONS_FILE = "predictions.npz"
EVALUATIONS_FILE = "evaluations.jsonl"  # per evaluation: misrecognised digits, last batch
KERNELS_FILE = "kernels.jsonl"  # per evaluation: the first layer's weights and feature maps
LOCK_FILE = ".lock"  # held (flock) by the process that trains the run; says which one

# A running process rewrites run.json at least this often; older means it died.
HEARTBEAT_S = 30.0


class RunError(MnistctlError):
    """A path that is not a usable run directory."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Timing:
    """Where a training process's time went."""

    train_s: float | None = None  # the training steps, hooks included, evaluations excluded
    session_run_s: float | None = None  # inside session.run for those steps
    loop_overhead_fraction: float | None = None  # batch picking, feeding and hooks, as a share
    images_per_s: float | None = None


@dataclass
class Resume:
    """One ``train --resume``."""

    at: str
    from_step: int
    changed: list[dict[str, Any]] = field(default_factory=list)  # {"key", "old", "new"}


@dataclass
class RunRecord:
    """Everything ``run.json`` says about a run."""

    name: str = ""
    status: Status = Status.CREATED
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    seed: int | None = None
    pid: int | None = None
    host: str | None = None
    heartbeat: float = 0.0  # time.time() of the last write: a live process writes often
    git_commit: str | None = None
    git_dirty: bool | None = None  # uncommitted changes to tracked files (then code.patch has them)
    rerun_of: str | None = None  # the run whose config.yaml this one was trained from
    versions: dict[str, str | None] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    parameters: int | None = None
    dataset: dict[str, Any] = field(default_factory=dict)
    dataset_sha256: dict[str, str] = field(default_factory=dict)
    config_sha256: str | None = None  # config.yaml as training wrote it (runs before 2026-12-02: none)
    steps_total: int | None = None
    steps_done: int = 0
    peak_rss_mb: float | None = None
    best_step: int | None = None  # of the best evaluation (hooks.best_row), whose checkpoint is kept
    best_test_accuracy: float | None = None  # test accuracy at best_step
    best_validation_accuracy: float | None = None  # validation accuracy there (with data.validation)
    selected_by: str | None = None  # "validation" or "test": what chose best_step
    final: EvalRecord | None = None  # the last evaluation
    wall_s: float | None = None
    timing: Timing = field(default_factory=Timing)
    resumes: list[Resume] = field(default_factory=list)
    error: str | None = None
    stop_reason: str | None = None  # why a stopping rule ended the run (train.stop_at, ...)
    sweep: str | None = None  # the sweep this run is a trial of (its directory's name)
    trial: str | None = None  # the trial's id in that sweep
    node: str | None = None  # the Ray node that trained it last (sweeps)
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer mnistctl, kept as read

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("heartbeat", "wall_s", "peak_rss_mb", "best_test_accuracy", "best_validation_accuracy"):
            if values.get(key) is not None and not isinstance(values[key], (int, float)):
                raise ValueError(f"{key} is {values[key]!r}, not a number")
        for key in ("pid", "steps_done", "steps_total", "best_step", "seed", "parameters"):
            if values.get(key) is not None and (
                isinstance(values[key], bool) or not isinstance(values[key], int)
            ):
                raise ValueError(f"{key} is {values[key]!r}, not a whole number")
        values["status"] = Status.parse(data.get("status"))
        if isinstance(data.get("final"), dict):
            values["final"] = EvalRecord.from_row(data["final"])
        timing = data.get("timing") if isinstance(data.get("timing"), dict) else {}
        values["timing"] = Timing(**{k: v for k, v in timing.items() if k in Timing.__dataclass_fields__})
        values["resumes"] = [
            Resume(r.get("at", ""), int(r.get("from_step", 0)), r.get("changed", []))
            for r in data.get("resumes") or []
            if isinstance(r, dict)
        ]
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data.pop("extra")
        return {**data, **self.extra}


@dataclass
class Run:
    """A run directory and its record (``run.json``)."""

    path: Path
    record: RunRecord
    _experiment: Experiment | None = field(default=None, repr=False, compare=False)
    label: str = field(default="", compare=False)  # its path inside a folder listed recursively
    # What a listing derived from the run's files (mnistctl.report.compare.facts), and the
    # folder index it was listed through (mnistctl.run.listing), which keeps it between calls.
    derived: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    index: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The run directory's name; inside a folder listed recursively, its path from there
        (``sweep/trial-00000``), so the trials of two sweeps are told apart."""
        return self.label or self.path.name

    def update(self, **changes: Any) -> None:
        """Set fields of the record and rewrite run.json atomically; also the heartbeat.

        Raises:
            StatusError: a status change that TRANSITIONS does not allow (nothing is written).
        """
        for key in changes:
            if not hasattr(self.record, key) or key == "extra":
                raise TypeError(f"RunRecord has no field {key!r}")  # a bug, not a user error
        new = changes.get("status")
        if new is not None and not self.record.status.may_become(new):
            raise StatusError(f"{self.path}: a run may not go from {self.record.status} to {new}")
        for key, value in changes.items():
            setattr(self.record, key, value)
        self.record.heartbeat = time.time()
        text = to_json(self.record.to_json(), indent=2) + "\n"
        try:
            write_atomic(self.path / META_FILE, text)
        except OSError as err:
            if err.errno != errno.ENOSPC or not (self.path / META_FILE).is_file():
                raise
            # A full disk: no room for a temporary copy. The status must still be recorded
            # (failed, with the reason), so run.json is rewritten where it is.
            write_in_place(self.path / META_FILE, text)

    def experiment(self) -> Experiment:
        """The resolved config this run was trained with (parsed once; no machine checks)."""
        if self._experiment is None:
            path = self.path / CONFIG_FILE
            self._experiment = _parsed_config(path, version(path), self.record.config_sha256)
        return self._experiment

    def trained_experiment(self) -> Experiment:
        """The config the run's weights were trained with: config.yaml, checked against the
        digest run.json recorded when training wrote it, so weights are never built into a
        graph of a config edited since (relu -> sigmoid). Runs from before the digest: as read."""
        recorded = self.record.config_sha256
        if recorded:
            path = self.path / CONFIG_FILE
            if config_digest(read_text(path, MAX_CONFIG_BYTES, "config file")) != recorded:
                raise RunError(
                    f"{path}: edited since the run was trained (run.json records another config); its "
                    "weights belong to that one: put it back, or change a config with train --resume --set"
                )
        return self.experiment()

    @property
    def status(self) -> Status:
        """The recorded status, or ``crashed`` when it claims a process that is gone."""
        status = self.record.status
        if status.claimed and not _alive(self.record):
            return Status.CRASHED
        return status

    def best(self, rows: list[dict[str, float]]) -> dict[str, float] | None:
        """The best of this run's metrics rows, by its experiment's selection metric."""
        return best_row(rows, self.experiment().selection_metric)


def _alive(record: RunRecord) -> bool:
    if record.host == socket.gethostname() and isinstance(record.pid, int):
        try:
            os.kill(record.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return time.time() - float(record.heartbeat or 0) < 10 * HEARTBEAT_S
    return time.time() - float(record.heartbeat or 0) < 3 * HEARTBEAT_S


@functools.lru_cache(maxsize=16384)  # a folder of thousands of runs, each read once per change
def _parsed_config(path: Path, written: tuple[int, int, int] | None, digest: str | None) -> Experiment:
    """A run's config.yaml, parsed once for each time it was written (``files.version``): a
    folder of runs watched live is listed every second. One whose text has the digest run.json
    keeps is as training wrote it, and read with the fast parser."""
    try:
        text = read_text(path, MAX_CONFIG_BYTES, "config file")
        raw = parse_yaml(text, path, written_by_us=digest is not None and config_digest(text) == digest)
    except DamagedFileError as err:
        raise RunError(f"cannot read the run's config: {err}") from None
    except ConfigError as err:
        raise RunError(f"cannot read the run's config: {err}") from None
    return parse_experiment(raw, str(path))


class RunLock:
    """An OS lock on a run directory (or a results folder), held by the one process that writes it.

    ``flock`` on ``RUN_DIR/.lock``: the kernel releases it when the process dies, however it
    dies, so a crashed run is never left locked, and a second writer is refused at once with
    the pid that holds it (the file's text).
    """

    def __init__(self, run_dir: Path, lock_file: str = LOCK_FILE) -> None:
        self.run_dir = run_dir
        self.lock_file = lock_file
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.run_dir}: in use by {holder}; let it finish or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def config_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def create_run(runs_dir: Path, exp: Experiment, name: str | None = None, *, exact: bool = False) -> Run:
    """Make a new, uniquely named run directory and record the config and metadata.

    Two runs started in the same second with the same name get ``-2``, ``-3``... suffixes:
    ``mkdir`` is the atomic claim, so neither can overwrite the other. With ``exact``, the
    directory is ``runs_dir / name`` itself (a sweep's trial), and it must not exist yet.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = name if exact and name else f"{stamp}-{name or exp.name}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{runs_dir}: cannot create the runs directory: {err.strerror}") from None
    if exact and _half_made(runs_dir / base):  # a create_run cut short (a full disk, kill -9)
        shutil.rmtree(runs_dir / base)
    for attempt in range(1, 2 if exact else 1000):
        path = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise RunError(f"{runs_dir}: cannot create a run directory: {err.strerror}") from None
    else:
        raise RunError(
            f"{runs_dir}: " + (f"{base} exists already" if exact else f"too many runs named {base}")
        )
    try:
        return _record_new_run(path, exp)
    except BaseException as err:  # a run directory is made whole or not at all
        shutil.rmtree(path, ignore_errors=True)
        if isinstance(err, OSError):
            raise RunError(f"{err.filename or path}: cannot write: {err.strerror or err}") from None
        raise


def _half_made(path: Path) -> bool:
    """A directory that :func:`create_run` began and never finished: no run record, and
    nothing in it but what create_run writes before the record (and their temporary copies)."""
    try:
        names = {p.name for p in path.iterdir()}
    except OSError:
        return False
    ours = {CONFIG_FILE, PATCH_FILE}
    return META_FILE not in names and all(n in ours or n.endswith(".tmp") for n in names)


def _record_new_run(path: Path, exp: Experiment) -> Run:
    text = dump_yaml(exp)
    write_atomic(path / CONFIG_FILE, text)
    code = code_state()
    if code.patch:  # the uncommitted change itself, beside the commit it applies to
        write_atomic(path / PATCH_FILE, code.patch)
    run = Run(path, RunRecord())
    run.update(
        config_sha256=config_digest(text),
        name=exp.name,
        status=Status.CREATED,
        created_at=utc_now(),
        seed=exp.train.seed,
        pid=os.getpid(),
        host=socket.gethostname(),
        git_commit=code.commit,
        git_dirty=code.dirty,
        versions={
            "mnistctl": __version__,
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            "tensorflow": _version("tensorflow"),
        },
        machine=describe_machine(),
        command=command_line(),
    )
    return run


def _version(module: str) -> str | None:
    mod = sys.modules.get(module)
    if mod is not None:
        return getattr(mod, "__version__", None)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def load_run(path: Path) -> Run:
    """Open an existing run directory; RunError if it is not one."""
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory")
    meta_path = path / META_FILE
    if not meta_path.is_file() or not (path / CONFIG_FILE).is_file():
        raise RunError(f"{path}: not a run directory (no {META_FILE} and {CONFIG_FILE})")
    try:
        meta = read_json(meta_path, what="run record")
    except DamagedFileError as err:
        raise RunError(f"unreadable: {err}") from None
    try:
        record = RunRecord.from_json(meta)
    except (TypeError, ValueError) as err:
        raise RunError(f"{meta_path}: not a run record ({err})") from None
    return Run(path, record)


def is_run_dir(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / CONFIG_FILE).is_file()
