"""Evaluate a run's checkpoint on the test set: accuracy, loss, per-class accuracy, confusion."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistctl.checkpoints import resolve, restore
from mnistctl.data import load_experiment_data
from mnistctl.loop import averaged_weights, evaluate
from mnistctl.metrics import confusion_matrix
from mnistctl.model import build_graph, make_session
from mnistctl.runs import load_run


@dataclass(frozen=True)
class EvalReport:
    """What ``mnistctl eval`` reports."""

    run: str
    checkpoint: str
    step: int
    dataset: str
    count: int
    test_loss: float
    test_accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    classes: list[str]
    images: np.ndarray  # the test images, labels, predictions and confidence (not in as_dict)
    labels: np.ndarray
    predictions: np.ndarray
    confidence: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        arrays = ("images", "labels", "predictions", "confidence")
        return {k: v for k, v in self.__dict__.items() if k not in arrays}


def evaluate_checkpoint(target: Path, *, data_dir: Path | None = None) -> EvalReport:
    """Restore ``target`` (a run directory's best checkpoint, or a named one) and evaluate it
    on the test images of the run's own dataset and subset."""
    run_dir, prefix = resolve(target)
    run = load_run(run_dir)
    exp = run.experiment()
    data = load_experiment_data(exp, data_dir=data_dir)
    g = build_graph(exp)
    with make_session(g) as session:
        step = restore(session, g, prefix)
        with averaged_weights(session, g):
            result = evaluate(
                session,
                g,
                data.test_images,
                data.test_labels,
                exp.train.eval_batch_size,
                keep_probabilities=True,
            )
    confusion = confusion_matrix(data.test_labels, result.predictions, len(data.classes))
    totals = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)
    return EvalReport(
        run=str(run_dir),
        checkpoint=prefix,
        step=step,
        dataset=exp.data.dataset,
        count=len(data.test_images),
        test_loss=result.loss,
        test_accuracy=result.accuracy,
        per_class_accuracy=[round(float(a), 6) for a in per_class],
        confusion=confusion.tolist(),
        classes=list(data.classes),
        images=data.test_images,
        labels=data.test_labels,
        predictions=result.predictions,
        confidence=result.probabilities.max(axis=1),
    )
