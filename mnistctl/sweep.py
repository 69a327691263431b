"""Sweeps: one base config, a search space, many runs, searched and early-stopped by Ray Tune.

A sweep file names a base config, fixed overrides and a space over any key path ``--set``
accepts::

    base: configs/conv_dropout.yaml
    set: {train.steps: 3000, data.validation: 5000}
    space:
      schedule.lr0: {loguniform: [0.0005, 0.01]}
      model.layers[3].dropout: {choice: [0.0, 0.25, 0.5]}
      train.seed: {grid: [0, 1]}
    search: random                # grid | random | optuna
    samples: 12
    metric: validation_accuracy   # the test set never chooses (unless allow_test_metric)
    scheduler: {asha: {grace_steps: 500, reduction_factor: 3}}
    resources: {cpus_per_trial: 1}

The whole sweep is resolved and checked (every key path, every domain, every corner of the
space against the config schema) before Ray starts. Each trial is an ordinary run directory,
``run_experiment`` with one more hook that reports its evaluations to Tune; a trial that Tune
retries resumes its own run directory exactly. ``runs/<sweep>/`` holds::

    sweep.yaml   the resolved sweep;  base.yaml  the resolved base config
    trials.csv   one row per trial;   best.json  the best trial by the sweep's metric
    tune/        Ray Tune's experiment state (what ``--resume`` restores)
    trial-00000/ ...                  the trials' run directories

Ray runs on this machine by default, bound to 127.0.0.1 only; ``--address`` joins a cluster.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mnistctl.config import (
    ConfigError,
    Experiment,
    dump_yaml,
    flatten,
    load_config,
    parse_experiment,
    to_dict,
)
from mnistctl.config.overrides import read_mapping, set_path, split_key
from mnistctl.config.parsing import Invalid, kind, parse, shown, sub
from mnistctl.errors import MnistctlError
from mnistctl.files import write_atomic
from mnistctl.hooks import EvalRecord, Hook, TrainContext, best_row
from mnistctl.metrics import read_metrics
from mnistctl.runs import METRICS_FILE, Status, find_runs, is_run_dir

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base.yaml"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.json"
TUNE_DIR = "tune"
CONNECT_TIMEOUT_S = 5.0

Log = Callable[[str], None]


class SweepError(MnistctlError):
    """A sweep that cannot run as asked."""


# -- the sweep file -----------------------------------------------------------------------


@dataclass(frozen=True)
class AshaSpec:
    """Asynchronous successive halving: stop the worse trials early.

    Attributes:
        grace_steps: no trial is stopped before this many training steps.
        reduction_factor: at each rung, about one trial in this many goes on.
    """

    grace_steps: int = field(default=500, metadata={"ge": 1})
    reduction_factor: float = field(default=3.0, metadata={"gt": 1})


@dataclass(frozen=True)
class SchedulerSpec:
    """Early stopping (null: every trial trains to the end)."""

    asha: Optional[AshaSpec] = None


@dataclass(frozen=True)
class ResourcesSpec:
    """What each trial reserves.

    Attributes:
        cpus_per_trial: cores; the trial's TensorFlow uses this many threads.
    """

    cpus_per_trial: int = field(default=1, metadata={"ge": 1, "le": 1024})


@dataclass(frozen=True)
class SweepSpec:
    """A sweep file.

    Attributes:
        base: the config every trial starts from (relative to the current directory, or to
            the sweep file's own).
        name: the sweep's directory under the runs directory (default: the file's stem).
        description: one line for humans.
        set: fixed overrides, ``key.path: value``, applied to the base before the space.
        space: ``key.path: {domain: ...}`` with domain ``grid``, ``choice`` (lists of values),
            ``uniform``, ``loguniform`` or ``randint`` (``[low, high]``).
        search: ``grid`` (every combination), ``random`` (``samples`` draws; grid keys are
            crossed with them), or ``optuna`` (TPE through Ray Tune's Optuna integration).
        samples: draws for random and optuna; repetitions of the grid for grid.
        seed: seeds the search, so the same sweep file draws the same trials.
        metric: what chooses the best trial and drives early stopping: its best value over
            the trial's evaluations.
        allow_test_metric: let ``test_accuracy`` choose (tuning on the test set; say so).
        scheduler: early stopping.
        resources: per trial.
        max_concurrent: trials at once (default: as many as the cores allow).
        max_failures: how often a failed trial is retried (it resumes its run directory).
        time_budget_minutes: start no trial after this, and stop the running ones (null: none).
    """

    base: str = ""
    name: str = ""
    description: str = ""
    set: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    search: Literal["grid", "random", "optuna"] = "random"
    samples: int = field(default=1, metadata={"ge": 1, "le": 100000})
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**31})
    metric: Literal["validation_accuracy", "test_accuracy"] = "validation_accuracy"
    allow_test_metric: bool = False
    scheduler: Optional[SchedulerSpec] = None
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent: Optional[int] = field(default=None, metadata={"ge": 1})
    max_failures: int = field(default=2, metadata={"ge": 0, "le": 100})
    time_budget_minutes: Optional[float] = field(default=None, metadata={"gt": 0})


DOMAINS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass(frozen=True)
class Domain:
    """Where one key's values come from."""

    kind: str  # one of DOMAINS
    values: tuple  # grid and choice: the values; the others: (low, high)

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        return getattr(tune, self.kind)(*([list(self.values)] if self.kind == "choice" else self.values))

    @property
    def corners(self) -> list[Any]:
        """Values that, if each is valid in the config, make every value valid."""
        if self.kind == "randint":
            return [self.values[0], self.values[1] - 1]  # Tune's high is exclusive
        return list(self.values)

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}"


def parse_domain(value: Any, path: str) -> Domain:
    """``{loguniform: [0.0005, 0.01]}`` -> Domain, or Invalid naming the problem."""
    forms = "{grid: [...]}, {choice: [...]}, {uniform: [low, high]}, {loguniform: [low, high]}"
    forms += ", {randint: [low, high]}"
    if not isinstance(value, dict) or len(value) != 1:
        raise Invalid(path, f"expected one of {forms}, got {shown(value)}")
    ((name, values),) = value.items()
    if name not in DOMAINS:
        raise Invalid(
            sub(path, str(name)), f"unknown domain {shown(name)}; expected one of: {', '.join(DOMAINS)}"
        )
    where = sub(path, name)
    if not isinstance(values, list):
        raise Invalid(where, f"expected a list, got {kind(values)}")
    if name in ("grid", "choice"):
        if not values:
            raise Invalid(where, "expected at least one value, got none")
        return Domain(name, tuple(values))
    if len(values) != 2:
        raise Invalid(where, f"expected [low, high], got {len(values)} values")
    integral = name == "randint"
    for v in values:
        number = isinstance(v, int) if integral else isinstance(v, (int, float))
        if isinstance(v, bool) or not number or not math.isfinite(v):
            raise Invalid(where, f"expected {'integers' if integral else 'numbers'}, got {shown(v)}")
    low, high = values
    if low >= high:
        raise Invalid(where, f"expected low < high, got [{low}, {high}]")
    if name == "loguniform" and low <= 0:
        raise Invalid(where, f"expected 0 < low for a log scale, got {low}")
    return Domain(name, (low, high))


@dataclass(frozen=True)
class Sweep:
    """A sweep resolved and checked: everything a run of it needs."""

    spec: SweepSpec
    source: str  # the sweep file (or the one-liner), for messages
    base: Experiment  # the base config with ``set`` applied
    space: dict[str, Domain]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def trials(self) -> int | None:
        """How many trials the search makes (grid and random: known in advance)."""
        grid = math.prod(len(d.values) for d in self.space.values() if d.kind == "grid")
        return grid * self.spec.samples

    def experiment(self, params: dict[str, Any]) -> Experiment:
        """The config of the trial with these values of the space's keys."""
        return apply_values(self.base, params, self.source)


def apply_values(base: Experiment, values: dict[str, Any], source: str, name_keys: bool = True) -> Experiment:
    """``base`` with ``{key.path: value}`` applied and checked as a whole.

    Errors name ``source``, followed by the key when ``name_keys`` (``sweep.yaml: set.train.steps``).
    """
    raw = to_dict(base)
    for key, value in values.items():
        where = f"{source}.{key}" if name_keys else source
        set_path(raw, split_key(key, where), copy.deepcopy(value), where)
    return parse_experiment(raw, source)


def load_sweep(path: Path, overrides: tuple[str, ...] = (), name: str | None = None) -> Sweep:
    """Read and check a sweep file. ``overrides`` are ``--set`` for the base config."""
    raw = read_mapping(path)
    try:
        spec = parse(raw, SweepSpec)
    except Invalid as err:
        raise ConfigError(f"{path}: {err.path}: {err.message}") from None
    if not spec.base:
        raise ConfigError(f"{path}: base: missing; name the config every trial starts from")
    base_path = Path(spec.base)
    if not base_path.is_absolute() and not base_path.exists() and (path.parent / base_path).exists():
        base_path = path.parent / base_path
    return resolve_sweep(spec, base_path, str(path), overrides, name or spec.name or path.stem)


def grid_sweep(
    config: Path, grids: tuple[str, ...], overrides: tuple[str, ...], log: Log, name: str | None = None
) -> Sweep:
    """The one-liner: ``sweep CONFIG --grid key=v1,v2 ...``, every combination once."""
    from mnistctl.config.overrides import parse_value

    space = {}
    for expression in grids:
        key, sep, text = expression.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {expression}: expected key.path=value,value,...")
        space[key.strip()] = {"grid": [parse_value(v, f"--grid {expression}") for v in text.split(",")]}
    if not space:
        raise ConfigError(
            f"{config}: not a sweep file (no base:); give --grid key=v1,v2 to sweep this config"
        )
    base = load_config(config, overrides)
    if base.data.validation is None:
        held = min(5000, (base.data.train_size or 60000) // 10)
        log(f"holding out the last {held:,} training images for validation: the test set never chooses")
        overrides = (*overrides, f"data.validation={held}")
    spec = SweepSpec(base=str(config), space=space, search="grid")
    return resolve_sweep(spec, config, "--grid", overrides, name or f"{base.name}-grid")


def resolve_sweep(
    spec: SweepSpec, base_path: Path, source: str, overrides: tuple[str, ...], name: str
) -> Sweep:
    """Check everything about a sweep that can be checked before a trial runs."""
    from mnistctl.config import is_valid_name

    base = load_config(base_path, overrides)
    if spec.set:
        base = apply_values(base, spec.set, f"{source}: set")
    space = {}
    for key, value in spec.space.items():
        where = sub("space", key)
        try:
            split_key(key, f"{source}: {where}")
            space[key] = parse_domain(value, where)
        except Invalid as err:
            raise ConfigError(f"{source}: {err.path}: {err.message}") from None
    if not space:
        raise ConfigError(f"{source}: space: empty; name at least one key to vary")
    for key, domain in space.items():  # each value that bounds the domain must make a valid config
        for value in domain.corners:
            exp = apply_values(base, {key: value}, f"{source}: space.{key}={value!r}", name_keys=False)
            _check_metric(spec, exp, source)
    _check_search(spec, space, source)
    if not is_valid_name(name):
        from mnistctl.config import NAME_RULE

        raise ConfigError(f"{source}: name: expected {NAME_RULE}, got {name!r}")
    spec = SweepSpec(**{**spec.__dict__, "name": name})
    return Sweep(spec, source, base, space)


def _check_metric(spec: SweepSpec, exp: Experiment, source: str) -> None:
    if spec.metric == "test_accuracy" and not spec.allow_test_metric:
        raise ConfigError(
            f"{source}: metric: test_accuracy would let the test set choose the best trial; hold out "
            "images (data.validation) and use validation_accuracy, or set allow_test_metric: true"
        )
    if spec.metric == "validation_accuracy" and not exp.data.validation:
        raise ConfigError(
            f"{source}: metric: validation_accuracy needs images held out for validation; "
            "add data.validation (e.g. 5000) to set:"
        )


def _check_search(spec: SweepSpec, space: dict[str, Domain], source: str) -> None:
    kinds = {key: d.kind for key, d in space.items()}
    if spec.search == "grid":
        sampled = [k for k, v in kinds.items() if v not in ("grid", "choice")]
        if sampled:
            raise ConfigError(
                f"{source}: search: grid needs grid or choice values; "
                f"space.{sampled[0]} is {kinds[sampled[0]]}"
            )
    if spec.search == "optuna":
        grids = [k for k, v in kinds.items() if v == "grid"]
        if grids:
            raise ConfigError(
                f"{source}: search: optuna draws every value; space.{grids[0]} is a grid: use choice instead"
            )


def tune_space(sweep: Sweep) -> dict[str, Any]:
    """The search space in Ray Tune's terms (grid search turns choice into grid)."""
    domains = sweep.space
    if sweep.spec.search == "grid":
        domains = {k: Domain("grid", d.values) for k, d in domains.items()}
    return {key: d.to_tune() for key, d in domains.items()}


def dump_sweep(sweep: Sweep) -> str:
    """The resolved sweep file, runnable again from the sweep directory (base: base.yaml)."""
    data = to_dict(sweep.spec)
    data.update(base=BASE_FILE, set={})
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def read_sweep_dir(sweep_dir: Path) -> Sweep:
    """The sweep a sweep directory was started with."""
    if not (sweep_dir / SWEEP_FILE).is_file() or not (sweep_dir / BASE_FILE).is_file():
        raise SweepError(f"{sweep_dir}: not a sweep directory (no {SWEEP_FILE} and {BASE_FILE})")
    raw = read_mapping(sweep_dir / SWEEP_FILE)
    try:
        spec = parse(raw, SweepSpec)
    except Invalid as err:
        raise ConfigError(f"{sweep_dir / SWEEP_FILE}: {err.path}: {err.message}") from None
    return resolve_sweep(spec, sweep_dir / BASE_FILE, str(sweep_dir / SWEEP_FILE), (), spec.name)


def is_sweep_dir(path: Path) -> bool:
    return (path / SWEEP_FILE).is_file() and (path / BASE_FILE).is_file()


def ranking_column(sweep_dir: Path) -> str:
    """The ``compare`` column that ranks a sweep's trials: its metric's best value."""
    metric = read_sweep_dir(sweep_dir).spec.metric
    return "best_validation_accuracy" if metric == "validation_accuracy" else "max_test_accuracy"


# -- one trial, inside a Ray worker --------------------------------------------------------


def trial_dir_name(trial_id: str) -> str:
    """``4f3a2_00003`` -> ``trial-00003``: stable across a sweep's resumes and retries."""
    return f"trial-{trial_id.rsplit('_', 1)[-1]}"


class TuneReporter(Hook):
    """Reports every evaluation to Ray Tune; ends the run as ``stopped`` when Tune says stop."""

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        values = {
            k: v for k, v in record.as_row().items() if isinstance(v, (int, float)) and not math.isnan(v)
        }
        metrics = {
            k: values[k]
            for k in ("step", "train_accuracy", "test_accuracy", "validation_accuracy")
            if k in values
        }
        try:
            self.report(metrics)
        except SystemExit:  # Ray's way of telling a training thread that Tune stopped the trial
            ctx.stop = Status.STOPPED


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs, shipped to the Ray workers (plain data only)."""

    sweep_dir: str
    sweep_name: str
    base: dict[str, Any]
    source: str
    threads: int
    data_dir: str | None = None
    jobs: dict[str, dict[str, Any]] | None = None  # run_jobs: run directory name -> experiment

    def experiment(self, params: dict[str, Any]) -> Experiment:
        if self.jobs is not None:
            return parse_experiment(copy.deepcopy(self.jobs[params["job"]]), params["job"])
        return apply_values(parse_experiment(copy.deepcopy(self.base), self.source), params, self.source)

    def run_name(self, params: dict[str, Any], trial_id: str) -> str:
        return params["job"] if self.jobs is not None else trial_dir_name(trial_id)


def train_trial(params: dict[str, Any], plan: TrialPlan) -> None:
    """One trial: a new run directory, or the same one resumed when Tune retries the trial."""
    import ray
    from ray import tune

    from mnistctl.experiment import resume_experiment, run_experiment
    from mnistctl.runs import load_run

    trial_id = tune.get_context().get_trial_id()
    name = plan.run_name(params, trial_id)
    run_dir = Path(plan.sweep_dir) / name
    common = dict(
        extra_hooks=[TuneReporter(tune.report)],
        threads=plan.threads,
        record={"sweep": plan.sweep_name, "trial": trial_id, "node": ray.get_runtime_context().get_node_id()},
        data_dir=Path(plan.data_dir) if plan.data_dir else None,
    )
    if is_run_dir(run_dir):
        run = load_run(run_dir)
        if run.record.status.finished:  # finished before the sweep was stopped: report, and done
            rows = read_metrics(run_dir / METRICS_FILE)
            if rows:
                tune.report({k: v for k, v in rows[-1].items() if not math.isnan(v)})
            return
        resume_experiment(run_dir, reclaim=True, **common)
    else:
        run_experiment(
            plan.experiment(params), runs_dir=Path(plan.sweep_dir), name=name, exact_name=True, **common
        )


# -- the driver ----------------------------------------------------------------------------


def check_address(address: str) -> None:
    """A cluster address that answers, or one line saying it does not (within seconds)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"--address {address}: expected HOST:PORT of a Ray cluster's head (e.g. 127.0.0.1:6379)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise SweepError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
            "start one with 'ray start --head --node-ip-address=127.0.0.1', or leave --address out"
        ) from None


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address``, or start Ray on this machine bound to 127.0.0.1 only.

    Call it before anything else imports Ray: Ray decides at import whether a machine-local Ray
    listens on the machine's network address (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER).
    """
    import logging

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the sweep prints its own progress
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if address is not None:
        check_address(address)  # before importing Ray: an unreachable address answers at once
    else:
        # Without this, Ray 2.60 binds its services to the machine's network address (and some
        # to every address) even when told 127.0.0.1; with it, every Ray process of a local
        # sweep, all started from here and so inheriting it, listens on loopback only.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return
    if address is not None:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return
    if ray_constants.ENABLE_RAY_CLUSTER:  # Ray was imported before the variable was set
        raise SweepError("Ray was imported before mnistctl could keep it on 127.0.0.1; start the sweep first")
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        logging_level=logging.WARNING,
    )


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


@dataclass
class SweepOutcome:
    """How a sweep (or its latest part) ended."""

    sweep_dir: Path
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    interrupted: bool
    wall_s: float


def run_sweep(
    sweep: Sweep,
    *,
    runs_dir: Path | None = None,
    sweep_dir: Path | None = None,
    address: str | None = None,
    max_concurrent: int | None = None,
    data_dir: Path | None = None,
    quiet: bool = False,
) -> SweepOutcome:
    """Run a sweep on Ray Tune: new under ``runs_dir``, or continued in ``sweep_dir``.

    Progress goes to stderr, a line per trial started and ended (none with ``quiet``).

    Raises:
        SweepError: the sweep directory exists already (new) or is not one (resume), the
            cluster is unreachable, or a trial asks for more cores than it has.
    """
    resume = sweep_dir is not None
    if sweep_dir is None:
        sweep_dir = (runs_dir or Path("runs")) / sweep.name
        if sweep_dir.exists():
            raise SweepError(
                f"{sweep_dir}: exists already; continue it with --resume {sweep_dir}, or --name another"
            )
    sweep_dir = sweep_dir.resolve()
    cpus = sweep.spec.resources.cpus_per_trial
    if address is None and cpus > (os.cpu_count() or 1):
        raise SweepError(
            f"resources.cpus_per_trial: {cpus} is more than the {os.cpu_count()} CPUs of this machine"
        )
    start_ray(address)  # first: it decides which addresses Ray listens on
    from ray import tune

    available = cluster_cpus()
    if cpus > available:
        where = "the cluster" if address else "this machine"
        raise SweepError(f"resources.cpus_per_trial: {cpus} is more than the {available} CPUs of {where}")
    concurrent = max_concurrent or sweep.spec.max_concurrent or max(1, available // cpus)
    if not resume:
        sweep_dir.mkdir(parents=True)
        write_atomic(sweep_dir / BASE_FILE, dump_yaml(sweep.base))
        write_atomic(sweep_dir / SWEEP_FILE, dump_sweep(sweep))
    plan = TrialPlan(str(sweep_dir), sweep.name, to_dict(sweep.base), str(sweep_dir / BASE_FILE), cpus,
                     str(data_dir) if data_dir else None)  # fmt: skip
    trainable = tune.with_resources(tune.with_parameters(train_trial, plan=plan), {"cpu": cpus})
    progress = _progress(sweep, sweep_dir, quiet)
    started = time.time()
    tune_path = sweep_dir / TUNE_DIR
    if resume:
        if not tune.Tuner.can_restore(str(tune_path)):
            raise SweepError(f"{sweep_dir}: Ray Tune saved no state there yet; start the sweep again")
        tuner = tune.Tuner.restore(
            str(tune_path),
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=tune_space(sweep),
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.spec.metric,
                mode="max",
                search_alg=_search_algorithm(sweep, concurrent),
                scheduler=_scheduler(sweep),
                num_samples=sweep.spec.samples,
                time_budget_s=sweep.spec.time_budget_minutes * 60 if sweep.spec.time_budget_minutes else None,
                trial_dirname_creator=lambda trial: trial_dir_name(trial.trial_id),
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=str(sweep_dir),
                failure_config=tune.FailureConfig(max_failures=sweep.spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
                callbacks=[progress],
            ),
        )
    if not quiet:
        what = f"{sweep.trials} trials" + (" at most" if sweep.spec.scheduler else "")
        print(
            f"sweep {sweep.name}: {what}, {concurrent} at a time, {cpus} CPU each, in {sweep_dir}",
            file=sys.stderr,
        )
    tuner.fit()
    # Tune's own word on each trial: TERMINATED (finished, or stopped early by the scheduler),
    # ERROR (failed more often than max_failures), or not ended (the sweep was interrupted).
    statuses = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(tune_path)).trials}
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    _mark_stopped(sweep_dir, {trial for trial, status in statuses.items() if status == "TERMINATED"})
    trials = write_trials(sweep_dir)
    best = trials[0] if trials and trials[0].get(sweep.spec.metric) is not None else None
    if best is not None:
        write_atomic(sweep_dir / BEST_FILE, json.dumps(best, indent=2) + "\n")
    return SweepOutcome(sweep_dir, trials, best, interrupted, time.time() - started)


def run_jobs(
    jobs: dict[str, Experiment],
    *,
    runs_dir: Path,
    address: str | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: int = 1,
    group: str = "jobs",
    quiet: bool = False,
) -> list[Path]:
    """Train named experiments side by side on Ray (``reproduce --max-concurrent``): each in
    ``runs_dir/<name>``, resumed in place when it is there already (unless it is finished).

    Returns:
        The run directories, in the order of ``jobs``; their records say how each ended.
    """
    runs_dir = runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    start_ray(address)  # first: it decides which addresses Ray listens on
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    available = cluster_cpus()
    if cpus_per_trial > available:
        raise SweepError(f"{cpus_per_trial} CPUs per run is more than the {available} CPUs there are")
    concurrent = max_concurrent or max(1, available // cpus_per_trial)
    plan = TrialPlan(
        str(runs_dir), group, {}, "", cpus_per_trial, jobs={n: to_dict(e) for n, e in jobs.items()}
    )
    trainable = tune.with_resources(tune.with_parameters(train_trial, plan=plan), {"cpu": cpus_per_trial})
    stamp = time.strftime("%Y%m%dT%H%M%S")
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(list(jobs))},
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(max_concurrent=concurrent),
            trial_dirname_creator=lambda trial: trial_dir_name(trial.trial_id),
        ),
        run_config=tune.RunConfig(
            name=f"{group}-{stamp}",
            storage_path=str(runs_dir / ".tune"),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,
            callbacks=[_job_progress(quiet)],
        ),
    )
    if not quiet:
        print(f"{len(jobs)} runs, {concurrent} at a time, {cpus_per_trial} CPU each", file=sys.stderr)
    tuner.fit()
    return [runs_dir / name for name in jobs]


def _job_progress(quiet: bool) -> Any:
    from ray import tune

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    class Progress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            log(f"{trial.config['job']}: started")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            log(f"{trial.config['job']}: ended at step {result.get('step', 0)}, test accuracy "
                f"{result.get('test_accuracy', float('nan')):.4f}")  # fmt: skip

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"{trial.config['job']}: failed")

    return Progress()


def _search_algorithm(sweep: Sweep, concurrent: int) -> Any:
    from ray.tune.search import BasicVariantGenerator

    if sweep.spec.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=sweep.spec.seed), max_concurrent=concurrent)
    return BasicVariantGenerator(max_concurrent=concurrent, random_state=sweep.spec.seed)


def _scheduler(sweep: Sweep) -> Any:
    asha = sweep.spec.scheduler.asha if sweep.spec.scheduler else None
    if asha is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr="step",
        max_t=sweep.base.train.steps,
        grace_period=asha.grace_steps,
        reduction_factor=asha.reduction_factor,
    )


def _mark_stopped(sweep_dir: Path, finished: set[str]) -> None:
    """Trials that Tune ended without error before their last step were stopped early (their
    process is gone, so their records may still claim it): say so, for compare and resume."""
    for run in find_runs([sweep_dir]):
        record = run.record
        if record.trial not in finished or record.status.finished:
            continue
        deadline = time.time() + 10
        while run.status.claimed and time.time() < deadline:  # wait for the process to exit
            time.sleep(0.2)
            run = type(run)(run.path, _reload(run).record)
        if not run.record.status.finished:
            run.update(status=Status.STOPPED)


def _reload(run: Any) -> Any:
    from mnistctl.runs import load_run

    return load_run(run.path)


def trial_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial from the run directories alone, best first by the sweep's metric."""
    sweep = read_sweep_dir(sweep_dir)
    metric = sweep.spec.metric
    rows = []
    for run in find_runs([sweep_dir]):
        metrics = read_metrics(run.path / METRICS_FILE)
        best = best_row(metrics, metric)
        config = flatten(to_dict(run.experiment()))
        record = run.record
        row = {"trial": run.name}
        row.update({key: config.get(key) for key in sweep.space})
        row.update(
            status=str(run.status),
            steps=int(metrics[-1]["step"]) if metrics else record.steps_done,
            **{metric: best[metric] if best else None},
            best_step=int(best["step"]) if best else None,
            final_test_accuracy=metrics[-1]["test_accuracy"] if metrics else None,
            wall_s=round(record.wall_s, 1) if record.wall_s is not None else None,
            node=record.node,
            run=str(run.path),
        )
        rows.append(row)
    return sorted(rows, key=lambda r: -math.inf if r[metric] is None else -r[metric])


def write_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = trial_rows(sweep_dir)
    if rows:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(sweep_dir / TRIALS_FILE, out.getvalue())
    return rows


def _progress(sweep: Sweep, sweep_dir: Path, quiet: bool) -> Any:
    """A Tune callback that tells the user about trials and keeps trials.csv current.

    Made on demand so that this module imports without Ray (compare and plot read sweeps);
    Tune pickles it with the sweep's state, so it holds plain data and prints by itself."""
    from ray import tune

    space = list(sweep.space)
    labels = short_keys(space)

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    class Progress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            values = ", ".join(f"{labels[k]}={_short(trial.config.get(k))}" for k in space)
            log(f"{trial_dir_name(trial.trial_id)} started: {values}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            value = result.get(sweep.spec.metric)
            shown = f"{sweep.spec.metric} {value:.4f}" if isinstance(value, float) else "no result"
            log(f"{trial_dir_name(trial.trial_id)} ended at step {result.get('step', 0)}: {shown}")
            write_trials(sweep_dir)

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"{trial_dir_name(trial.trial_id)} failed (see {sweep_dir / trial_dir_name(trial.trial_id)})")

    return Progress()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Readable labels for key paths: the last name (``lr0``), or the last two where the last
    name is shared (``layers[0].filters``, ``layers[1].filters``)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {
        key: name if last.count(name) == 1 else ".".join(key.split(".")[-2:])
        for key, name in zip(keys, last, strict=True)
    }
