"""Side-by-side summary of runs: results, then only the config keys that differ.

Reads ``run.json``, ``config.yaml`` and ``metrics.csv``; never imports TensorFlow.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import multiprocessing as mp
import os
import re
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from mnistctl.config import Experiment, flatten, to_dict
from mnistctl.errors import MnistctlError
from mnistctl.files import csv_text, to_json
from mnistctl.run.directory import METRICS_FILE, Run
from mnistctl.run.labels import read_labels
from mnistctl.run.writers import read_metrics
from mnistctl.train.events import max_test_accuracy

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
    "commit",
    "tags",
)
FORMATS = ("table", "csv", "json", "markdown")
TEXT_FORMATS = FORMATS[1:]  # what render() writes; the table is the CLI's


def facts(run: Run) -> dict[str, Any]:
    """What a listing shows of a run, worked out once: its result row (``summarize``), its
    resolved config as flat keys, its description and its layers described. A run listed
    through a folder's index (mnistctl.run.listing) brings them from there when none of its
    files changed; otherwise they are read now, and ``save_index`` keeps them."""
    if run.derived is None:
        try:
            row = summarize(run)
        except MnistctlError as err:  # one damaged run: shown as such, the others as usual
            row = {"run": run.name, "status": "damaged", "error": str(err)}
        config, unreadable = _config_items(run)
        run.derived = {
            "row": row,
            "config": config,
            "unreadable": unreadable,  # why the config is not shown: said beside the table
            "description": _description(run),
            "layers": _layers(run),
        }
    return run.derived


PARALLEL_FROM = 400  # runs to read before a second process is worth its start


def read_facts(runs: list[Run]) -> None:
    """``facts`` for every run, the ones to read from their files shared among the machine's
    cores when there are many (a folder listed for the first time: about a millisecond a run,
    most of it parsing config.yaml)."""
    fresh = [run for run in runs if run.derived is None]
    workers = min(os.cpu_count() or 1, 8)
    if len(fresh) < PARALLEL_FROM or workers < 2 or "fork" not in mp.get_all_start_methods():
        for run in fresh:
            facts(run)
        return
    global _forked
    _forked = fresh  # the workers are forked with it: each run is named by its place alone
    chunk = -(-len(fresh) // (workers * 4))
    try:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
            found = pool.map(_facts_at, range(len(fresh)), chunksize=chunk)
            for run, derived in zip(fresh, found, strict=True):
                run.derived = derived
    finally:
        _forked = []


_forked: list[Run] = []


def _facts_at(i: int) -> dict[str, Any]:
    return facts(_forked[i])


def _config_items(run: Run) -> tuple[dict[str, Any], str | None]:
    """A run's resolved config as flat keys (without its description), or {} and why it cannot
    be read. Parsed once per write of config.yaml, by the run itself (with the alias guard and
    the schema every config gets)."""
    try:
        return dict(_flat_config(run.experiment())), None
    except MnistctlError as err:
        return {}, str(err)


@functools.lru_cache(maxsize=16384)  # a folder of thousands of runs, each read once per change
def _flat_config(exp: Experiment) -> tuple[tuple[str, Any], ...]:
    flat = flatten(to_dict(exp))
    flat.pop("description", None)
    return tuple(flat.items())


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
        # The code: the checkout's commit, + when its working tree had changes (code.patch).
        "commit": (record.git_commit[:10] + ("+" if record.git_dirty else "")) if record.git_commit else None,
        "tags": ",".join(read_labels(run.path).tags) or None,
    }


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


OPTIONAL_COLUMNS = (
    "selected_by",
    "best_validation_accuracy",
    "commit",
    "tags",
)  # shown when some run has them


def compare(runs: list[Run], sort: str | None = None, reverse: bool = False) -> tuple[list[str], list[dict]]:
    """Rows for the runs, with the config keys whose values differ between them.

    Returns:
        (columns, rows): the result columns followed by the differing config keys.
    """
    read_facts(runs)
    configs = [facts(r)["config"] for r in runs]
    differing = _differing_keys(configs)
    rows = []
    for run, config in zip(runs, configs, strict=True):
        row = {**facts(run)["row"], "run": run.name}
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


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = sorted({k for c in configs for k in c}, key=_key_order)
    return [k for k in keys if _distinct([c.get(k) for c in configs]) > 1]


def _distinct(values: list[Any]) -> int:
    """How many different values (a key's values have one type: the schema's)."""
    try:
        return len(set(values))
    except TypeError:  # lists and mappings
        return len({json.dumps(v, sort_keys=True) for v in values})


def differing_settings(runs: list[Run]) -> tuple[list[str], list[dict[str, Any]]]:
    """What sets the runs apart: the config keys whose values differ (the run's name aside;
    layers summarised per layer, as ``summarize_layers`` does), and each run's values."""
    configs = [facts(r)["config"] for r in runs]
    differing = [k for k in _differing_keys(configs) if k != "name"]
    rows = [{k: c.get(k) for k in differing} for c in configs]
    columns = summarize_layers(differing, rows, runs)
    return columns, [{k: row[k] for k in columns} for row in rows]


_LAYER_KEY = re.compile(r"^model\.layers(\[\d+\])?")

# Short headers for the terminal table (csv, json and markdown keep the full names).
HEADERS = {
    "best_test_accuracy": "best",
    "best_step": "at step",
    "selected_by": "chosen by",
    "best_validation_accuracy": "validation",
    "max_test_accuracy": "max test",
    "final_test_accuracy": "final test",
    "final_train_accuracy": "final train",
    "wall_s": "wall s",
}


def summarize_layers(columns: list[str], rows: list[dict], runs: list[Run]) -> list[str]:
    """For people: the differing ``model.layers[i].*`` keys become one ``layers[i]`` column per
    layer that differs, holding the layer as ``validate`` describes it (``conv 5x5x12 s2``).

    Changes ``rows`` in place; returns the new columns.
    """
    differing = sorted(
        {int(m.group(1)[1:-1]) for c in columns if (m := _LAYER_KEY.match(c)) and m.group(1)}
        | ({-1} if "model.layers" in columns else set())
    )
    if not differing:
        return columns
    if -1 in differing:  # the number of layers differs: every index any run has
        depth = max((len(facts(run)["layers"]) for run in runs), default=0)
        differing = list(range(depth))
    described = [facts(run)["layers"] for run in runs]
    for i in differing:
        texts = [layers[i] if i < len(layers) else "-" for layers in described]
        for row, text in zip(rows, _what_differs(texts), strict=True):
            row[f"layers[{i}]"] = text
    first = next(i for i, c in enumerate(columns) if _LAYER_KEY.match(c))
    kept = [c for c in columns if not _LAYER_KEY.match(c)]
    return kept[:first] + [f"layers[{i}]" for i in differing] + kept[first:]


def _what_differs(texts: list[str]) -> list[str]:
    """Layer descriptions cut to their type and the words that differ between runs
    (``conv 6x6x13``, ``conv 6x6x18``), when all have the same shape of words."""
    words = [t.split() for t in texts]
    if len({len(w) for w in words}) != 1 or len({w[0] for w in words}) != 1:
        return texts
    keep = [0] + [j for j in range(1, len(words[0])) if len({w[j] for w in words}) > 1]
    return [" ".join(w[j] for j in keep) for w in words]


def _layers(run: Run) -> list[str]:
    try:
        return [layer.describe() for layer in run.experiment().model.layers]
    except MnistctlError:
        return []


def filter_rows(rows: list[dict], filters: list[str], runs: list[Run]) -> tuple[list[dict], list[Run]]:
    """The rows (and their runs) matching every ``KEY=PATTERN`` (shell-style ``*`` and ``?``):
    KEY a column (``status``, ``run``) or any config key path (``schedule.lr0``).

    Raises:
        MnistctlError: a filter that is not KEY=PATTERN, or a key no run has.
    """
    configs = [{**facts(run)["config"], "description": facts(run)["description"]} for run in runs]
    kept_rows, kept_runs = [], []
    tests = []
    for expression in filters:
        key, sep, pattern = expression.partition("=")
        if not sep or not key:
            raise MnistctlError(f"--filter {expression}: expected KEY=PATTERN, e.g. status=completed")
        if key != "tag" and not any(key in row for row in rows) and not any(key in c for c in configs):
            raise MnistctlError(f"--filter {expression}: no run has a column or config key {key!r}")
        tests.append((key, pattern))

    def matches(values: dict[str, Any], key: str, pattern: str) -> bool:
        if key == "tag":  # tag=NAME: one of the run's tags matches
            return any(fnmatch.fnmatchcase(t, pattern) for t in (values.get("tags") or "").split(",") if t)
        return fnmatch.fnmatchcase(cell(values.get(key), key), pattern)

    for row, run, config in zip(rows, runs, configs, strict=True):
        values = {**config, **row}
        if all(matches(values, key, pattern) for key, pattern in tests):
            kept_rows.append(row)
            kept_runs.append(run)
    return kept_rows, kept_runs


def _description(run: Run) -> str | None:
    try:
        return run.experiment().description
    except MnistctlError:
        return None


def choose_columns(columns: list[str], wanted: str) -> list[str]:
    """``--columns a,b,c``: those columns, in that order (``run`` always first)."""
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise MnistctlError(
            f"--columns: unknown column {unknown[0]!r}; expected some of: {', '.join(columns)}"
        )
    return ["run", *(n for n in names if n != "run")]


FIRST = RESULT_COLUMNS[: RESULT_COLUMNS.index("best_validation_accuracy") + 1]  # run and best


def table_order(columns: list[str]) -> list[str]:
    """For the terminal: the run and its best result, then what differs between the runs (the
    reason to compare), then the rest of the results - so a narrow terminal cuts the least."""
    first = [c for c in FIRST if c in columns]
    results = [c for c in RESULT_COLUMNS if c in columns and c not in first]
    return first + [c for c in columns if c not in first and c not in results] + results


def fit_columns(columns: list[str], widths: list[int], room: int) -> tuple[list[str], list[str]]:
    """The leading columns whose widths fit in ``room`` characters, and those left out."""
    used, shown = 0, []
    for column, width in zip(columns, widths, strict=True):
        if used + width > room and shown:
            break
        used += width
        shown.append(column)
    return shown, columns[len(shown) :]


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
        return to_json([{c: r.get(c) for c in columns} for r in rows], indent=2)
    if fmt == "csv":
        return csv_text(columns, rows, ignore_extra=True).rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows]
        return "\n".join(lines)
    raise MnistctlError(f"--format: unknown format {fmt!r}; expected one of: {', '.join(FORMATS)}")
