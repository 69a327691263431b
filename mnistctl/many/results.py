"""The tables made of the reproduction ledger: ``results.csv`` and ``RESULTS.md``.

The ledger (``reproduce-runs.csv``: a row per finished (config, seed) run, written by
:mod:`mnistctl.many.reproduce`) is the record; the tables are rebuilt from it whole, grouping
the seeds of each version of a config (mean and spread), the walk-through's rows beside its
published figures, and the ensembles of ``ensembles.json`` (written by
``benchmarks/ensemble_record.py``).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from mnistctl.config.shipped import PUBLISHED, WALKTHROUGH
from mnistctl.errors import DamagedFileError
from mnistctl.files import MAX_RECORD_BYTES, read_json, read_text, write_atomic, write_csv

LEDGER = "reproduce-runs.csv"
ENSEMBLES = "ensembles.json"  # written by benchmarks/ensemble_record.py, shown in RESULTS.md
LEDGER_LOCK = ".reproduce.lock"  # held by the one `reproduce` writing the ledger (git-ignored)
LEDGER_FIELDS = (
    "config", "seed", "config_sha", "steps", "max_test_accuracy", "max_step", "final_test_accuracy",
    "first_99_step", "wall_s", "images_per_s", "cpu", "cores", "tensorflow", "finished_at", "run",
    "vector",
)  # fmt: skip


# The ledger's columns that hold numbers, and whether an empty cell is allowed.
_INTEGERS = {"seed": False, "steps": False, "max_step": False, "first_99_step": True}
_FLOATS = {"max_test_accuracy": False, "final_test_accuracy": False, "wall_s": False, "images_per_s": True}
_ADDED_LATER = {"vector"}  # columns older ledgers lack


def read_ledger(path: Path) -> list[dict[str, str]]:
    """The ledger's rows, checked: every column there once, every number a number. A damaged
    ledger is one line naming the file, the line and the column, before anything trains."""
    if not path.exists():
        return []
    text = read_text(path, MAX_RECORD_BYTES, "reproduce ledger")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    fix = "fix or delete that line (a run it names is kept; reproduce trains what the ledger lacks)"
    twice = sorted({c for c in header if header.count(c) > 1})
    missing = [c for c in LEDGER_FIELDS if c not in header and c not in _ADDED_LATER]
    if text.strip() and (twice or missing):
        problem = f"the column {twice[0]} is there twice" if twice else f"no column {', '.join(missing)}"
        raise DamagedFileError(f"{path}: line 1: {problem}; {fix}")
    rows = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise DamagedFileError(f"{path}: line {line}: more values than columns; {fix}")
        if not row.get("config"):
            continue
        for columns, kind in ((_INTEGERS, int), (_FLOATS, float)):
            for column, empty_ok in columns.items():
                value = row.get(column) or ""
                if value == "" and empty_ok:
                    continue
                try:
                    kind(value)
                except ValueError:
                    what = "an integer" if kind is int else "a number"
                    raise DamagedFileError(
                        f"{path}: line {line}: {column}: expected {what}, got {value!r}; {fix}"
                    ) from None
        rows.append(row)
    return rows


def read_ensembles(path: Path) -> dict[str, dict]:
    """``ensembles.json`` (written by benchmarks/ensemble_record.py): an object of objects."""
    if not path.exists():
        return {}
    ensembles = read_json(path, what="ensembles file")
    for name, entry in ensembles.items():
        try:
            _ensembles_markdown({name: entry})  # everything its rows show is there, and typed
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            what = f"it has no {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
            raise DamagedFileError(f"{path}: {name}: cannot be shown ({what})") from None
    return ensembles


def _mean_std(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def aggregate(ledger: list[dict[str, str]], current: bool = True) -> list[dict[str, object]]:
    """One row per config, in the walk-through's order: its latest version (the ledger is in
    finishing order, so the last sha of a config is current), or with ``current=False`` one
    row per earlier version, so results of a config since changed stay visible."""
    latest: dict[str, str] = {}
    for row in ledger:
        latest[row["config"]] = row["config_sha"]
    versions = dict.fromkeys((r["config"], r["config_sha"]) for r in ledger)
    wanted = [(n, sha) for n, sha in versions if (latest[n] == sha) == current]
    return [
        _summarize(name, sha, [r for r in ledger if (r["config"], r["config_sha"]) == (name, sha)])
        for name, sha in sorted(wanted, key=lambda version: _order(version[0]))
    ]


def _order(name: str) -> tuple:
    base, _, dataset = name.partition("@")
    base = base.removesuffix("+bf16")
    return (dataset, WALKTHROUGH.index(base) if base in WALKTHROUGH else len(WALKTHROUGH), name)


def _summarize(name: str, sha: str, rows: list[dict[str, str]]) -> dict[str, object]:
    reached = [int(r["first_99_step"]) for r in rows if r["first_99_step"]]
    published = PUBLISHED.get(name)
    maxima = [float(r["max_test_accuracy"]) for r in rows]
    return {
        "config": name,
        "published": published[1] if published else "",
        "seeds": len(rows),
        "max_test_accuracy": _mean_std(maxima),
        "final_test_accuracy": _mean_std([float(r["final_test_accuracy"]) for r in rows]),
        "gap_points": f"{(statistics.mean(maxima) - published[0]) * 100:+.2f}" if published else "",
        "first_99_step": _mean_std([float(s) for s in reached], 0)
        + (f" ({len(reached)}/{len(rows)} seeds)" if reached and len(reached) < len(rows) else "")
        if reached
        else "not reached",
        "steps": rows[0]["steps"],
        "wall_s": f"{statistics.mean(float(r['wall_s']) for r in rows):.0f}",
        "images_per_s": f"{statistics.mean(float(r['images_per_s']) for r in rows):,.0f}",
        "machine": f"{rows[0]['cpu']}, {rows[0]['cores']} cores",
        "tensorflow": rows[0]["tensorflow"],
        "config_sha": sha,
    }


def write_tables(docs_dir: Path) -> None:
    """Rebuild docs/results.csv and docs/RESULTS.md from the ledger."""
    ledger = read_ledger(docs_dir / LEDGER)
    table = aggregate(ledger)
    if not table:
        return
    write_csv(docs_dir / "results.csv", list(table[0]), table)
    ensembles_path = docs_dir / ENSEMBLES
    ensembles = read_ensembles(ensembles_path)
    markdown = _markdown(table, aggregate(ledger, current=False), ledger, ensembles)
    write_atomic(docs_dir / "RESULTS.md", markdown)


def _markdown_row(row: dict[str, object], label: str = "") -> str:
    label = label or f"`{row['config']}`"
    return (
        f"| {label} | {row['published'] or '-'} | {row['max_test_accuracy']} "
        f"| {row['final_test_accuracy']} | {row['gap_points'] or '-'} | {row['first_99_step']} "
        f"| {row['seeds']} | {row['wall_s']} s | {row['images_per_s']} |"
    )


def _markdown(
    table: list[dict[str, object]],
    earlier: list[dict[str, object]],
    ledger: list[dict[str, str]],
    ensembles: dict[str, dict] | None = None,
) -> str:
    header = (
        "| config | published (max) | ours: max test accuracy | ours: final test accuracy | gap (points) "
        "| first ≥ 99% at step | seeds | wall time per run | images/s |"
    )
    lines = [
        "# Reproducing the walk-through",
        "",
        "Measured by `mnistctl reproduce` (which rebuilds this file); every number comes from",
        f"`docs/{LEDGER}`, one row per finished (config, seed) run. *Max* is the best test accuracy",
        "seen during a run (evaluated on all 10,000 test images every 100 steps), the measure the",
        "walk-through published; *final* is the accuracy after the last step, the honest one.",
        "Mean ± standard deviation over seeds 0, 1, 2; a config whose run takes over 5 minutes",
        "has one seed (marked 1) unless `--seeds` asks for more. Wall time and images/s come from",
        "the runs themselves (evaluations included in the wall time) and vary with whatever else",
        "the machine was doing;",
        "[BENCHMARKS.md](BENCHMARKS.md) has controlled throughput measurements. Batch norm moved",
        "to TensorFlow's fused kernel on 2026-11-29 at 15:23 UTC (commit 333245e; epsilon 1.001e-5,",
        "the moving variance unbiased): batch-norm runs the ledger shows finished before then would",
        "differ in their last digits if trained again.",
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|",
    ]
    mnist = [row for row in table if "@" not in str(row["config"])]
    others = [row for row in table if "@" in str(row["config"])]
    lines += [_markdown_row(row) for row in mnist if row["config"] in WALKTHROUGH]
    beyond = [row for row in mnist if row["config"] not in WALKTHROUGH]
    if beyond:
        lines += [
            "",
            "## Past the walk-through",
            "",
            "Configs and settings the walk-through never reached, trained from scratch on the same",
            "60,000 training images. `record` aims at a *final* test accuracy of at least 0.9960 (mean",
            "of 3 seeds), each run within 30 minutes on 2 CPU cores; it is evaluated with a moving",
            "average of its weights (`model.ema_decay`), also during training. `+bf16`: the same config with",
            "`train.precision: bfloat16` (convolutions and matrix products in bfloat16). `speedrun` aims",
            "at 99% in seconds: its wall time here is the whole run, evaluation and files included (its",
            "training steps and the whole command are timed apart in BENCHMARKS.md, *Time to 99%*).",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|",
            *(_markdown_row(row) for row in beyond),
        ]
    if others:
        lines += [
            "",
            "## Fashion-MNIST",
            "",
            "The same configs on Fashion-MNIST (`mnistctl reproduce --dataset fashion`). Its maintainers'",
            "benchmark lists about 0.89-0.92 for classic methods; a good CNN reaches about 0.93 and more.",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|",
            *(_markdown_row(row) for row in others),
        ]
    if ensembles:
        lines += _ensembles_markdown(ensembles)
    if earlier:
        lines += [
            "",
            "## Earlier versions",
            "",
            "Configs that have changed since these runs, kept so that no measured result disappears",
            "(the sha identifies the resolved config; each run directory's `config.yaml` holds it whole).",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|",
            *(
                _markdown_row(row, f"`{row['config']}` ({row['config_sha']}, {row['steps']} steps)")
                for row in earlier
            ),
        ]
    lines += ["", _machines([*table, *earlier], ledger), ""]
    lines += [
        "Reproduce it (resumable: finished runs are skipped): `mnistctl reproduce` (the",
        "walk-through's configs), `mnistctl reproduce configs/record.yaml --seeds 3`,",
        "`mnistctl reproduce --dataset fashion`.",
        "",
    ]
    return "\n".join(lines)


def _ensembles_markdown(ensembles: dict[str, dict]) -> list[str]:
    lines = [
        "",
        "## Ensembles",
        "",
        "Soft voting (the mean of the members' probabilities, `mnistctl eval RUN RUN ...`). Each",
        "member trains with the last 5,000 training images held out; members are ranked, and their",
        "number chosen, on that hold-out alone (by accuracy, or by log loss where it says so); the",
        "test set is read once, for the chosen ensemble (`benchmarks/ensemble_record.py`). *Single*",
        "is the members' own test accuracy at their validation-chosen checkpoints, mean ± standard",
        "deviation.",
        "",
        "| sweep | dataset | members (chosen of trained) | validation accuracy | **test accuracy** "
        "| single: test accuracy | training (sum / wall) | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in ensembles.values():
        lines.append(
            f"| `{e['sweep']}` (`{e['config']}`) | {e['dataset']} "
            f"| {e['chosen_size']} of {len(e['members'])} "
            f"| {e['ensemble_validation_accuracy']:.4f} | **{e['ensemble_test_accuracy']:.4f}** "
            f"| {e['single_test_accuracy_mean']:.4f} ± {e['single_test_accuracy_std']:.4f} "
            f"| {e['training_s_sum'] / 3600:.1f} h / "
            + (
                f"{e['training_s_wall'] / 3600:.1f} h "
                if e["training_s_wall"]
                else "- (resumed across sittings) "
            )
            + f"| {e['machine']}, {e['measured']} |"
        )
    for e in ensembles.values():
        by = e.get("choose_by", "accuracy")
        mixed = len(e.get("single_models", [])) > 1  # a pool of several configs
        lines += [
            "",
            f"`{e['sweep']}`: members ranked by validation {'log loss' if by == 'loss' else 'accuracy'}; "
            "validation accuracy of the first n averaged, n = 1, 2, ...: "
            + ", ".join(f"{a:.4f}" for a in e["validation_accuracy_by_size"])
            + (
                "; validation log loss: " + ", ".join(f"{v:.4f}" for v in e["validation_loss_by_size"])
                if "validation_loss_by_size" in e
                else ""
            )
            + f"; {e['chosen_size']} chosen by the {'lowest loss' if by == 'loss' else 'highest accuracy'}.",
            *_single_models_markdown(e),
            *(["", e["note"]] if e.get("note") else []),
            "",
            "| member |"
            + (" config |" if mixed else "")
            + " seed | validation accuracy | test accuracy | chosen "
            "| wall time |",
            "|---|" + ("---|" if mixed else "") + "---|---|---|---|---|",
            *(
                f"| {m['run']} |" + (f" `{m['config']}` |" if mixed else "") + f" {m['seed']} "
                f"| {m['validation_accuracy']:.4f} | {m['test_accuracy']:.4f} "
                f"| {'yes' if m['chosen'] else 'no'} | {m['wall_s']:.0f} s |"
                for m in e["members"]
            ),
        ]
    return lines


def _single_models_markdown(ensemble: dict) -> list[str]:
    """The single-model row of a pool of several configs: the one its validation chose."""
    configs = ensemble.get("single_models", [])
    if len(configs) < 2:
        return []
    chosen = next(c for c in configs if c["chosen"])
    others = ", ".join(
        f"`{c['config']}` {c['validation_accuracy_mean']:.4f} (test {c['test_accuracy_mean']:.4f})"
        for c in configs
        if not c["chosen"]
    )
    return [
        "",
        f"Single model, the config chosen on validation: `{chosen['config']}`, mean validation accuracy "
        f"{chosen['validation_accuracy_mean']:.4f} ± {chosen['validation_accuracy_std']:.4f} over "
        f"{chosen['members']} seeds, against {others}; its **test accuracy: "
        f"{chosen['test_accuracy_mean']:.4f} ± {chosen['test_accuracy_std']:.4f}** "
        f"(trained on {ensemble['train_images']:,} images).",
    ]


def _machines(table: list[dict[str, object]], ledger: list[dict[str, str]]) -> str:
    """Which machine measured which configs (rows of one config may come from several)."""
    shown = {row["config"] for row in table}
    used: dict[str, list[str]] = {}
    for r in ledger:
        vector = r.get("vector") or "vector extensions not recorded"
        names = used.setdefault(
            f"{r['cpu']} ({vector}), {r['cores']} cores, TensorFlow {r['tensorflow']}", []
        )
        if r["config"] in shown and f"`{r['config']}`" not in names:
            names.append(f"`{r['config']}`")
    used = {machine: names for machine, names in used.items() if names}
    if len(used) == 1:
        return f"Machine: {next(iter(used))} (CPU only)."
    return "Machines (CPU only): " + "; ".join(f"{m}: {', '.join(n)}" for m, n in used.items()) + "."
