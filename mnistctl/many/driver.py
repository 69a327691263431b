"""The driver: a list of jobs trained in turn here or side by side on Ray, one call for both.

``reproduce`` calls it, and tomorrow a lesson or a queue; a sweep is Ray Tune's search making
its jobs as it goes (``mnistctl.many.engine.run_sweep``), each trained by the same
:func:`mnistctl.many.jobs.run_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mnistctl.many.jobs import Job, Log, OnRay, run_in_turn
from mnistctl.run.directory import Run, is_run_dir, load_run
from mnistctl.train.events import Hook


def run_jobs(
    jobs: Sequence[Job],
    runs_dir: Path,
    *,
    on_ray: OnRay | None = None,
    extra_hooks: Sequence[Hook] = (),
    log: Log = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_finished: Callable[[Job, Run], None] = lambda job, run: None,
) -> list[Run]:
    """Train ``jobs`` in turn, or side by side on Ray when ``on_ray`` says how.

    ``on_finished(job, run)`` is called here, in the driver, for each job whose run finished
    (on Ray, once they have all ended), in the order of ``jobs``. Returns the runs there are.
    """
    if on_ray is None:
        return run_in_turn(
            jobs, runs_dir, extra_hooks=extra_hooks, log=log, should_stop=should_stop, on_finished=on_finished
        )
    from mnistctl.many.engine import run_on_ray  # Ray only when asked for

    run_on_ray(jobs, runs_dir, on_ray)
    runs = []
    for job in jobs:
        if not is_run_dir(runs_dir / job.name):
            continue  # failed before its run directory was made
        run = load_run(runs_dir / job.name)
        runs.append(run)
        if run.record.status.finished:
            on_finished(job, run)
    return runs
