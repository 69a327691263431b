"""The run directory: each run describes itself, and eval/compare read only what it holds.

Layout of ``runs/<UTC timestamp>-<name>/``::

    config.yaml      the resolved experiment (after --set), re-loadable as a config
    run.json         status, times, seed, versions, host, git commit, dataset checksums, results
    metrics.csv      one row per evaluation
    distributions.csv  percentiles of weights, biases (and activations) per evaluation
    predictions.npz  test predictions at the end and at the best evaluation
    checkpoints/     latest/ and best/ TensorFlow checkpoints
    tensorboard/     TensorFlow event files

``run.json`` is rewritten atomically, so a crash never leaves half of it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mnistctl import __version__
from mnistctl.config import Experiment, dump_yaml, parse_experiment
from mnistctl.errors import MnistctlError
from mnistctl.files import write_atomic
from mnistctl.hooks import EvalRecord, Hook, TrainContext

CONFIG_FILE = "config.yaml"
META_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
DISTRIBUTIONS_FILE = "distributions.csv"
PREDICTIONS_FILE = "predictions.npz"

# A running process rewrites run.json at least this often; older means it died.
HEARTBEAT_S = 30.0


class RunError(MnistctlError):
    """A path that is not a usable run directory."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Run:
    """A run directory and its metadata (``run.json``)."""

    path: Path
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    def update(self, **fields: Any) -> None:
        """Merge fields into run.json and rewrite it atomically; also the heartbeat."""
        self.meta.update(fields)
        self.meta["heartbeat"] = time.time()
        write_atomic(self.path / META_FILE, json.dumps(self.meta, indent=2) + "\n")

    def experiment(self) -> Experiment:
        """The resolved config this run was trained with."""
        path = self.path / CONFIG_FILE
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RunError(f"{path}: cannot read the run's config ({err})") from None
        return parse_experiment(raw, str(path))

    @property
    def status(self) -> str:
        """The recorded status, with ``crashed`` for a 'running' run whose process is gone."""
        status = self.meta.get("status", "unknown")
        if status == "running" and not _alive(self.meta):
            return "crashed"
        return status


def _alive(meta: dict[str, Any]) -> bool:
    if meta.get("host") == socket.gethostname() and isinstance(meta.get("pid"), int):
        try:
            os.kill(meta["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return time.time() - float(meta.get("heartbeat", 0)) < 10 * HEARTBEAT_S
    return time.time() - float(meta.get("heartbeat", 0)) < 3 * HEARTBEAT_S


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def create_run(runs_dir: Path, exp: Experiment, name: str | None = None) -> Run:
    """Make a new, uniquely named run directory and record the config and metadata.

    Two runs started in the same second with the same name get ``-2``, ``-3``... suffixes:
    ``mkdir`` is the atomic claim, so neither can overwrite the other.
    """
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{name or exp.name}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"{runs_dir}: cannot create the runs directory: {err.strerror}") from None
    for attempt in range(1, 1000):
        path = runs_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
        except OSError as err:
            raise RunError(f"{runs_dir}: cannot create a run directory: {err.strerror}") from None
    else:
        raise RunError(f"{runs_dir}: too many runs named {base}")
    write_atomic(path / CONFIG_FILE, dump_yaml(exp))
    run = Run(path, {})
    run.update(
        name=exp.name,
        status="created",
        created_at=utc_now(),
        seed=exp.train.seed,
        pid=os.getpid(),
        host=socket.gethostname(),
        git_commit=_git_commit(),
        versions={
            "mnistctl": __version__,
            "python": platform.python_version(),
            "numpy": _version("numpy"),
            "tensorflow": _version("tensorflow"),
        },
        machine={"platform": platform.platform(), "processor": cpu_model(), "cores": os.cpu_count()},
        command=" ".join(sys.argv),
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


CPUINFO = Path("/proc/cpuinfo")  # Linux only; elsewhere the lookups below fall back


def _cpuinfo(key: str) -> str | None:
    """The first value of ``key`` in CPUINFO, or None."""
    try:
        for line in CPUINFO.read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, for records of where a number was measured."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_has_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX); Linux only."""
    flags = (_cpuinfo("flags") or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{meta_path}: unreadable ({err})") from None
    if not isinstance(meta, dict):
        raise RunError(f"{meta_path}: expected a JSON object")
    return Run(path, meta)


def is_run_dir(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / CONFIG_FILE).is_file()


def find_runs(paths: list[Path]) -> list[Run]:
    """Runs named directly, or every run inside a runs directory, oldest first."""
    runs = []
    for path in paths:
        if is_run_dir(path):
            runs.append(load_run(path))
        elif path.is_dir():
            runs.extend(load_run(p) for p in sorted(path.iterdir()) if p.is_dir() and is_run_dir(p))
        else:
            raise RunError(f"{path}: no such run or runs directory")
    return runs


class RunRecorder(Hook):
    """Keeps run.json current: status, progress, best result, and a heartbeat."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._started = 0.0
        self._beat = 0.0

    def begin(self, ctx: TrainContext) -> None:
        self._started = time.time()
        self._beat = self._started
        self.run.update(status="running", started_at=utc_now(), pid=os.getpid(), steps_total=ctx.total_steps)

    def after_step(self, ctx: TrainContext) -> None:
        now = time.time()
        if now - self._beat > HEARTBEAT_S:  # checked every step; written rarely
            self._beat = now
            self.run.update(steps_done=ctx.step)

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        self._beat = time.time()
        self.run.update(
            steps_done=ctx.step,
            peak_rss_mb=peak_rss_mb(),
            best_step=ctx.best_step,
            best_test_accuracy=record.test_accuracy if improved else self.run.meta.get("best_test_accuracy"),
            selected_by="validation" if ctx.experiment.data.validation else "test",
            final=record.as_row(),
        )

    def end(self, ctx: TrainContext, status: str) -> None:
        steps = ctx.step - ctx.start_step
        self.run.update(
            status=status,
            ended_at=utc_now(),
            steps_done=ctx.step,
            wall_s=time.time() - self._started,
            timing={
                "train_s": round(ctx.steps_s, 3),
                "session_run_s": round(ctx.session_s, 3),
                # batch picking, feeding and hooks, as a share of the training steps' time
                "loop_overhead_fraction": round(1 - ctx.session_s / ctx.steps_s, 4) if ctx.steps_s else None,
                "images_per_s": round(steps * ctx.experiment.train.batch_size / ctx.steps_s, 1)
                if ctx.steps_s
                else None,
            },
        )
