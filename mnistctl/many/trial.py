"""One run as a Ray Tune trial, inside a Ray worker: the single run of
:mod:`mnistctl.run.experiment` with one more hook that reports each evaluation to Tune (and
stops the run when Tune's scheduler says so); a retried trial resumes its own directory."""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnistctl.config import Experiment, parse_experiment
from mnistctl.many.sweep import apply_values
from mnistctl.run.directory import METRICS_FILE, is_run_dir, load_run
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

    from mnistctl.run.experiment import resume_experiment, run_experiment

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
