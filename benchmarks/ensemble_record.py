"""An ensemble record chosen without looking at the test set, from finished sweeps of members.

    mnistctl sweep configs/sweeps/record_ensemble.yaml --max-concurrent 2   # the members (resumable:
                                                                           # --resume runs/record_ensemble)
    python benchmarks/ensemble_record.py runs/record_ensemble               # choose, then test once
    python benchmarks/ensemble_record.py runs/A runs/B --name AB --choose-by loss   # a pool of sweeps

1. Every finished member is evaluated on the validation hold-out (the last 5,000 training
   images, which no member trained on) and ranked by its own validation accuracy (ties: the
   lower loss), or by its validation loss with ``--choose-by loss``.
2. The number of members is the n whose first-n average is best on validation by the same
   measure - ``mnistctl.many.ensemble.choose_size``.
3. Only then is the test set read: once, for the chosen ensemble; each member's test accuracy
   at its validation-selected checkpoint is reported beside it, never used.

Writes the result under the sweep's name (or ``--name``) in docs/ensembles.json;
``mnistctl reproduce`` (and this script) rebuild docs/RESULTS.md, whose "Ensembles" section
shows it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistctl.files import to_json  # noqa: E402
from mnistctl.machine import summary as machine_summary  # noqa: E402
from mnistctl.many.ensemble import CHOOSE_BY, choose_size, members_of  # noqa: E402
from mnistctl.many.results import ENSEMBLES, write_tables  # noqa: E402
from mnistctl.report.evaluate import evaluate_ensemble  # noqa: E402
from mnistctl.run.directory import METRICS_FILE  # noqa: E402
from mnistctl.run.writers import read_metrics, training_time  # noqa: E402


def _seconds(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    return round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0


def _single_models(rows: list[dict]) -> list[dict]:
    """Each config of the pool as a single model: its members' mean validation accuracy, which
    alone chooses the config (``chosen``), and beside it their mean test accuracy."""
    configs = []
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        validation, validation_std = _mean_std([r["validation_accuracy"] for r in mine])
        test, test_std = _mean_std([r["test_accuracy"] for r in mine])
        configs.append(
            {
                "config": name,
                "members": len(mine),
                "validation_accuracy_mean": validation,
                "validation_accuracy_std": validation_std,
                "test_accuracy_mean": test,
                "test_accuracy_std": test_std,
            }
        )
    best = max(configs, key=lambda c: c["validation_accuracy_mean"])
    for c in configs:
        c["chosen"] = c is best
    return configs


def _wall(members: list) -> float | None:
    """Each sweep's first start to its last end, added up over the sweeps of a pool (run at
    different times); not known for a sweep resumed across sittings (the gaps between them)."""
    total = 0.0
    for sweep in dict.fromkeys(m.run.path.parent for m in members):
        records = [m.run.record for m in members if m.run.path.parent == sweep]
        starts = [_seconds(r.started_at) for r in records]
        ends = [_seconds(r.ended_at) for r in records]
        if None in starts + ends or any(r.resumes for r in records):
            return None
        total += max(ends) - min(starts)
    return round(total)


def record(
    sweep_dirs: list[Path] | Path, data_dir: Path | None = None, name: str | None = None, by: str = "accuracy"
) -> dict:
    sweep_dirs = [sweep_dirs] if isinstance(sweep_dirs, Path) else sweep_dirs
    started = time.perf_counter()
    members = members_of(sweep_dirs, split="validation", log=print)
    validation = evaluate_ensemble(members, data_dir=data_dir, split="validation")
    scores = validation.members
    if by == "loss":
        order = sorted(range(len(members)), key=lambda i: scores[i].test_loss)
    else:
        order = sorted(range(len(members)), key=lambda i: (-scores[i].test_accuracy, scores[i].test_loss))
    labels = validation.ensemble.labels
    size, curve, losses = choose_size([scores[i].probabilities for i in order], labels, by=by)
    chosen = [members[i] for i in order[:size]]
    test = evaluate_ensemble(chosen, data_dir=data_dir, split="test")  # the one look at the test set

    several = len(sweep_dirs) > 1
    rows = []
    for rank, i in enumerate(order):
        run = members[i].run
        rows.append(
            {
                "run": f"{run.path.parent.name}/{run.name}" if several else run.name,
                "config": members[i].experiment.name,
                "seed": members[i].experiment.train.seed,
                "step": scores[i].step,
                "validation_accuracy": round(scores[i].test_accuracy, 4),
                "validation_loss": round(scores[i].test_loss, 4),
                "test_accuracy": run.record.best_test_accuracy,  # at the validation-chosen step
                "chosen": rank < size,
                "wall_s": training_time(read_metrics(run.path / METRICS_FILE)),
            }
        )
    single_mean, single_std = _mean_std([r["test_accuracy"] for r in rows])
    by_config = _single_models(rows)
    first = members[0].experiment
    configs = list(dict.fromkeys(r["config"] for r in rows))
    return {
        "sweep": name or "+".join(d.name for d in sweep_dirs),
        "sweeps": [d.name for d in sweep_dirs],
        "config": ", ".join(configs),
        "choose_by": by,
        "dataset": first.data.dataset,
        "train_images": 60000 - (first.data.validation or 0),
        "validation_images": len(labels),
        "members": rows,
        "validation_accuracy_by_size": [round(a, 4) for a in curve],
        "validation_loss_by_size": [round(v, 4) for v in losses],
        "chosen_size": size,
        "ensemble_validation_accuracy": round(curve[size - 1], 4),
        "ensemble_test_accuracy": round(test.ensemble.test_accuracy, 4),
        "ensemble_test_loss": round(test.ensemble.test_loss, 4),
        "single_test_accuracy_mean": single_mean,
        "single_test_accuracy_std": single_std,
        "single_models": by_config,
        "training_s_sum": round(sum(r["wall_s"] or 0 for r in rows)),
        "training_s_wall": _wall(members),
        "choose_and_test_s": round(time.perf_counter() - started),
        "machine": machine_summary(),
        "measured": dt.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="SWEEP_DIR")
    parser.add_argument("--name", help="the record's name in docs/ensembles.json (default: the sweeps')")
    parser.add_argument(
        "--choose-by", choices=CHOOSE_BY, default="accuracy", help="rank members and choose their number by"
    )
    parser.add_argument("--note", help="a sentence shown under the record in RESULTS.md (kept when rerun)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    result = record(args.sweep_dirs, args.data_dir, args.name, args.choose_by)
    path = args.docs / ENSEMBLES
    known = json.loads(path.read_text()) if path.is_file() else {}
    note = args.note or known.get(result["sweep"], {}).get("note")
    known[result["sweep"]] = {**result, **({"note": note} if note else {})}
    path.write_text(to_json(known, indent=2) + "\n")
    write_tables(args.docs)
    print(to_json({k: v for k, v in result.items() if k != "members"}, indent=2))


if __name__ == "__main__":
    main()
