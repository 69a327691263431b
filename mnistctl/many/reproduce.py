"""Reproduce the walk-through's results table, one (config, seed) run at a time.

Each finished run becomes a row of ``docs/reproduce-runs.csv`` (the ledger, committed with the
docs), and ``docs/RESULTS.md`` and ``docs/results.csv`` are rebuilt from the ledger after every
run. A later ``reproduce`` skips every (config, seed) already in the ledger with the same
resolved config, so a reproduction that takes hours fills in over several sittings; a run that
was interrupted is resumed from its checkpoint if its run directory is still there (each
(config, seed) is a job of the one driver, :mod:`mnistctl.many.driver`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mnistctl.config import Experiment, flatten, load_config, to_dict
from mnistctl.config.shipped import SHIPPED_DIR, WALKTHROUGH, shipped_configs
from mnistctl.files import write_csv
from mnistctl.many.jobs import Job, OnRay
from mnistctl.many.results import LEDGER, LEDGER_FIELDS, LEDGER_LOCK, read_ledger, write_tables
from mnistctl.run.directory import METRICS_FILE, Run, RunLock
from mnistctl.run.writers import read_metrics
from mnistctl.train.events import Hook, best_row

FASHION = ("conv", "conv_dropout", "record")  # the configs worth a Fashion-MNIST row
ONE_SEED_AFTER_S = 300.0  # a config whose first run takes longer gets only that one seed

# Keys added to the schema after the ledger began, with their defaults.
ADDED_LATER: dict[str, object] = {"train.precision": "float32"}


@dataclass(frozen=True)
class Seeded:
    """One (config, seed) of the table: the job that trains it, and what its ledger row says."""

    config: Path
    seed: int
    experiment: Experiment
    sha: str

    @property
    def label(self) -> str:
        return label(self.experiment)

    @property
    def job(self) -> Job:
        """Its run directory is named by config, seed and config_sha, so a rerun finds it (to
        resume, or to skip when it finished) and a changed config never does."""
        return Job(f"{self.label.replace('@', '-')}-seed{self.seed}-{self.sha}", self.experiment)


def config_sha(exp: Experiment) -> str:
    """Identifies a resolved config apart from its seed, so the seeds of one config are pooled
    and a changed config is never mixed into old results.

    Unset (null) keys, and keys added to the schema later while at their default, are left out,
    so a schema addition does not change the identity of configs that do not use it.
    """
    items = {
        k: v
        for k, v in flatten(to_dict(exp)).items()
        if v is not None and k != "train.seed" and ADDED_LATER.get(k, ...) != v
    }
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:12]


def default_configs(dataset: str) -> list[Path]:
    """The configs ``reproduce`` trains when none are named: the walk-through's, or on
    Fashion-MNIST the convolutional ones and the record (the shipped files, wherever the
    command runs)."""
    shipped = shipped_configs()
    return [shipped[name] for name in (WALKTHROUGH if dataset == "mnist" else FASHION)]


def default_docs_dir(runs_dir: Path, cwd: Path | None = None) -> Path:
    """Where ``reproduce`` keeps its ledger and tables when not told: the checkout's ``docs/``
    when it runs inside the checkout it was installed from (what the README's tables are made
    of), else beside its runs, so it never writes into a directory it did not make."""
    cwd = (cwd or Path.cwd()).resolve()
    checkout = SHIPPED_DIR.parent.parent
    docs = checkout / "docs"
    inside = cwd == checkout or checkout in cwd.parents
    return docs if inside and (checkout / "pyproject.toml").is_file() and docs.is_dir() else runs_dir


def summarize_run(run: Run, config: str, seed: int, sha: str) -> dict[str, object]:
    """A ledger row from a finished run's files."""
    rows = read_metrics(run.path / METRICS_FILE)
    # The walk-through's measure: the highest test accuracy seen, and where (the first time).
    peak = best_row(rows, "test_accuracy")
    first_99 = next((int(r["step"]) for r in rows if r["test_accuracy"] >= 0.99), "")
    record = run.record
    return {
        "config": config,
        "seed": seed,
        "config_sha": sha,
        "steps": int(rows[-1]["step"]),
        "max_test_accuracy": f"{peak['test_accuracy']:.4f}",
        "max_step": int(peak["step"]),
        "final_test_accuracy": f"{rows[-1]['test_accuracy']:.4f}",
        "first_99_step": first_99,
        "wall_s": f"{record.wall_s or 0:.1f}",
        "images_per_s": f"{record.timing.images_per_s or 0:.0f}",
        "cpu": " ".join(filter(None, (record.machine.get("processor"), record.machine.get("family")))),
        "cores": record.machine.get("cores", ""),
        # What decides TensorFlow's kernels (and last digits); older ledger rows lack it.
        "vector": " + ".join(record.machine.get("vector") or []),
        "tensorflow": record.versions.get("tensorflow", ""),
        "finished_at": record.ended_at or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run.name,
    }


def reproduce(
    configs: Sequence[Path],
    *,
    seeds: int | None,
    runs_dir: Path,
    docs_dir: Path,
    overrides: Sequence[str] = (),
    extra_hooks: Sequence[Hook] = (),
    log: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_ray: OnRay | None = None,
) -> list[dict[str, str]]:
    """Train every (config, seed) not yet in the ledger, then rebuild the tables.

    The runs are jobs for the one driver (``mnistctl.many.driver.run_jobs``), trained in turn or
    on Ray, in waves: every job whose config's pace is known, or seed 0 of those whose pace is
    not, until none is left. Each finished run becomes a ledger row at once.

    Args:
        seeds: seeds 0..N-1 for every config; None: three, but only one for a config whose first
            run took over ``ONE_SEED_AFTER_S``.
        on_ray: train side by side on Ray (the sweep engine) instead of one after another.

    Returns:
        The ledger rows of the configs asked for.
    """
    from mnistctl.many.driver import run_jobs

    planned = [Seeded(p, s, e, config_sha(e)) for p in configs for s, e in _seeded(p, seeds or 3, overrides)]
    by_name = {seeded.job.name: seeded for seeded in planned}
    ledger_path = docs_dir / LEDGER

    def record(job: Job, run: Run) -> None:
        seeded = by_name[job.name]
        _append_ledger(ledger_path, summarize_run(run, seeded.label, seeded.seed, seeded.sha))
        write_tables(docs_dir)

    # One reproduction per ledger at a time: two would train the same (config, seed) twice and
    # each rewrite the ledger without the other's rows.
    with RunLock(docs_dir, LEDGER_LOCK):
        while wave := _next_wave(planned, read_ledger(ledger_path), seeds, log):
            runs = run_jobs(
                [seeded.job for seeded in wave],
                runs_dir,
                on_ray=on_ray,
                extra_hooks=extra_hooks,
                log=log,
                should_stop=should_stop,
                on_finished=record,
            )
            if sum(run.record.status.finished for run in runs) < len(wave):
                break  # interrupted or failed: what is left stays pending for the next call
        write_tables(docs_dir)
    wanted = {seeded.label for seeded in planned}
    return [r for r in read_ledger(ledger_path) if r["config"] in wanted]


def _next_wave(
    planned: list[Seeded], ledger: list[dict[str, str]], seeds: int | None, log: Callable[[str], None]
) -> list[Seeded]:
    """The (config, seed)s to train next: those not in the ledger whose config's pace is known
    (or that need no pace: the number of seeds was asked for), and seed 0 of the others."""
    known = {(r["config"], r["config_sha"]) for r in ledger}
    return [
        s
        for s in planned
        if _runnable(s, ledger, seeds, log)
        and (seeds is not None or s.seed == 0 or (s.label, s.sha) in known)
    ]


def _runnable(
    seeded: Seeded, ledger: list[dict[str, str]], seeds: int | None, log: Callable[[str], None]
) -> bool:
    """Whether ``seeded`` is still to train: not in the ledger, and not a further seed of a
    config whose first seed turned out slow (when the number of seeds was left to us)."""
    name = seeded.label
    if any((r["config"], int(r["seed"]), r["config_sha"]) == (name, seeded.seed, seeded.sha) for r in ledger):
        return False
    first = [r for r in ledger if r["config"] == name and r["config_sha"] == seeded.sha]
    if seeds is None and seeded.seed > 0 and first and float(first[0]["wall_s"]) > ONE_SEED_AFTER_S:
        log(f"{name}: one seed only (a run takes {float(first[0]['wall_s']) / 60:.0f} min)")
        return False
    return True


def label(exp: Experiment) -> str:
    """A config's name in the tables: ``conv``; ``conv+bf16`` in bfloat16; ``conv@fashion`` on
    another dataset (the dataset always last)."""
    name = exp.name + ("+bf16" if exp.train.precision == "bfloat16" else "")
    return name if exp.data.dataset == "mnist" else f"{name}@{exp.data.dataset}"


def _seeded(path: Path, seeds: int, overrides: Sequence[str]) -> list[tuple[int, Experiment]]:
    return [(s, load_config(path, [*overrides, f"train.seed={s}"])) for s in range(seeds)]


def _append_ledger(path: Path, row: dict[str, object]) -> None:
    rows = [*read_ledger(path), {k: str(v) for k, v in row.items()}]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, LEDGER_FIELDS, rows, ignore_extra=True)
