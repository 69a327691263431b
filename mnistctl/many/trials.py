"""A sweep directory's trials: one row per trial (its parameters, status, steps, the sweep's
metric at the trial's best evaluation by it, the test accuracy there - compare's "best" - and
its step, the final test accuracy, wall time, node and run directory), read from the run
directories alone, as ``trials.csv`` and as the tables of ``sweep``, ``compare`` and ``plot``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mnistctl.config import flatten, to_dict
from mnistctl.files import write_csv
from mnistctl.many.sweep import TRIALS_FILE, read_sweep_dir
from mnistctl.run.directory import METRICS_FILE
from mnistctl.run.listing import find_runs
from mnistctl.run.writers import read_metrics
from mnistctl.train.events import best_row


def trial_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per trial from the run directories alone, best first by the sweep's metric."""
    sweep = read_sweep_dir(sweep_dir)
    metric = sweep.spec.metric
    rows = []
    for run in find_runs([sweep_dir]):
        metrics = read_metrics(run.path / METRICS_FILE)
        best = best_row(metrics, metric)
        config = flatten(to_dict(run.experiment()))
        record = run.record
        row = {"trial": run.name}
        row.update({key: config.get(key) for key in sweep.space})
        row.update(
            status=str(run.status),
            steps=int(metrics[-1]["step"]) if metrics else record.steps_done,
            **{metric: best[metric] if best else None},
            # compare's "best": the test accuracy of the evaluation the metric chose
            best_test_accuracy=best["test_accuracy"] if best else None,
            best_step=int(best["step"]) if best else None,
            final_test_accuracy=metrics[-1]["test_accuracy"] if metrics else None,
            wall_s=round(record.wall_s, 1) if record.wall_s is not None else None,
            node=record.node,
            run=str(run.path),
        )
        rows.append(row)
    return sorted(rows, key=lambda r: -math.inf if r[metric] is None else -r[metric])


def write_trials(sweep_dir: Path) -> list[dict[str, Any]]:
    rows = trial_rows(sweep_dir)
    if rows:
        write_csv(sweep_dir / TRIALS_FILE, list(rows[0]), rows)
    return rows


def short_value(value: Any) -> str:
    """A parameter's value in a line of text: numbers to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Readable labels for key paths: the last name (``lr0``), or the last two where the last
    name is shared (``layers[0].filters``, ``layers[1].filters``)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {
        key: name if last.count(name) == 1 else ".".join(key.split(".")[-2:])
        for key, name in zip(keys, last, strict=True)
    }
