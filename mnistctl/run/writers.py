"""A run's files of evaluations, and their readers: metrics.csv, distributions.csv,
evaluations.jsonl and predictions.npz, written by hooks that only write what the loop measured
(TensorBoard's event files are :mod:`mnistctl.run.tensorboard`'s), and ``forget_after``, what a
resume forgets of them.

The CSV files are append-only and flushed per row, so after a crash they hold every evaluation
that finished. Reading them needs no TensorFlow.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistctl.errors import DamagedFileError
from mnistctl.files import to_json, write_atomic, write_csv
from mnistctl.train.events import FIELDS, EvalEvent, Hook, TrainContext

if TYPE_CHECKING:
    from mnistctl.status import Status


class CsvWriter(Hook):
    """Appends one row per evaluation to ``metrics.csv`` (a resume forgets the rows past the
    checkpoint first: see ``forget_after``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step_files = (path,)
        self._file = None
        self._writer: csv.DictWriter | None = None

    def begin(self, ctx: TrainContext) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=FIELDS)
        if new:
            self._writer.writeheader()

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.writerow({k: _fmt(v) for k, v in event.record.as_row().items()})
        self._file.flush()

    def end(self, ctx: TrainContext, status: Status) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of a metrics.csv as numbers; a torn last line (from a crash) is skipped.

    Raises:
        DamagedFileError: the file is not text, or not metrics (its columns are others).
    """
    rows = []
    for row in read_rows(path, required=("step", "test_accuracy")):
        try:
            rows.append({k: float(row[k]) if row.get(k) not in (None, "") else math.nan for k in FIELDS})
        except (TypeError, ValueError):
            continue
        if math.isnan(rows[-1]["step"]) or math.isnan(rows[-1]["test_accuracy"]):
            rows.pop()  # a torn line
    return rows


def training_time(rows: list[dict[str, float]]) -> float:
    """Seconds of training behind a run's evaluations (evaluations included), over all the
    processes that trained it. A resumed run's clock (``elapsed_s``) goes on from its last kept
    evaluation; in runs from before 2026-11-29 each process started it again at zero, which is
    added up here."""
    total, previous = 0.0, 0.0
    for row in rows:
        if row["elapsed_s"] < previous:
            total += previous
        previous = row["elapsed_s"]
    return total + previous


def forget_after(paths: Iterable[Path], step: int) -> None:
    """What a resume forgets, in one place: every row or entry after ``step`` (the checkpoint
    it resumes from) of the step-keyed files the writers declare (``Hook.step_files``), and a
    torn last line, each file rewritten atomically. Those steps are about to be trained again,
    so each evaluation appears once. CSV rows are kept as they were written."""
    for path in paths:
        if not path.is_file():
            continue
        if path.suffix == ".jsonl":
            kept = [e for e in read_evaluations(path) if e["step"] <= step]
            write_atomic(path, "".join(to_json(e, separators=(",", ":")) + "\n" for e in kept))
            continue
        columns, rows = _read_csv(path)
        if columns:
            write_csv(path, columns, [r for r in rows if _whole(r) and _step(r) <= step])


def _whole(row: dict) -> bool:
    """Not a torn line: as many values as the header has columns."""
    return None not in row and None not in row.values()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs, as an int64 [classes, classes] array."""
    flat = np.asarray(labels, dtype=np.int64) * classes + np.asarray(predictions, dtype=np.int64)
    return np.bincount(flat, minlength=classes * classes).reshape(classes, classes)


PERCENTILES = (0, 10, 25, 50, 75, 90, 100)
DISTRIBUTION_FIELDS = ("step", "kind", *(f"p{p}" for p in PERCENTILES))


def percentiles(arrays: list[np.ndarray]) -> list[float]:
    """PERCENTILES of all values, interpolated; an infinite value (a diverging weight) gives
    its infinity where interpolating towards it would give NaN (inf * 0)."""
    values = np.concatenate([np.ravel(a) for a in arrays]) if arrays else np.zeros(1)
    with np.errstate(invalid="ignore"):
        linear = np.percentile(values, PERCENTILES)
    if np.isfinite(values).all():
        return [float(v) for v in linear]
    nearest = np.percentile(values, PERCENTILES, method="nearest")
    return [float(n if math.isnan(v) else v) for v, n in zip(linear, nearest, strict=True)]


class DistributionWriter(Hook):
    """Percentiles of all weights and all biases at each evaluation, for the dashboard.

    Batch-norm models also get the percentiles of their hidden layers' activations on a fixed
    set of test images, which is what the walk-through shows for them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step_files = (path,)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        step = event.record.step
        rows = [
            (step, "weights", *percentiles([value for _, value in event.weights])),
            (step, "biases", *percentiles([value for _, value in event.biases])),
        ]
        if event.hidden:  # the loop measures them for batch-norm models only
            rows.append((step, "activations", *percentiles(list(event.hidden))))
        self._write([dict(zip(DISTRIBUTION_FIELDS, row, strict=True)) for row in rows])

    def _write(self, rows: list[dict]) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=DISTRIBUTION_FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerows({k: _fmt(v) for k, v in row.items()} for row in rows)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):
        return math.inf  # a torn line: never kept


def read_rows(path: Path, required: tuple[str, ...] = ("step",)) -> list[dict[str, str]]:
    """The rows of a CSV file a run wrote ([] when it is not there yet).

    Raises:
        DamagedFileError: naming the file, when it is not UTF-8 CSV with the ``required`` columns.
    """
    columns, rows = _read_csv(path)
    missing = [c for c in required if c not in columns]
    if missing and (rows or columns):
        raise DamagedFileError(f"{path}: damaged: no {', '.join(missing)} column")
    return rows


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV file's columns and rows (none when it is not there yet).

    Raises:
        DamagedFileError: naming the file, when it is not UTF-8 CSV.
    """
    if not path.is_file():
        return [], []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (UnicodeDecodeError, csv.Error) as err:
        raise DamagedFileError(f"{path}: damaged: not a CSV text file ({type(err).__name__})") from None


def read_distributions(path: Path) -> dict[str, np.ndarray]:
    """``{kind: array [evaluations, 1 + len(PERCENTILES)]}`` with the step in column 0."""
    out: dict[str, list] = {}
    for row in read_rows(path):
        try:
            values = [float(row["step"])] + [float(row[f"p{p}"]) for p in PERCENTILES]
        except (KeyError, TypeError, ValueError):
            continue  # a torn last line after a crash
        out.setdefault(row["kind"], []).append(values)
    return {kind: np.array(rows) for kind, rows in out.items()}


class PredictionWriter(Hook):
    """Saves the test predictions at the end and at the best evaluation, and the predictions
    on the last training batch, so plots and galleries need no TensorFlow."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.best: tuple[int, np.ndarray] | None = None
        self.last: EvalEvent | None = None

    def begin(self, ctx: TrainContext) -> None:
        try:
            saved = read_predictions(self.path) if ctx.start_step else None
        except DamagedFileError:  # only the best step's predictions are lost: they are redone
            saved = None
        if saved is not None and int(saved["best_step"]) <= ctx.start_step:
            self.best = (int(saved["best_step"]), saved["best_predictions"])

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        if event.improved:
            self.best = (event.record.step, event.test_predictions.astype(np.uint8))
        self.last = event

    def end(self, ctx: TrainContext, status: Status) -> None:
        # The last evaluation is the last step's (the loop evaluates there), so its batch
        # predictions are the end's.
        last = self.last
        if last is None or not status.checkpointed_at_end:
            return
        best_step, best = self.best if self.best else (last.record.step, last.test_predictions)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            step=last.record.step,
            labels=ctx.data.test_labels,
            predictions=last.test_predictions.astype(np.uint8),
            probabilities=last.test_probabilities.astype(np.float16),
            best_step=best_step,
            best_predictions=best.astype(np.uint8),
            train_indices=last.batch,
            train_predictions=last.batch_predictions.astype(np.uint8),
        )
        write_atomic(self.path, buffer.getvalue())


class EvaluationLog(Hook):
    """At each evaluation, one JSON line: the misrecognised test digits (index and predicted
    class) and the last training batch with its predictions - what the live page's digit
    panels show, about 2 KB an evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step_files = (path,)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        predicted = event.test_predictions
        wrong = np.flatnonzero(predicted != ctx.data.test_labels)
        entry = {
            "step": event.record.step,
            "test_count": len(predicted),
            "wrong": [[int(i), int(predicted[i])] for i in wrong],
            "batch": [int(i) for i in event.batch],
            "batch_predicted": [int(p) for p in event.batch_predictions],
        }
        with self.path.open("a", encoding="utf-8") as f:
            f.write(to_json(entry, separators=(",", ":")) + "\n")


class KernelLog(Hook):
    """At each evaluation, one JSON line: the first layer's weights (a convolution's kernels;
    a dense layer's first MAX_UNITS units, each a 28x28 picture of its weights) and what that
    layer makes of the first test image (its feature maps), each channel quantised to a byte
    between its own minimum and maximum - for the live page's kernels view, about 6 KB an
    evaluation for conv_dropout."""

    MAX_UNITS = 16

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step_files = (path,)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        if not event.weights or event.probe is None:
            return
        kernels = np.asarray(event.weights[0][1])
        maps = np.asarray(event.probe)
        if kernels.ndim == 2:  # a dense first layer: its units' weights over the 784 pixels
            kernels, maps = kernels[:, : self.MAX_UNITS], maps[: self.MAX_UNITS]
        entry = {"step": event.record.step, "kernels": pack(kernels), "maps": pack(maps)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(to_json(entry, separators=(",", ":")) + "\n")


def pack(values: np.ndarray) -> dict[str, Any]:
    """An array as bytes, each channel (the last axis) scaled between its own minimum and
    maximum, so that each kernel or feature map keeps its contrast; ``unpack`` reverses it to
    within 1/255 of each channel's range."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    flat = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values.reshape(-1, 1)
    low, high = flat.min(axis=0), flat.max(axis=0)
    scaled = np.round((flat - low) / np.where(high > low, high - low, 1.0) * 255).astype(np.uint8)
    return {
        "shape": list(values.shape),
        "min": [float(v) for v in low],
        "max": [float(v) for v in high],
        "bytes": base64.b64encode(scaled.tobytes()).decode(),
    }


def unpack(packed: dict[str, Any]) -> np.ndarray:
    shape = packed["shape"]
    channels = len(packed["min"])
    scaled = np.frombuffer(base64.b64decode(packed["bytes"]), np.uint8).reshape(-1, channels)
    low, high = np.array(packed["min"]), np.array(packed["max"])
    return (low + scaled / 255.0 * (high - low)).reshape(shape)


def read_evaluations(path: Path) -> list[dict[str, Any]]:
    """The entries of evaluations.jsonl, oldest first ([] when absent); a torn last line (a
    crash while writing) is skipped."""
    if not path.is_file():
        return []
    entries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DamagedFileError(f"{path}: damaged: not a text file ({type(err).__name__})") from None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    return entries


def latest_predictions(run_dir: Path, test_labels: np.ndarray) -> dict[str, Any] | None:
    """The latest evaluation's predictions the run wrote down: ``step``, ``predictions`` (every
    test digit), ``train_indices`` and ``train_predictions`` (the last training batch).

    From evaluations.jsonl (every evaluation, while training) or predictions.npz (at the end,
    and all a run from before the log has), whichever is later; None when there are none yet
    or they were made for another test set.
    """
    from mnistctl.run.directory import EVALUATIONS_FILE, PREDICTIONS_FILE

    found = []
    entries = read_evaluations(run_dir / EVALUATIONS_FILE)
    if entries and entries[-1].get("test_count") == len(test_labels):
        latest = entries[-1]
        predictions = np.array(test_labels, dtype=np.int64)  # right unless listed as wrong
        for index, guess in latest["wrong"]:
            if 0 <= index < len(predictions):
                predictions[index] = guess
        found.append(
            {
                "step": latest["step"],
                "predictions": predictions,
                "train_indices": np.array(latest["batch"], dtype=np.int64),
                "train_predictions": np.array(latest["batch_predicted"], dtype=np.int64),
            }
        )
    saved = read_predictions(run_dir / PREDICTIONS_FILE)
    if saved is not None and len(saved["predictions"]) == len(test_labels):
        found.append(
            {
                "step": int(saved["step"]),
                "predictions": saved["predictions"].astype(np.int64),
                "train_indices": saved["train_indices"].astype(np.int64),
                "train_predictions": saved["train_predictions"].astype(np.int64),
            }
        )
    return max(found, key=lambda f: f["step"]) if found else None


def read_predictions(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of predictions.npz (None when it is not there yet).

    Raises:
        DamagedFileError: naming the file, when it is truncated or not an archive of arrays.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DamagedFileError(
            f"{path}: damaged: not a readable archive of arrays ({type(err).__name__})"
        ) from None
