"""Metric writers (CSV, TensorBoard) as training hooks, and the CSV reader compare uses.

The CSV is append-only and flushed per row, so after a crash it holds every evaluation that
finished. Reading it needs no TensorFlow.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from mnistctl.files import write_atomic
from mnistctl.hooks import FIELDS, EvalRecord, Hook, TrainContext


class CsvWriter(Hook):
    """Appends one row per evaluation to ``metrics.csv``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = None
        self._writer: csv.DictWriter | None = None

    def begin(self, ctx: TrainContext) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        if new:
            self._writer.writeheader()

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.writerow({k: _fmt(v) for k, v in record.as_row().items()})
        self._file.flush()

    def end(self, ctx: TrainContext, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as numbers; a torn last line (from a crash) is skipped."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(row[k]) for k in FIELDS})
            except (TypeError, ValueError, KeyError):
                continue
    return rows


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only the rows up to ``step`` (and drop a torn last line), atomically.

    Used when resuming from a checkpoint at ``step``: later rows are redone, so each
    evaluation step appears exactly once.
    """
    if not path.is_file():
        return
    rows = [r for r in read_metrics(path) if r["step"] <= step]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: int(v) if k == "step" else _fmt(v) for k, v in row.items()})
    write_atomic(path, out.getvalue())


class TensorBoardWriter(Hook):
    """Writes the scalars of each evaluation (and the graph) as TensorFlow event files."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._writer = None

    def begin(self, ctx: TrainContext) -> None:
        from mnistctl._tf import tf  # only training writes events, and it has TF loaded

        self._tf = tf
        self._writer = tf.compat.v1.summary.FileWriter(str(self.logdir), graph=ctx.graph.graph)
        if ctx.start_step:
            # A START session log tells TensorBoard to forget events from step start+1 on,
            # which the resumed run is about to write again.
            log = tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START)
            self._writer.add_session_log(log, ctx.start_step + 1)

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        summary = self._tf.compat.v1.Summary()
        for tag in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate"):
            value = getattr(record, tag)
            if math.isfinite(value):
                group, _, name = tag.partition("_")
                summary.value.add(
                    tag=f"{name}/{group}" if group in ("train", "test") else tag, simple_value=value
                )
        self._writer.add_summary(summary, record.step)
        self._writer.flush()

    def end(self, ctx: TrainContext, status: str) -> None:
        if self._writer is not None:
            self._writer.close()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, as an int64 [classes, classes] array."""
    flat = np.asarray(labels, dtype=np.int64) * classes + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)
