"""When a run has trained enough: ``train.stop_at`` and ``train.early_stopping``, as a hook.

The rules read only the evaluations (never files), so a resumed run picks up where it was:
``begin`` replays the evaluations before the checkpoint it resumed from.
"""

from __future__ import annotations

import math

from mnistctl.config import TrainConfig
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, EvalRecord, Hook, TrainContext


class StoppingRules(Hook):
    """Ends training cleanly after the evaluation at which a rule fires.

    The run's status then says which (``target_reached``, ``early_stopped``) and run.json's
    ``stop_reason`` says why, with the numbers.
    """

    def __init__(self, train: TrainConfig) -> None:
        self.stop_at = train.stop_at
        self.early = train.early_stopping

    @staticmethod
    def wanted(train: TrainConfig) -> bool:
        return train.stop_at is not None or train.early_stopping is not None

    def begin(self, ctx: TrainContext) -> None:
        self.best, self.best_step, self.waited = -math.inf, 0, 0
        for record in ctx.history:
            self._track(record)

    def _track(self, record: EvalRecord) -> None:
        if self.early is None:
            return
        value = getattr(record, self.early.metric)
        if math.isnan(value):
            return
        if value > self.best + self.early.min_delta:
            self.best, self.best_step, self.waited = value, record.step, 0
        else:
            self.waited += 1

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        record = event.record
        self._track(record)
        if ctx.stop is not None:
            return  # something else (a sweep's scheduler, Ctrl-C) already ends the run
        if self.stop_at is not None:
            value = getattr(record, self.stop_at.metric)
            if value >= self.stop_at.value:
                ctx.stop = Status.TARGET_REACHED
                ctx.stop_reason = (
                    f"train.stop_at: {self.stop_at.metric} {value:.4f} reached {self.stop_at.value} "
                    f"at step {record.step}"
                )
                return
        if self.early is not None and self.waited >= self.early.patience:
            ctx.stop = Status.EARLY_STOPPED
            ctx.stop_reason = (
                f"train.early_stopping: {self.early.metric} did not improve on {self.best:.4f} "
                f"(step {self.best_step}) for {self.waited} evaluations"
            )
