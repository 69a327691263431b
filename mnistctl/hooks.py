"""What the training loop tells the outside world, and the base class of those who listen.

The loop never touches files: metric writers, checkpoints, run metadata and the live view
are hooks it calls at the start, after each step, after each evaluation and at the end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: this module must not import TensorFlow
    from mnistctl.config import Experiment
    from mnistctl.model import Graph


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


FIELDS = tuple(EvalRecord.__dataclass_fields__)


@dataclass
class TrainContext:
    """Shared state a hook may read: the experiment, graph, session and progress."""

    experiment: Experiment
    graph: Graph
    session: Any
    total_steps: int
    start_step: int = 0
    step: int = 0
    best_accuracy: float = -1.0  # of the selection metric: validation if held out, else test
    best_step: int = 0
    last: EvalRecord | None = None
    run_dir: Any = None  # the run directory (a Path), for hooks that draw from its files
    data: Any = None  # the Dataset being trained on
    last_test: Any = None  # the latest test-set Evaluation (predictions, probabilities)
    # Where the training steps' time goes: inside session.run vs picking batches + hooks.
    session_s: float = 0.0
    steps_s: float = 0.0


class Hook:
    """Override what you need; every method is a no-op by default."""

    def begin(self, ctx: TrainContext) -> None:
        """Before the first step (after variables are initialised or restored)."""

    def after_step(self, ctx: TrainContext) -> None:
        """After every step; ``ctx.step`` steps are done. Must be cheap."""

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        """After each evaluation; ``improved`` when the selection accuracy (validation when
        there is a validation set, else test) is the best so far."""

    def end(self, ctx: TrainContext, status: str) -> None:
        """Once, with ``completed``, ``interrupted``, ``diverged`` or ``failed``."""
