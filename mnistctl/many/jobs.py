"""One driver for many runs: a list of jobs, each an ordinary single run, trained one after
another here or side by side on Ray, with one resume decision.

A reproduction's (config, seed) runs, a sweep's trials (an ensemble's members are the trials of
a sweep) and tomorrow a lesson's steps or a queue's entries are all :class:`Job`: a run
directory's name and the typed config to train there. :func:`run_job` is the one place that
decides what a job's directory asks for: nothing when its run finished, a resume in place when
it did not, a new run when there is none. :func:`run_in_turn` trains a list here; on Ray
(``mnistctl.many.engine``) each trial calls :func:`run_job` in its worker, for a list of jobs and
for a sweep's trials alike; ``mnistctl.many.driver.run_jobs`` chooses between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistctl.config import Experiment, flatten, to_dict
from mnistctl.errors import MnistctlError
from mnistctl.run.directory import Run, is_run_dir, load_run
from mnistctl.train.events import Hook

Log = Callable[[str], None]


@dataclass(frozen=True)
class Job:
    """One run to train: its directory ``runs_dir / name`` and the config it trains."""

    name: str
    experiment: Experiment
    record: Mapping[str, Any] = field(default_factory=dict)  # more fields for run.json (a trial's id)


@dataclass(frozen=True)
class OnRay:
    """Train side by side on Ray: where, how wide, and how much to say."""

    address: str | None = None
    max_concurrent: int | None = None
    cpus_per_job: int = 1
    group: str = "jobs"
    quiet: bool = False


def job_state(job: Job, runs_dir: Path) -> str:
    """What ``job``'s directory asks for: ``done`` (its run finished), ``resume`` (a run is
    there, unfinished: interrupted, crashed, failed, diverged or stopped) or ``new``."""
    run_dir = runs_dir / job.name
    if not is_run_dir(run_dir):
        return "new"
    return "done" if load_run(run_dir).record.status.finished else "resume"


def run_job(
    job: Job,
    runs_dir: Path,
    *,
    extra_hooks: Sequence[Hook] = (),
    log: Log = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    threads: int | None = None,
    data_dir: Path | None = None,
    reclaim: bool = False,
) -> Run:
    """Train one job: the one resume decision of every driver.

    A finished run in the job's directory is returned as it is (nothing trains); an unfinished
    one is resumed in place from its latest checkpoint; otherwise a new run is made there.

    Args:
        reclaim: the caller knows that whatever last trained the run is gone (Ray retrying a
            trial whose worker died), though the run's record may still claim it.
    """
    run_dir = runs_dir / job.name
    found = load_run(run_dir) if is_run_dir(run_dir) else None
    if found is not None:
        _check_same_config(job, found)
        if found.record.status.finished:
            return found  # nothing to train, nor TensorFlow to import
    from mnistctl.run.experiment import resume_experiment, run_experiment

    common: dict[str, Any] = dict(
        extra_hooks=extra_hooks,
        log=log,
        should_stop=should_stop,
        threads=threads,
        data_dir=data_dir,
        record=dict(job.record),
    )
    if found is not None:
        return resume_experiment(run_dir, reclaim=reclaim, **common)
    return run_experiment(job.experiment, runs_dir=runs_dir, name=job.name, exact_name=True, **common)


def run_in_turn(
    jobs: Sequence[Job],
    runs_dir: Path,
    *,
    extra_hooks: Sequence[Hook] = (),
    log: Log = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_finished: Callable[[Job, Run], None] = lambda job, run: None,
) -> list[Run]:
    """Train ``jobs`` one after another; stop at the first that does not finish (interrupted,
    failed: its directory keeps it for the next call). Returns the runs trained or found."""
    runs = []
    for job in jobs:
        if runs and should_stop():  # asked to stop between two jobs: the next does not start
            break
        state = job_state(job, runs_dir)
        if state != "done":
            log(f"{job.name}: " + ("resuming" if state == "resume" else "training"))
        run = run_job(job, runs_dir, extra_hooks=extra_hooks, log=log, should_stop=should_stop)
        runs.append(run)
        if not run.record.status.finished:
            break
        on_finished(job, run)
    return runs


class JobConflict(MnistctlError):
    """A job whose directory holds a run of another config."""


def _check_same_config(job: Job, run: Run) -> None:
    """A job's directory must hold a run of the job's own config: never resume or report a run
    of another one as if it were this job's (a sweep searched again, a renamed config)."""
    ours, theirs = flatten(to_dict(job.experiment)), flatten(to_dict(run.experiment()))
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differ:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ[:3])
        raise JobConflict(
            f"{run.path}: holds a run of another config ({shown}); move it away or rename the job"
        )
