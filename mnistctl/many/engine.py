"""The engine: one run as a Ray Tune trial, many of them side by side on Ray.

A trial (:mod:`mnistctl.many.trial`) is a job of :mod:`mnistctl.many.jobs`, trained by its
``run_job`` with one more hook that reports each evaluation to Tune. ``run_sweep`` runs a checked
:class:`mnistctl.many.sweep.Sweep`, whose values make each trial's job; ``run_on_ray`` runs a list
of jobs (``reproduce --max-concurrent``); both through one Tuner set-up (``_tuner``). Ray runs on
this machine by default, every process bound to 127.0.0.1 (``start_ray``); ``--address`` joins a
cluster. Nothing here is imported until a command trains on Ray.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistctl.files import to_json, write_atomic
from mnistctl.many.jobs import Job, OnRay
from mnistctl.many.ray_session import cluster_cpus, full_disk_said, start_ray, stop_for_full_disk
from mnistctl.many.sweep import (
    BEST_FILE,
    TUNE_DIR,
    Sweep,
    SweepError,
    tune_space,
)
from mnistctl.many.sweep_dir import check_unchanged, make_sweep_dir, owning, set_aside, why_restart
from mnistctl.many.trial import TrialPlan, train_trial, trial_dir_name
from mnistctl.many.trials import short_keys, short_value, write_trials
from mnistctl.run.directory import is_run_dir, load_run
from mnistctl.run.listing import find_runs
from mnistctl.status import Status


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
        return tune.Tuner.restore(
            str(tune_path), trainable, resume_unfinished=True, resume_errored=True, param_space=space
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            trial_dirname_creator=lambda trial: trial_dir_name(trial.trial_id),
            # A worker stays up from one trial to the next (TensorFlow imported and the data
            # read once: a second's trial costs a second, not fifteen), unless a scheduler
            # stops trials early: Tune's reuse of a stopped trial's worker fails here ("Could
            # not re-use actor") and the sweep then waits for ever (Ray 2.60).
            reuse_actors=tune_config.get("scheduler") is None,
            **tune_config,
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
    failed: list[str] = field(default_factory=list)  # trials that failed after their retries


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
    The sweep directory's life (made whole, locked while this runs, continued from any state)
    is :mod:`mnistctl.many.sweep_dir`'s. Progress goes to stderr, a line per trial started and
    ended (none with ``quiet``); Ray's own lines go to ``ray.log`` in the sweep directory.

    Raises:
        SweepError: the sweep directory exists already (new), is another driver's, or cannot be
            continued (resume); the cluster is unreachable, or a trial asks for more cores than it has.
    """
    from mnistctl.many.ray_session import fitting, signals_held

    resume = sweep_dir is not None
    with contextlib.ExitStack() as owned:
        if resume:  # refused at once, before Ray starts, if another driver owns it
            sweep_dir = sweep_dir.absolute()
            owned.enter_context(owning(sweep_dir))
            check_unchanged(sweep_dir)
        elif (where := (runs_dir or Path("runs")) / sweep.name).exists():
            raise SweepError(f"{where}: exists already; continue it with --resume {where}, or --name another")
        cpus = sweep.spec.resources.cpus_per_trial
        concurrent = _start(address, cpus, max_concurrent or sweep.spec.max_concurrent)
        if not resume:
            sweep_dir = make_sweep_dir(sweep, runs_dir or Path("runs"))
        assert sweep_dir is not None
        try:  # Ctrl-C before the search begins: the sweep directory is there, to be continued
            if not resume:
                owned.enter_context(owning(sweep_dir))
            from ray import tune

            tuner = _ready_tuner(sweep, sweep_dir, resume, concurrent, data_dir, quiet)
        except KeyboardInterrupt:
            return SweepOutcome(sweep_dir, [], None, interrupted=True, wall_s=0.0)
        tune_path = sweep_dir / TUNE_DIR
        started = time.time()
        with full_disk_said(sweep_dir, f"continue with: mnistctl sweep --resume {sweep_dir}"), signals_held():
            with fitting(sweep_dir) as fit:
                tuner.fit()
            # Tune's own word on each trial: TERMINATED (finished, or stopped early by the
            # scheduler), ERROR (failed more often than max_failures), or not ended (interrupted).
            statuses = {t.trial_id: t.status for t in tune.ExperimentAnalysis(str(tune_path)).trials}
            interrupted = fit.interrupted or any(s not in ("TERMINATED", "ERROR") for s in statuses.values())
            _mark_ended(sweep_dir, statuses, interrupted)
            trials = write_trials(sweep_dir)
            best = trials[0] if trials and trials[0].get(sweep.spec.metric) is not None else None
            if best is not None:
                write_atomic(sweep_dir / BEST_FILE, to_json(best, indent=2) + "\n")
        failed = sorted(trial_dir_name(t) for t, status in statuses.items() if status == "ERROR")
        return SweepOutcome(sweep_dir, trials, best, interrupted, time.time() - started, failed)


def _ready_tuner(
    sweep: Sweep, sweep_dir: Path, resume: bool, concurrent: int, data_dir: Path | None, quiet: bool
) -> Any:
    """Tune's Tuner for the sweep: restored from its saved state, or new (a new sweep, or one
    whose state is missing, damaged or from another path: searched again in place)."""
    from ray import tune

    tune_path = sweep_dir / TUNE_DIR
    restart = why_restart(sweep_dir, tune.Tuner.can_restore(str(tune_path))) if resume else None
    tuner = None
    if resume and restart is None:
        try:
            tuner = _sweep_tuner(sweep, sweep_dir, concurrent, data_dir, quiet, restore=True)
        except Exception as err:  # a damaged tuner.pkl or experiment state: Ray's own error
            restart = f"Ray Tune's saved state is damaged ({type(err).__name__})"
    if restart is not None:
        if sweep.spec.search == "optuna":
            raise SweepError(
                f"{sweep_dir}: cannot be continued: {restart}, and optuna's suggestions cannot be "
                "replayed without it; start the sweep again under another --name"
            )
        set_aside(sweep_dir)
        if not quiet:
            print(f"{sweep_dir}: {restart}; searching again from the start: finished trials are kept "
                  "and reported, unfinished ones resume", file=sys.stderr)  # fmt: skip
    if tuner is None:
        tuner = _sweep_tuner(sweep, sweep_dir, concurrent, data_dir, quiet, restore=False)
    if not quiet:
        cpus = sweep.spec.resources.cpus_per_trial
        what = f"{sweep.trials} trials" + (" at most" if sweep.spec.scheduler else "")
        print(f"sweep {sweep.name}: {what}, {concurrent} at a time, {cpus} CPU each, in {sweep_dir}",
              file=sys.stderr)  # fmt: skip
    return tuner


def _sweep_tuner(
    sweep: Sweep, sweep_dir: Path, concurrent: int, data_dir: Path | None, quiet: bool, restore: bool
) -> Any:
    cpus = sweep.spec.resources.cpus_per_trial
    plan = TrialPlan(str(sweep_dir), cpus, str(data_dir) if data_dir else None, sweep=sweep)
    budget = sweep.spec.time_budget_minutes
    return _tuner(
        plan,
        cpus,
        space=tune_space(sweep),
        tune_path=sweep_dir / TUNE_DIR,
        callback=_progress(sweep, sweep_dir, quiet),
        max_failures=sweep.spec.max_failures,
        restore=restore,
        metric=sweep.spec.metric,
        mode="max",
        search_alg=_search_algorithm(sweep, concurrent),
        scheduler=_scheduler(sweep),
        num_samples=sweep.spec.samples,
        time_budget_s=budget * 60 if budget else None,
    )


def run_on_ray(jobs: Sequence[Job], runs_dir: Path, how: OnRay) -> None:
    """Train ``jobs`` side by side on Ray, one trial each (``mnistctl.many.jobs.run_jobs`` with
    ``on_ray``): each in ``runs_dir / job.name``, through the same ``run_job`` as in turn."""
    runs_dir = runs_dir.resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    concurrent = _start(how.address, how.cpus_per_job, how.max_concurrent)
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from mnistctl.many.ray_session import fitting, signals_held

    plan = TrialPlan(str(runs_dir), how.cpus_per_job, jobs={job.name: job for job in jobs})
    tune_path = runs_dir / ".tune" / f"{how.group}-{time.strftime('%Y%m%dT%H%M%S')}"
    tuner = _tuner(
        plan,
        how.cpus_per_job,
        space={"job": tune.grid_search([job.name for job in jobs])},
        tune_path=tune_path,
        callback=_job_progress(how.quiet),
        max_failures=2,
        search_alg=BasicVariantGenerator(max_concurrent=concurrent),
    )
    if not how.quiet:
        print(f"{len(jobs)} runs, {concurrent} at a time, {how.cpus_per_job} CPU each", file=sys.stderr)
    tune_path.mkdir(parents=True, exist_ok=True)
    again = "run the same command again: finished runs are kept, the others resume"
    with full_disk_said(runs_dir, again), signals_held():
        with fitting(tune_path) as fit:  # Ray's lines beside Tune's state, not among the runs
            tuner.fit()
        statuses = {t.config["job"]: t.status for t in tune.ExperimentAnalysis(str(tune_path)).trials}
        _mark_ended(runs_dir, statuses, fit.interrupted, [runs_dir / job.name for job in jobs])
    if fit.interrupted:  # Tune took the signal: hand it on to whoever handles it now
        os.kill(os.getpid(), signal.SIGINT)


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
            if not trial.num_failures:  # a retry's start was said with its failure
                log(f"{trial.config['job']}: started")

        def on_trial_recover(self, iteration, trials, trial, **info):
            log(f"{trial.config['job']}: {failed(trial, retried=True)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            log(f"{trial.config['job']}: ended at step {int(result.get('step', 0))}, test accuracy "
                f"{result.get('test_accuracy', float('nan')):.4f}")  # fmt: skip

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"{trial.config['job']}: {failed(trial, retried=False)}")

    return Progress()


def failed(trial: Any, retried: bool) -> str:
    """A trial's failure in one line, and whether Tune retries it (its run resumes from its
    latest checkpoint). A full disk stops the search instead: a retry would fail the same way."""
    reason = trial_error(trial)
    if os.strerror(errno.ENOSPC) in reason:
        stop_for_full_disk()
    elif retried:
        return f"failed: {reason}; trying again (retry {trial.num_failures})"
    return f"failed: {reason}"


def trial_error(trial: Any, wait_s: float = 3.0) -> str:
    """A failed trial's reason in one line: mnistctl's own message when the trial raised one,
    else the exception's last line (the whole traceback is in ray.log and Tune's error file).
    Tune may not have stored the error yet when it tells the callbacks: it is waited for."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            error = trial.get_pickled_error()
        except Exception:  # an error that did not pickle, or storage gone: the text, then
            error = None
        error = error if error is not None else _error_file(trial)
        text = "" if error is not None else (trial.get_error() or "").strip()
        if error is not None or text or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    cause = getattr(error, "cause", error)  # a RayTaskError wraps what the trial raised
    if cause is not None:
        lines = str(cause).strip().splitlines()
        return (lines[-1] if lines else type(cause).__name__)[:300]
    return text.splitlines()[-1][:300] if text else "see ray.log"


def _error_file(trial: Any) -> Any:
    """The trial's pickled error read from its directory (Tune's own reader may look for it by
    a name it has not recorded, as after a search started again in place)."""
    from ray import cloudpickle

    for folder in (getattr(trial, "local_path", None), getattr(trial, "path", None)):
        if folder and (Path(folder) / "error.pkl").is_file():
            try:
                return cloudpickle.loads((Path(folder) / "error.pkl").read_bytes())
            except Exception:
                return None
    return None


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


def _mark_ended(
    folder: Path, statuses: dict[str, str], interrupted: bool, runs: list[Path] | None = None
) -> None:
    """Say in each trial's run.json how Tune left it, which the trial cannot tell.

    ``statuses`` is Tune's word by trial id (a sweep's) or by job name (``runs``: a list of
    jobs). In an interrupted search every run that did not finish is ``interrupted`` (its worker
    was stopped, or died with the driver: resumable); otherwise a run Tune ended without error
    before its last step was stopped by the scheduler: ``stopped``. ``compare`` and ``--resume``
    read them."""
    found = [load_run(p) for p in runs if is_run_dir(p)] if runs is not None else find_runs([folder])
    for run in found:
        status = statuses.get(run.name if runs is not None else run.record.trial)
        if status == "ERROR" or (status is None and not interrupted) or run.record.status.finished:
            continue
        deadline = time.time() + 10
        while run.status.claimed and time.time() < deadline:  # wait for the process to exit
            time.sleep(0.2)
            run = load_run(run.path)
        if run.record.status.finished:
            continue
        if interrupted:
            if run.record.status is not Status.INTERRUPTED:
                run.update(status=Status.INTERRUPTED)
        elif status == "TERMINATED":
            run.update(status=Status.STOPPED)
        elif run.record.status is Status.STOPPED or run.status is Status.CRASHED:
            run.update(status=Status.INTERRUPTED)


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
            if trial.num_failures:  # a retry's start was said with its failure
                return
            values = ", ".join(f"{labels[k]}={short_value(trial.config.get(k))}" for k in space)
            log(f"{trial_dir_name(trial.trial_id)} started: {values}")

        def on_trial_recover(self, iteration, trials, trial, **info):
            log(f"{trial_dir_name(trial.trial_id)} {failed(trial, retried=True)}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            value = result.get(sweep.spec.metric)
            shown = f"{sweep.spec.metric} {value:.4f}" if isinstance(value, float) else "no result"
            log(f"{trial_dir_name(trial.trial_id)} ended at step {int(result.get('step', 0))}: {shown}")
            write_trials(sweep_dir)

        def on_trial_error(self, iteration, trials, trial, **info):
            log(f"{trial_dir_name(trial.trial_id)} {failed(trial, retried=False)}")

    return Progress()
