"""What the training loop tells the outside world, and the base class of those who listen.

The loop never touches files: metric writers, checkpoints, the run record and the live view
are hooks it calls at the start, after each step, after each evaluation and at the end.

The contract every hook can rely on:

- ``begin`` comes first, once, after the variables are initialised or restored. When
  ``ctx.start_step > 0`` the run is resumed from a checkpoint at that step, and what was kept
  *after* that step is forgotten: those steps are about to be trained again. The rows of the
  files hooks declare in ``step_files`` are forgotten for them, in one place, before ``begin``;
  a hook with other state per step (checkpoints, TensorBoard's events) forgets it in ``begin``.
  Nothing else forgets.
- ``end`` comes last, once, for every hook whose ``begin`` was called, whatever happened
  (a failing ``begin`` of another hook, an exception in a step, Ctrl-C).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # only for annotations: this module must not import TensorFlow
    from mnistctl.config import Experiment
    from mnistctl.status import Status


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation: a row of metrics.csv.

    ``train_*`` average the training mini-batches since the previous evaluation (measured
    with dropout on, as the optimizer saw them); ``test_*`` cover the whole test set.
    """

    step: int
    epoch: float
    learning_rate: float
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    validation_loss: float  # NaN without data.validation
    validation_accuracy: float
    elapsed_s: float
    images_per_s: float
    peak_rss_mb: float  # the process's peak memory so far: flat over a long run, or a leak

    def as_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EvalRecord:
        """From a metrics.csv row or run.json's ``final``; missing numbers are NaN."""
        values = {k: row.get(k) for k in FIELDS}
        values = {k: math.nan if v is None or v == "" else float(v) for k, v in values.items()}
        return cls(**{**values, "step": int(values["step"])})


FIELDS = tuple(EvalRecord.__dataclass_fields__)

Named = tuple[tuple[str, np.ndarray], ...]  # (variable name, its value), in the graph's order


@dataclass(frozen=True)
class EvalEvent:
    """One evaluation, measured once by the loop: every hook reads what it needs from here and
    none runs the session (the weights are fetched once per evaluation, whoever writes them).

    A new metric is a field here and its computation in ``mnistctl.train.loop``; writers are tested
    by feeding them events, without TensorFlow.
    """

    record: EvalRecord
    improved: bool  # the best evaluation so far (see best_row)
    test_predictions: np.ndarray  # the class chosen for every test image
    test_probabilities: np.ndarray  # float32 [test images, classes]
    batch: np.ndarray  # indices of the last training batch
    batch_predictions: np.ndarray  # the classes the model gives those images now
    weights: Named  # the layers' weights (kernels and matrices), as trained
    biases: Named  # the layers' biases (batch norm's offsets among them)
    # The hidden layers' outputs on the first HIDDEN_IMAGES test images, for models with batch
    # norm (whose activations the walk-through shows); () for the others.
    hidden: tuple[np.ndarray, ...] = ()
    # The first layer's output for the first test image (its feature maps, for a convolution):
    # the live page's kernels view shows it beside the first layer's weights.
    probe: np.ndarray | None = None


HIDDEN_IMAGES = 1000  # test images whose hidden activations an event carries

Row = TypeVar("Row", EvalRecord, Mapping[str, float])


def _value(row: EvalRecord | Mapping[str, float], metric: str) -> float:
    return getattr(row, metric) if isinstance(row, EvalRecord) else row[metric]


def best_row(rows: Iterable[Row], metric: str) -> Row | None:
    """The best evaluation: the first with the highest ``metric`` (NaN never wins).

    This is the one meaning of "best" in mnistctl: the loop keeps the checkpoint of this row
    (it applies the same rule as the rows arrive: only a strictly higher value improves),
    run.json records its step, and ``compare``, the dashboard and ``eval`` use it. ``metric``
    is ``Experiment.selection_metric``: validation accuracy when images are held out.
    """
    best = None
    for row in rows:
        value = _value(row, metric)
        if not math.isnan(value) and (best is None or value > _value(best, metric)):
            best = row
    return best


def max_test_accuracy(rows: Iterable[EvalRecord | Mapping[str, float]]) -> float | None:
    """The walk-through's published measure: the highest test accuracy seen during a run."""
    values = [_value(r, "test_accuracy") for r in rows]
    values = [v for v in values if not math.isnan(v)]
    return max(values) if values else None


@dataclass
class TrainContext:
    """Shared state a hook may read: the experiment, graph, session and progress."""

    experiment: Experiment
    graph: Any  # mnistctl.model.Graph
    session: Any
    total_steps: int
    start_step: int = 0
    step: int = 0
    best: EvalRecord | None = None  # the best evaluation so far (see best_row)
    last: EvalRecord | None = None
    run_dir: Any = None  # the run directory (a Path), for hooks that draw from its files
    data: Any = None  # the Dataset being trained on
    last_batch: np.ndarray | None = None  # indices of the last training batch
    last_event: EvalEvent | None = None  # the latest evaluation, as the hooks received it
    # A hook sets this to end training cleanly after the current step, with this status
    # (a sweep's scheduler stopping a trial early: ``stopped``).
    stop: Status | None = None
    stop_reason: str | None = None  # said with ``stop``, for run.json
    # The evaluations before ``start_step`` (a resumed run's), oldest first.
    history: list[EvalRecord] = field(default_factory=list)
    # Where the training steps' time goes: inside session.run vs picking batches + hooks.
    session_s: float = 0.0
    steps_s: float = 0.0

    @property
    def best_step(self) -> int:
        return self.best.step if self.best else 0

    @property
    def best_accuracy(self) -> float:
        """The best evaluation's value of the selection metric (NaN before the first)."""
        return getattr(self.best, self.experiment.selection_metric) if self.best else math.nan


class Hook:
    """Override what you need; every method is a no-op by default.

    A hook that appends a row or an entry per evaluation to a file keyed by ``step`` declares
    it in ``step_files``; on a resume, what came after the checkpoint's step is forgotten there
    in one place (``mnistctl.run.writers.forget_after``) before ``begin``.
    """

    step_files: tuple[Path, ...] = ()

    def begin(self, ctx: TrainContext) -> None:
        """Before the first step (after variables are initialised or restored); forget what
        was kept after ``ctx.start_step``."""

    def after_step(self, ctx: TrainContext) -> None:
        """After every step; ``ctx.step`` steps are done. Must be cheap."""

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        """After each evaluation (before that step's ``after_step``), with what it measured."""

    def end(self, ctx: TrainContext, status: Status) -> None:
        """Once, with how training ended: completed, interrupted, diverged or failed."""
