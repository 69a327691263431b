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

The whole sweep is resolved and checked here (every key path, every domain, every corner of
the space against the config schema) before Ray starts; :mod:`mnistctl.many.engine` runs it. Each
trial is an ordinary run directory. ``runs/<sweep>/`` holds::

    sweep.yaml   the resolved sweep;  base.yaml  the resolved base config
    trials.csv   one row per trial;   best.json  the best trial by the sweep's metric
    tune/        Ray Tune's experiment state (what ``--resume`` restores)
    trial-00000/ ...                  the trials' run directories

Nothing here imports Ray: ``compare`` and ``plot`` read sweep directories quickly.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from mnistctl.config import (
    ConfigError,
    Experiment,
    load_config,
    parse_experiment,
    to_dict,
)
from mnistctl.config.overrides import read_mapping, set_path, split_key
from mnistctl.config.parsing import Invalid, kind, parse, shown, sub
from mnistctl.config.shipped import resolve_config
from mnistctl.errors import MnistctlError

SWEEP_FILE = "sweep.yaml"
BASE_FILE = "base.yaml"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.json"
TUNE_DIR = "tune"

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
        base: the config every trial starts from: a shipped config's name (``conv_dropout``),
            or a path (relative to the current directory, or to the sweep file's own).
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
    time_budget_minutes: Optional[float] = field(default=None, metadata={"ge": 0.1})  # six seconds at least


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
        if self.kind in ("uniform", "loguniform"):  # and a value inside: a draw is not integral
            low, high = self.values
            return [low, high, float(f"{low + (high - low) * 0.381966:.6g}")]
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
        crossed = ("grid", "choice") if self.spec.search == "grid" else ("grid",)  # grid: choice is one
        grid = math.prod(len(d.values) for d in self.space.values() if d.kind in crossed)
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


def is_sweep_file(path: Path) -> bool:
    """A sweep file names the config its trials start from (``base:``); a config does not."""
    return "base" in read_mapping(resolve_config(path, sweeps=True))


def load_sweep(path: Path, overrides: tuple[str, ...] = (), name: str | None = None) -> Sweep:
    """Read and check a sweep file (a path, or a shipped one's name). ``overrides`` are
    ``--set`` for the base config, which is a path (relative to the current directory or to the
    sweep file) or a shipped config's name."""
    path = resolve_config(path, sweeps=True)
    raw = read_mapping(path)
    try:
        spec = parse(raw, SweepSpec)
    except Invalid as err:
        raise ConfigError(f"{path}: {err.path}: {err.message}") from None
    if not spec.base:
        raise ConfigError(f"{path}: base: missing; name the config every trial starts from")
    base_path = resolve_config(spec.base, relative_to=path.parent)
    if "base" in read_mapping(base_path):
        raise ConfigError(
            f"{path}: base: {spec.base} is a sweep file; base names the config every trial starts from"
        )
    return resolve_sweep(spec, base_path, str(path), overrides, name or spec.name or path.stem)


def grid_sweep(
    config: Path, grids: tuple[str, ...], overrides: tuple[str, ...], log: Log, name: str | None = None
) -> Sweep:
    """The one-liner: ``sweep CONFIG --grid key=v1,v2 ...``, every combination once."""
    config = resolve_config(config)
    from mnistctl.config.overrides import parse_value

    space = {}
    for expression in grids:
        key, sep, text = expression.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ConfigError(f"--grid {expression}: expected key.path=value,value,...")
        if key.strip() in space:
            raise ConfigError(
                f"--grid {expression}: {key.strip()} is given twice; list every value in one --grid"
            )
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
    """Check everything about a sweep that can be checked before a trial runs.

    The base config gets the file's ``set`` first, then the command line's ``--set``, which wins.
    """
    from mnistctl.config import apply_to, is_valid_name

    base = load_config(base_path)
    if spec.set:
        base = apply_values(base, spec.set, f"{source}: set")
    if overrides:
        base = apply_to(base, overrides, str(base_path))
    _check_asha(spec, base, source)
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
    for corner in _corners(space):  # the values that bound the space must make valid configs
        where = f"{source}: space" + ("." if len(corner) == 1 else ": ")
        where += ", ".join(f"{k}={shown(v)}" for k, v in corner.items())
        try:
            _check_metric(spec, apply_values(base, corner, where, name_keys=False), source)
        except ConfigError as err:
            drawn = [k for k, v in corner.items() if space[k].kind in ("uniform", "loguniform")]
            if len(corner) == 1 and drawn and "expected an integer" in str(err):
                raise ConfigError(f"{err}; {space[drawn[0]].kind} draws fractions: use randint") from None
            raise
    _check_search(spec, space, source)
    if not is_valid_name(name):
        from mnistctl.config import NAME_RULE

        raise ConfigError(f"{source}: name: expected {NAME_RULE}, got {name!r}")
    spec = SweepSpec(**{**spec.__dict__, "name": name})
    return Sweep(spec, source, base, space)


MAX_CORNERS = 256  # combinations of bounds checked together; past it, one key at a time
MAX_RUNGS = 64  # ASHA's rungs between grace_steps and train.steps


def _corners(space: dict[str, Domain]) -> list[dict[str, Any]]:
    """Each key's bounds alone (so a bad value is named by its key), then every combination of
    them when there are few enough: a combination can be invalid where each value alone is
    not (a hold-out and a batch too large together)."""
    keys = list(space)
    alone = [{key: value} for key in keys for value in space[key].corners]
    if len(keys) < 2 or math.prod(len(space[k].corners) for k in keys) > MAX_CORNERS:
        return alone
    return alone + [
        dict(zip(keys, v, strict=True)) for v in itertools.product(*(space[k].corners for k in keys))
    ]


def _check_asha(spec: SweepSpec, base: Experiment, source: str) -> None:
    asha = spec.scheduler.asha if spec.scheduler else None
    if asha is None:
        return
    where = f"{source}: scheduler.asha"
    if asha.grace_steps >= base.train.steps:
        raise ConfigError(
            f"{where}.grace_steps: {asha.grace_steps} is not below train.steps "
            f"({base.train.steps}): no trial could be stopped early"
        )
    rungs = math.log(base.train.steps / asha.grace_steps) / math.log(asha.reduction_factor)
    if rungs > MAX_RUNGS:
        raise ConfigError(
            f"{where}.reduction_factor: {asha.reduction_factor} makes {rungs:,.0f} rungs between grace_steps "
            f"and train.steps (at most {MAX_RUNGS}); use 2 to 4"
        )


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
