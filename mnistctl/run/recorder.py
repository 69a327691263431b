"""The hook that keeps a run's record current: run.json's status from start to end, progress,
the best and the last evaluation, timing, and a heartbeat that shows the process is alive."""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

from mnistctl.machine import peak_rss_mb
from mnistctl.run.directory import HEARTBEAT_S, Run, Timing, utc_now
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, EvalRecord, Hook, TrainContext


def _best_fields(best: EvalRecord | None) -> dict[str, Any]:
    if best is None:
        return dict(best_step=None, best_test_accuracy=None, best_validation_accuracy=None)
    validation = None if math.isnan(best.validation_accuracy) else best.validation_accuracy
    return dict(
        best_step=best.step, best_test_accuracy=best.test_accuracy, best_validation_accuracy=validation
    )


class RunRecorder(Hook):
    """Keeps run.json current: status, progress, best result, timing, and a heartbeat."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self._started = 0.0
        self._beat = 0.0

    def begin(self, ctx: TrainContext) -> None:
        # wall_s adds up every process that trained the run (a resumed one goes on from the
        # earlier ones' total), and is kept current with the heartbeat, so a crash loses little.
        before = (self.run.record.wall_s or 0.0) if ctx.start_step else 0.0
        self._started = time.time() - before
        self._beat = time.time()
        self.run.update(
            status=Status.RUNNING,
            started_at=utc_now(),
            pid=os.getpid(),
            host=socket.gethostname(),
            steps_total=ctx.total_steps,
            error=None,
            **_best_fields(ctx.best),  # on a resume: the best of the evaluations kept
        )

    def after_step(self, ctx: TrainContext) -> None:
        now = time.time()
        if now - self._beat > HEARTBEAT_S:  # checked every step; written rarely
            self._beat = now
            self.run.update(steps_done=ctx.step, wall_s=now - self._started)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        record, improved = event.record, event.improved
        self._beat = time.time()
        self.run.update(
            steps_done=ctx.step,
            wall_s=self._beat - self._started,
            peak_rss_mb=peak_rss_mb(),
            selected_by="validation" if ctx.experiment.data.validation else "test",
            final=record,
            **(_best_fields(record) if improved else {}),
        )

    def end(self, ctx: TrainContext, status: Status) -> None:
        steps = ctx.step - ctx.start_step
        self.run.update(
            status=status,
            stop_reason=ctx.stop_reason if status.ended_by_rule else None,
            ended_at=utc_now(),
            steps_done=ctx.step,
            wall_s=time.time() - self._started,
            timing=Timing(
                train_s=round(ctx.steps_s, 3),
                session_run_s=round(ctx.session_s, 3),
                loop_overhead_fraction=round(1 - ctx.session_s / ctx.steps_s, 4) if ctx.steps_s else None,
                images_per_s=round(steps * ctx.experiment.train.batch_size / ctx.steps_s, 1)
                if ctx.steps_s
                else None,
            ),
        )
