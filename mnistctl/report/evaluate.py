"""Evaluate a run's checkpoint, or an ensemble of runs, on the test (or validation) images:
accuracy, loss, per-class accuracy, confusion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistctl.config import Experiment
from mnistctl.dataset import Dataset, load_experiment_data
from mnistctl.errors import MnistctlError
from mnistctl.many.ensemble import Member, log_loss, mean_probabilities
from mnistctl.model import build_graph, make_session
from mnistctl.run.checkpoints import resolve, restore
from mnistctl.run.directory import load_run
from mnistctl.run.writers import confusion_matrix
from mnistctl.train.loop import Evaluation, averaged_weights, evaluate


@dataclass(frozen=True)
class EvalReport:
    """What ``mnistctl eval`` reports."""

    run: str
    checkpoint: str
    step: int
    dataset: str
    split: str  # "test" or "validation"
    count: int
    test_loss: float  # on ``split``'s images (named for the usual case)
    test_accuracy: float
    per_class_accuracy: list[float]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    classes: list[str]
    images: np.ndarray  # the images, labels, predictions and probabilities (not in as_dict)
    labels: np.ndarray
    predictions: np.ndarray
    probabilities: np.ndarray

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    def as_dict(self) -> dict[str, Any]:
        arrays = ("images", "labels", "predictions", "probabilities")
        return {k: v for k, v in self.__dict__.items() if k not in arrays}


@dataclass(frozen=True)
class EnsembleReport:
    """What ``mnistctl eval RUN RUN ...`` reports: each member, then their average."""

    members: list[EvalReport]
    ensemble: EvalReport

    def as_dict(self) -> dict[str, Any]:
        short = ("run", "checkpoint", "step", "test_accuracy", "test_loss")
        return {
            "members": [{k: getattr(m, k) for k in short} for m in self.members],
            "ensemble": self.ensemble.as_dict(),
        }


def evaluate_checkpoint(target: Path, *, data_dir: Path | None = None, split: str = "test") -> EvalReport:
    """Restore ``target`` (a run directory's selected checkpoint, or a named one) and evaluate it
    on the test (or validation) images of the run's own dataset and subset."""
    run_dir, prefix = resolve(target)
    exp = load_run(run_dir).trained_experiment()
    images, labels, data = _split(exp, data_dir, split, run_dir)
    step, result = _evaluate_member(exp, prefix, images, labels)
    return _report(str(run_dir), prefix, step, exp, split, data, labels, result)


def evaluate_ensemble(
    members: Sequence[Member], *, data_dir: Path | None = None, split: str = "test"
) -> EnsembleReport:
    """Soft voting over ``members`` (from :func:`mnistctl.many.ensemble.members_of`), evaluated one
    after another: one member's graph and session exist at a time, and only its probabilities
    are kept."""
    first = members[0].experiment
    images, labels, data = _split(first, data_dir, split, members[0].run.path)
    reports: list[EvalReport] = []
    probabilities: list[np.ndarray] = []
    for member in members:
        step, result = _evaluate_member(member.experiment, member.checkpoint, images, labels)
        probabilities.append(result.probabilities)
        reports.append(_report(str(member.run.path), member.checkpoint, step, member.experiment, split, data,
                               labels, result))  # fmt: skip
    mean = mean_probabilities(probabilities)
    # np.argmax takes the first of equal probabilities, as tf.argmax does for the members.
    voted = Evaluation(log_loss(mean, labels), 0.0, mean.argmax(axis=1).astype(np.int32), mean)
    ensemble = _report(f"ensemble of {len(members)} runs", "", 0, first, split, data, labels, voted)
    return EnsembleReport(reports, ensemble)


class EvalError(MnistctlError):
    """An evaluation that cannot be made."""


def _split(
    exp: Experiment, data_dir: Path | None, split: str, source: Path
) -> tuple[np.ndarray, np.ndarray, Dataset]:
    if split == "validation" and exp.data.validation is None:
        raise EvalError(f"{source}: the run has no validation hold-out (data.validation); use --split test")
    data = load_experiment_data(exp, data_dir=data_dir)
    if split == "validation":
        return data.validation_images, data.validation_labels, data
    return data.test_images, data.test_labels, data


def _evaluate_member(
    exp: Experiment, prefix: str, images: np.ndarray, labels: np.ndarray
) -> tuple[int, Evaluation]:
    g = build_graph(exp)
    with make_session(g) as session:
        step = restore(session, g, prefix)
        with averaged_weights(session, g):
            result = evaluate(session, g, images, labels, exp.train.eval_batch_size, keep_probabilities=True)
    return step, result


def _report(
    run: str,
    checkpoint: str,
    step: int,
    exp: Experiment,
    split: str,
    data: Dataset,
    labels: np.ndarray,
    result: Evaluation,
) -> EvalReport:
    predictions = result.predictions
    confusion = confusion_matrix(labels, predictions, len(data.classes))
    totals = confusion.sum(axis=1)
    per_class = np.divide(np.diag(confusion), totals, out=np.zeros(len(totals)), where=totals > 0)
    return EvalReport(
        run=run,
        checkpoint=checkpoint,
        step=step,
        dataset=exp.data.dataset,
        split=split,
        count=len(labels),
        test_loss=float(result.loss),
        test_accuracy=float(np.mean(predictions == labels)),
        per_class_accuracy=[round(float(a), 6) for a in per_class],
        confusion=confusion.tolist(),
        classes=list(data.classes),
        images=data.validation_images if split == "validation" else data.test_images,
        labels=labels,
        predictions=predictions,
        probabilities=result.probabilities,
    )
