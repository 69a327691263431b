"""The live page: the walk-through's six panels for a run, and every run's curve for a folder
of runs (a sweep, a runs directory), updated while they train.

It reads only run directories (metrics.csv, distributions.csv, evaluations.jsonl, run.json), so
it watches a run trained by another process, or elsewhere, and never slows the training: the
page asks every second for what changed since it last asked. No TensorFlow.
"""

from __future__ import annotations

import base64
import math
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnistctl.dataset import Dataset, load_experiment_data
from mnistctl.errors import MnistctlError
from mnistctl.many.lesson import is_lesson, lesson_summary
from mnistctl.report.compare import differing_settings
from mnistctl.run.directory import (
    DISTRIBUTIONS_FILE,
    KERNELS_FILE,
    METRICS_FILE,
    Run,
    RunError,
    is_run_dir,
    load_run,
)
from mnistctl.run.labels import read_labels
from mnistctl.run.listing import MAX_DEPTH, find_runs
from mnistctl.run.tail import MetricsTail
from mnistctl.run.writers import latest_predictions, read_distributions, read_evaluations, read_metrics

DIGITS_SHOWN = 100  # digits in each of the two digit panels, as in the walk-through


MAX_DATASETS = 3  # datasets the page keeps loaded at once
MAX_NAME_BYTES = 255  # the longest file name Linux allows
MAX_TAILS = 4096  # runs whose metrics the page keeps read (a few floats per evaluation each)


class LiveError(MnistctlError):
    """A path the live page cannot show."""


@dataclass
class Watched:
    """What ``watch`` was given: one run, or a folder whose runs are listed."""

    path: Path
    single: bool

    @classmethod
    def of(cls, path: Path) -> Watched:
        if is_run_dir(path):
            load_run(path)  # one clear line now if its run.json is damaged
            return cls(path, single=True)
        if path.is_dir():
            return cls(path, single=False)
        raise LiveError(f"{path}: no such run or runs directory")

    def runs(self, damaged: list[RunError] | None = None) -> list[Run]:
        if self.single:
            return [load_run(self.path)]
        return find_runs([self.path], damaged=[] if damaged is None else damaged, recursive=True)

    def run(self, name: str) -> Run:
        """The run called ``name`` here: the folder's own, or one in a folder inside it
        (``sweep/trial-00000``); never a path outside the folder."""
        if len(name.encode()) > MAX_NAME_BYTES * 4:  # longer than any path of runs: no such run
            raise LiveError(f"no run {name[:40]!r}... ({len(name):,} characters) here")
        parts = name.split("/")
        if self.single:
            if name != self.path.name:
                raise LiveError(f"no run {name!r} here")
            return load_run(self.path)
        bad = any(p in ("", ".", "..") or len(p.encode()) > MAX_NAME_BYTES for p in parts)
        path = self.path.joinpath(*parts) if not bad else self.path
        if bad or len(parts) > MAX_DEPTH + 1 or not is_run_dir(path):
            raise LiveError(f"no run {name!r} here")
        run = load_run(path)
        run.label = name if len(parts) > 1 else ""
        return run


def run_summary(run: Run, tail: MetricsTail | None = None) -> dict[str, Any]:
    """A run's line in the folder view: status, progress and its selection curve (its metrics
    from ``tail`` when the page keeps one for it)."""
    try:
        rows = tail.read() if tail is not None else read_metrics(run.path / METRICS_FILE)
        metric = run.experiment().selection_metric
    except MnistctlError as err:
        return {"name": run.name, "status": "damaged", "error": str(err), "curve": []}
    best = run.best(rows)
    labels = read_labels(run.path)
    return {
        "name": run.name,
        "status": str(run.status),
        "steps": int(rows[-1]["step"]) if rows else 0,
        "total": run.record.steps_total,
        "metric": metric,
        "curve": [[int(r["step"]), _finite(r[metric])] for r in rows],
        # The one meaning of best (as compare's): the selected evaluation, its test accuracy
        # beside the value that chose it (``value``, on the curve drawn), and which split chose.
        "best": {
            "step": int(best["step"]),
            "value": _finite(best[metric]),
            "test": _finite(best["test_accuracy"]),
            "by": metric.removesuffix("_accuracy"),
        }
        if best
        else None,
        "tags": list(labels.tags),
        "notes": [{"at": n.at, "text": n.text} for n in labels.notes[-3:]],  # the latest few
    }


def run_state(
    run: Run, known_rows: int, known_step: int, data: Dataset, tail: MetricsTail | None = None
) -> dict[str, Any]:
    """What the six panels need that the page does not have yet: metric rows after the first
    ``known_rows``, the weights' and biases' percentile bands, and the digit panels when an
    evaluation newer than ``known_step`` has been logged. With a ``tail``, only the rows
    appended since its last read are parsed."""
    tail = tail or MetricsTail(run.path / METRICS_FILE)
    if known_rows > tail.count():  # the run was resumed and redid some steps: start over
        known_rows, known_step = 0, -1
    rows = tail.rows_from(known_rows)
    bands = {
        kind: values.tolist()
        for kind, values in read_distributions(run.path / DISTRIBUTIONS_FILE).items()
        if kind in ("weights", "biases")
    }
    state: dict[str, Any] = {
        "name": run.name,
        "status": str(run.status),
        "total": run.record.steps_total,
        "selection_metric": run.experiment().selection_metric,
        "best_step": run.record.best_step,  # the selected evaluation, as run.json keeps it
        "from_row": known_rows,
        "rows": [{k: _finite(v) for k, v in r.items()} for r in rows],
        "bands": bands,
        "digits": None,
    }
    digits = _latest_digits(run, data)
    if digits is not None and digits["step"] != known_step:
        state["digits"] = digits
    return state


def kernel_state(run: Run, after: int, data: Dataset) -> dict[str, Any]:
    """The kernels view: the first layer's weights and its feature maps of the first test image
    at each evaluation after step ``after`` (as KernelLog packed them), and that image."""
    entries = [e for e in read_evaluations(run.path / KERNELS_FILE) if e["step"] > after]
    layer = run.experiment().model.layers[0]
    return {
        "name": run.name,
        "layer": layer.describe(),
        "kind": layer.tag,
        "digit": _panel(data.test_images[:1], data.test_labels[:1], data.test_labels[:1]),
        "classes": list(data.classes),
        "entries": entries,
    }


def _latest_digits(run: Run, data: Dataset) -> dict[str, Any] | None:
    """The two digit panels from the latest evaluation the run wrote down."""
    latest = latest_predictions(run.path, data.test_labels)
    if latest is None:
        return None
    predicted, batch = latest["predictions"], latest["train_indices"]
    keep = (batch >= 0) & (batch < len(data.train_images))
    batch, batch_predicted = batch[keep][:DIGITS_SHOWN], latest["train_predictions"][keep][:DIGITS_SHOWN]
    wrong = np.flatnonzero(predicted != data.test_labels)
    right = np.flatnonzero(predicted == data.test_labels)
    shown = np.concatenate([wrong, right])[:DIGITS_SHOWN]  # the misrecognised first
    return {
        "step": latest["step"],
        "classes": list(data.classes),
        "batch": _panel(data.train_images[batch], data.train_labels[batch], batch_predicted),
        "test": _panel(data.test_images[shown], data.test_labels[shown], predicted[shown]),
        "test_wrong": int(wrong.size),
        "test_count": len(predicted),
    }


def _panel(images: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    return {
        "pixels": base64.b64encode(np.ascontiguousarray(images, dtype=np.uint8).tobytes()).decode(),
        "labels": [int(v) for v in labels],
        "predicted": [int(v) for v in predicted],
    }


def _finite(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def create_live_app(path: Path, data_dir: Path | None = None) -> FastAPI:
    """The live page's app for a run directory or a folder of runs."""
    watched = Watched.of(path)
    page = resources.files("mnistctl").joinpath("static/live.html").read_text(encoding="utf-8")
    # The last few (dataset, sizes) opened: runs of a sweep share one; a folder of runs on many
    # subsets does not keep each in memory for good (~54 MB each).
    datasets: OrderedDict[tuple, Dataset] = OrderedDict()
    tails: OrderedDict[Path, MetricsTail] = OrderedDict()  # each run's metrics, read as they grow

    def tail_of(run: Run) -> MetricsTail:
        key = run.path / METRICS_FILE
        if key not in tails:
            tails[key] = MetricsTail(key)
            while len(tails) > MAX_TAILS:
                tails.popitem(last=False)
        tails.move_to_end(key)
        return tails[key]

    app = FastAPI(title="mnistctl live", docs_url=None, redoc_url=None)

    @app.exception_handler(LiveError)
    async def not_here(request: Request, exc: LiveError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404)

    @app.exception_handler(MnistctlError)
    async def damaged(request: Request, exc: MnistctlError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        damaged: list[RunError] = []
        found = watched.runs(damaged)
        columns, settings = differing_settings(found)
        summaries = [
            {**run_summary(r, tail_of(r)), "settings": row} for r, row in zip(found, settings, strict=True)
        ]
        return {
            "path": str(watched.path),
            "single": watched.single,
            "settings": columns,
            "runs": summaries,
            "damaged": [str(e) for e in damaged],  # runs whose run.json cannot be read: said, not hidden
            "lesson": not watched.single and is_lesson(watched.path),
        }

    @app.get("/api/lesson")
    def lesson() -> dict[str, Any]:
        if watched.single or not is_lesson(watched.path):
            raise LiveError(f"{watched.path}: not a lesson (mnistctl lesson makes one)")
        return lesson_summary(watched.path)

    def data_of(run: Run) -> Dataset:
        exp = run.experiment()
        key = (exp.data.dataset, exp.data.train_size, exp.data.test_size, exp.data.validation)
        if key not in datasets:
            datasets[key] = load_experiment_data(exp, data_dir=data_dir)
            while len(datasets) > MAX_DATASETS:
                datasets.popitem(last=False)
        datasets.move_to_end(key)
        return datasets[key]

    @app.get("/api/kernels/{name:path}")
    def kernels(name: str, after: int = -1) -> dict[str, Any]:
        run = watched.run(name)
        return kernel_state(run, after, data_of(run))

    @app.get("/api/runs/{name:path}")
    def state(name: str, rows: int = 0, step: int = -1) -> dict[str, Any]:
        run = watched.run(name)
        return run_state(run, max(rows, 0), step, data_of(run), tail_of(run))

    return app
