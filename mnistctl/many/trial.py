"""One run as a Ray Tune trial, inside a Ray worker: the single run of
:mod:`mnistctl.run.experiment` with one more hook that reports each evaluation to Tune (and
stops the run when Tune's scheduler says so); a retried trial resumes its own directory."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnistctl.many.jobs import Job, job_state, run_job
from mnistctl.many.sweep import Sweep
from mnistctl.run.directory import METRICS_FILE
from mnistctl.run.writers import read_metrics
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, Hook, TrainContext


def trial_dir_name(trial_id: str) -> str:
    """``4f3a2_00003`` -> ``trial-00003``: stable across a sweep's resumes and retries."""
    return f"trial-{trial_id.rsplit('_', 1)[-1]}"


class TuneReporter(Hook):
    """Reports every evaluation to Ray Tune; ends the run as ``stopped`` when Tune says stop.

    The last evaluation is reported only at ``end``, after the other hooks have ended (this
    hook comes last): Tune stops a trial as soon as it has its last result, and the run's final
    checkpoint and record must be written by then.
    """

    def __init__(self, report: Callable[[dict[str, Any]], None]) -> None:
        self.report = report
        self._last: dict[str, float] | None = None

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        record = event.record
        metrics = {
            k: v
            for k, v in record.as_row().items()
            if k in ("step", "train_accuracy", "test_accuracy", "validation_accuracy") and not math.isnan(v)
        }
        if ctx.step >= ctx.total_steps:
            self._last = metrics
            return
        try:
            self.report(metrics)
        except SystemExit:  # Ray's way of telling a training thread that Tune stopped the trial
            ctx.stop = Status.STOPPED

    def end(self, ctx: TrainContext, status: Status) -> None:
        if self._last is not None and status is Status.COMPLETED:
            with contextlib.suppress(SystemExit):
                self.report(self._last)


@dataclass(frozen=True)
class TrialPlan:
    """What every trial needs, shipped to the Ray workers: a sweep, whose values make each
    trial's job, or a list of jobs, one per trial (``mnistctl.many.engine.run_on_ray``)."""

    runs_dir: str
    threads: int
    data_dir: str | None = None
    sweep: Sweep | None = None
    jobs: dict[str, Job] | None = None

    def job(self, params: dict[str, Any], trial_id: str) -> Job:
        if self.jobs is not None:
            return self.jobs[params["job"]]
        assert self.sweep is not None
        return Job(trial_dir_name(trial_id), self.sweep.experiment(params), {"sweep": self.sweep.name})


def train_trial(params: dict[str, Any], plan: TrialPlan) -> None:
    """One trial: its job through the one driver's :func:`~mnistctl.many.jobs.run_job` (a new
    run, or the same one resumed when Tune retries the trial or a sweep is resumed)."""
    import ray
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    job = plan.job(params, trial_id)
    job = replace(
        job, record={**job.record, "trial": trial_id, "node": ray.get_runtime_context().get_node_id()}
    )
    runs_dir = Path(plan.runs_dir)
    finished_before = job_state(job, runs_dir) == "done"
    run_job(
        job,
        runs_dir,
        extra_hooks=[TuneReporter(tune.report)],
        threads=plan.threads,
        data_dir=Path(plan.data_dir) if plan.data_dir else None,
        reclaim=True,
    )
    if finished_before:  # finished before the sweep was stopped (or searched again): report it
        rows = read_metrics(runs_dir / job.name / METRICS_FILE)
        if rows:
            tune.report({k: v for k, v in rows[-1].items() if not math.isnan(v)})
