"""The engine: one run as a Ray Tune trial, many of them side by side on Ray.

A trial (:mod:`mnistctl.many.trial`) is a job of :mod:`mnistctl.many.jobs`, trained by its
``run_job`` with one more hook that reports each evaluation to Tune. ``run_sweep`` runs a checked
:class:`mnistctl.many.sweep.Sweep`, whose values make each trial's job; ``run_on_ray`` runs a list
of jobs (``reproduce --max-concurrent``); both through one Tuner set-up (``_tuner``). Ray runs on
this machine by default, every process bound to 127.0.0.1 (``start_ray``); ``--address`` joins a
cluster. Nothing here is imported until a command trains on Ray.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistctl.config import dump_yaml
from mnistctl.files import to_json, write_atomic
from mnistctl.many.jobs import Job, OnRay
from mnistctl.many.sweep import (
    BASE_FILE,
    BEST_FILE,
    SWEEP_FILE,
    TUNE_DIR,
    Sweep,
    SweepError,
    dump_sweep,
    tune_space,
)
from mnistctl.many.trial import TrialPlan, train_trial, trial_dir_name
from mnistctl.many.trials import short_keys, short_value, write_trials
from mnistctl.run.directory import find_runs, load_run
from mnistctl.status import Status

CONNECT_TIMEOUT_S = 5.0


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
        # Token authentication on, as Ray 2.60 makes it for a new local cluster, but said
        # outright so that Ray does not print a warning about choosing it (the user may opt out).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
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


def _start(address: str | None, cpus: int, max_concurrent: int | None) -> int:
    """Ray started (or joined) with room for ``cpus`` per trial; how many trials run at once."""
    if address is None and cpus > (os.cpu_count() or 1):
        raise SweepError(
            f"resources.cpus_per_trial: {cpus} is more than the {os.cpu_count()} CPUs of this machine"
        )
    start_ray(address)  # first: it decides which addresses Ray listens on
    available = cluster_cpus()
    if cpus > available:
        where = "the cluster" if address else "this machine"
        raise SweepError(f"resources.cpus_per_trial: {cpus} is more than the {available} CPUs of {where}")
    return max_concurrent or max(1, available // cpus)


def _tuner(
    plan: TrialPlan,
    cpus: int,
    *,
    space: dict[str, Any],
    tune_path: Path,
    callback: Any,
    max_failures: int,
    restore: bool = False,
    **tune_config: Any,
) -> Any:
    """The one Tuner set-up: every trial is ``train_trial`` with ``plan`` on ``cpus`` cores, its
    state kept in ``tune_path``; a new search (``tune_config``: Tune's TuneConfig) or the one
    saved there continued (``restore``)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(train_trial, plan=plan), {"cpu": cpus})
    if restore:
        if not tune.Tuner.can_restore(str(tune_path)):
            raise SweepError(f"{tune_path.parent}: Ray Tune saved no state there yet; start the sweep again")
        return tune.Tuner.restore(
            str(tune_path), trainable, resume_unfinished=True, resume_errored=True, param_space=space
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            trial_dirname_creator=lambda trial: trial_dir_name(trial.trial_id), **tune_config
        ),
        run_config=tune.RunConfig(
            name=tune_path.name,
            storage_path=str(tune_path.parent),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
            callbacks=[callback],
        ),
    )


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

    Each trial is a job of :mod:`mnistctl.many.jobs` made from the sweep's values (its config a
    typed ``Experiment`` all the way), trained by the same ``run_job`` as every other driver's.
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
    concurrent = _start(address, cpus, max_concurrent or sweep.spec.max_concurrent)
    if not resume:
        sweep_dir.mkdir(parents=True)
        write_atomic(sweep_dir / BASE_FILE, dump_yaml(sweep.base))
        write_atomic(sweep_dir / SWEEP_FILE, dump_sweep(sweep))
    plan = TrialPlan(str(sweep_dir), cpus, str(data_dir) if data_dir else None, sweep=sweep)
    tune_path = sweep_dir / TUNE_DIR
    budget = sweep.spec.time_budget_minutes
    tuner = _tuner(
        plan,
        cpus,
        space=tune_space(sweep),
        tune_path=tune_path,
        callback=_progress(sweep, sweep_dir, quiet),
        max_failures=sweep.spec.max_failures,
        restore=resume,
        metric=sweep.spec.metric,
        mode="max",
        search_alg=_search_algorithm(sweep, concurrent),
        scheduler=_scheduler(sweep),
        num_samples=sweep.spec.samples,
        time_budget_s=budget * 60 if budget else None,
    )
    if not quiet:
        what = f"{sweep.trials} trials" + (" at most" if sweep.spec.scheduler else "")
        print(
            f"sweep {sweep.name}: {what}, {concurrent} at a time, {cpus} CPU each, in {sweep_dir}",
            file=sys.stderr,
        )
    started = time.time()
    tuner.fit()
    from ray import tune

    # Tune's own word on each trial: TERMINATED (finished, or stopped early by the scheduler),
    # ERROR (failed more often than max_failures), or not ended (the sweep was interrupted).
    statuses = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(tune_path)).trials}
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in statuses.values())
    _mark_ended(sweep_dir, statuses)
    trials = write_trials(sweep_dir)
    best = trials[0] if trials and trials[0].get(sweep.spec.metric) is not None else None
    if best is not None:
        write_atomic(sweep_dir / BEST_FILE, to_json(best, indent=2) + "\n")
    return SweepOutcome(sweep_dir, trials, best, interrupted, time.time() - started)


def run_on_ray(jobs: Sequence[Job], runs_dir: Path, how: OnRay) -> None:
    """Train ``jobs`` side by side on Ray, one trial each (``mnistctl.many.jobs.run_jobs`` with
    ``on_ray``): each in ``runs_dir / job.name``, through the same ``run_job`` as in turn."""
    runs_dir = runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    concurrent = _start(how.address, how.cpus_per_job, how.max_concurrent)
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    plan = TrialPlan(str(runs_dir), how.cpus_per_job, jobs={job.name: job for job in jobs})
    tuner = _tuner(
        plan,
        how.cpus_per_job,
        space={"job": tune.grid_search([job.name for job in jobs])},
        tune_path=runs_dir / ".tune" / f"{how.group}-{time.strftime('%Y%m%dT%H%M%S')}",
        callback=_job_progress(how.quiet),
        max_failures=2,
        search_alg=BasicVariantGenerator(max_concurrent=concurrent),
    )
    if not how.quiet:
        print(f"{len(jobs)} runs, {concurrent} at a time, {how.cpus_per_job} CPU each", file=sys.stderr)
    tuner.fit()


def _printer(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr; plain data, so Tune can pickle the callbacks that use it."""

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def _job_progress(quiet: bool) -> Any:
    from ray import tune

    log = _printer(quiet)

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


def _mark_ended(sweep_dir: Path, statuses: dict[str, str]) -> None:
    """Say in each trial's run.json how Tune left it, which the trial cannot tell: ``stopped``
    for one that Tune ended without error before its last step (a scheduler's decision), and
    ``interrupted`` for one still under way when the sweep was (Tune stops it as a scheduler
    would, or its worker dies with the driver). ``compare`` and ``--resume`` read them."""
    for run in find_runs([sweep_dir]):
        status = statuses.get(run.record.trial)
        if status in (None, "ERROR") or run.record.status.finished:
            continue
        deadline = time.time() + 10
        while run.status.claimed and time.time() < deadline:  # wait for the process to exit
            time.sleep(0.2)
            run = load_run(run.path)
        if run.record.status.finished:
            continue
        if status == "TERMINATED":
            run.update(status=Status.STOPPED)
        elif run.record.status is Status.STOPPED or run.status is Status.CRASHED:
            run.update(status=Status.INTERRUPTED)  # Tune stopped it because the sweep was


def _progress(sweep: Sweep, sweep_dir: Path, quiet: bool) -> Any:
    """A Tune callback that tells the user about trials and keeps trials.csv current.

    Made on demand so that this module imports without Ray (compare and plot read sweeps);
    Tune pickles it with the sweep's state, so it holds plain data and prints by itself."""
    from ray import tune

    space = list(sweep.space)
    labels = short_keys(space)

    log = _printer(quiet)

    class Progress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            values = ", ".join(f"{labels[k]}={short_value(trial.config.get(k))}" for k in space)
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
