"""Side-by-side summary of runs: results, then only the config keys that differ.

Reads ``run.json``, ``config.yaml`` and ``metrics.csv``; never imports TensorFlow.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import yaml

from mnistctl.config import flatten
from mnistctl.errors import MnistctlError
from mnistctl.hooks import max_test_accuracy
from mnistctl.metrics import read_metrics
from mnistctl.runs import CONFIG_FILE, METRICS_FILE, Run

RESULT_COLUMNS = (
    "run",
    "status",
    "steps",
    "best_test_accuracy",
    "best_step",
    "selected_by",
    "best_validation_accuracy",
    "max_test_accuracy",
    "final_test_accuracy",
    "final_train_accuracy",
    "wall_s",
    "parameters",
)
FORMATS = ("table", "csv", "json", "markdown")
TEXT_FORMATS = FORMATS[1:]  # what render() writes; the table is the CLI's


def _config_items(run: Run) -> dict[str, Any]:
    try:
        raw = yaml.safe_load((run.path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    flat = flatten(raw) if isinstance(raw, dict) else {}
    flat.pop("description", None)
    return flat


def summarize(run: Run) -> dict[str, Any]:
    """One run's results, from its metrics (falling back on run.json).

    ``best_*`` is the run's best evaluation (``hooks.best_row``: by validation accuracy when
    images were held out), the one whose checkpoint ``eval`` and ``export`` use;
    ``max_test_accuracy`` is the walk-through's measure, the highest test accuracy seen.
    """
    rows = read_metrics(run.path / METRICS_FILE)
    record = run.record
    try:
        best = run.best(rows)
        selected_by = "validation" if run.experiment().data.validation else "test"
    except MnistctlError:  # a config this version cannot read: still show what is known
        best, selected_by = None, record.selected_by
    last = rows[-1] if rows else None
    done = int(last["step"]) if last else record.steps_done
    total = record.steps_total
    return {
        "run": run.name,
        "status": str(run.status),
        "steps": f"{done}/{total}" if total else str(done),
        "best_test_accuracy": best["test_accuracy"] if best else record.best_test_accuracy,
        "best_step": int(best["step"]) if best else record.best_step,
        "selected_by": selected_by,
        "best_validation_accuracy": _number(best["validation_accuracy"]) if best else None,
        "max_test_accuracy": max_test_accuracy(rows),
        "final_test_accuracy": last["test_accuracy"] if last else None,
        "final_train_accuracy": last["train_accuracy"] if last else None,
        "wall_s": round(record.wall_s, 1) if record.wall_s is not None else None,
        "parameters": record.parameters,
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


OPTIONAL_COLUMNS = ("selected_by", "best_validation_accuracy")  # shown when some run has them


def compare(runs: list[Run], sort: str | None = None, reverse: bool = False) -> tuple[list[str], list[dict]]:
    """Rows for the runs, with the config keys whose values differ between them.

    Returns:
        (columns, rows): the result columns followed by the differing config keys.
    """
    configs = [_config_items(r) for r in runs]
    keys = sorted({k for c in configs for k in c}, key=_key_order)
    differing = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    rows = []
    for run, config in zip(runs, configs, strict=True):
        try:
            row = summarize(run)
        except MnistctlError as err:  # one damaged run: shown as such, the others as usual
            row = {"run": run.name, "status": "damaged", "error": str(err)}
        row.update({k: config.get(k) for k in differing})
        rows.append(row)
    shown = [
        c
        for c in RESULT_COLUMNS
        if c not in OPTIONAL_COLUMNS or any(r.get(c) not in (None, "test") for r in rows)
    ]
    columns = shown + differing
    if sort:
        if sort not in columns:
            raise MnistctlError(f"--sort: unknown column {sort!r}; expected one of: {', '.join(columns)}")
        present = [r for r in rows if r.get(sort) is not None]
        missing = [r for r in rows if r.get(sort) is None]
        rows = sorted(present, key=lambda r: _sortable(r[sort]), reverse=reverse) + missing
    return columns, rows


def _key_order(key: str) -> tuple:
    # Keep config keys in a readable order: model first, then optimizer, schedule, train, data.
    sections = ("name", "model", "optimizer", "schedule", "train", "data")
    head = key.split(".")[0].split("[")[0]
    return (sections.index(head) if head in sections else len(sections), key)


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def cell(value: Any, column: str = "") -> str:
    """Text for a table cell: accuracies to 4 decimals, other numbers as short as exact."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if column.endswith("accuracy") else f"{value:g}"
    return str(value)


def render(columns: list[str], rows: list[dict], fmt: str) -> str:
    """csv, json or markdown text (the rich table is drawn by the CLI)."""
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows]
        return "\n".join(lines)
    raise MnistctlError(f"--format: unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
