"""Commands that train: ``train`` (one run, or a resume) and ``reproduce`` (the ledger of runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from mnistctl.cli.app import data_dir_option, dataset_choice, err, logger, main, out, quiet_option, set_option
from mnistctl.cli.views import ProgressView, StopOnSignal, WatchView
from mnistctl.hooks import Hook
from mnistctl.runs import Run, Status


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@set_option
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--name", help="Run name (default: the config's name).")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    metavar="RUN_DIR",
    help="Continue RUN_DIR from its latest checkpoint, in place (CONFIG optional: it must match the run's).",
)
@click.option("--force", is_flag=True, help="With --resume: accept changed train/schedule settings.")
@data_dir_option
@quiet_option
@click.option(
    "--watch",
    type=click.IntRange(min=1),
    metavar="N",
    help="Redraw RUN_DIR/dashboard.png every N evaluations; keep it open in an image viewer.",
)
def train(
    config: Path | None,
    overrides: tuple[str, ...],
    runs_dir: Path,
    name: str | None,
    resume: Path | None,
    force: bool,
    data_dir: Path | None,
    quiet: bool,
    watch: int | None,
) -> None:
    """Train CONFIG (a YAML file) in a new run directory under --runs-dir, or --resume a run."""
    from mnistctl.config import check_machine, load_config

    if config is None and resume is None:
        raise click.UsageError("give a CONFIG to train, or --resume RUN_DIR")
    if resume is None:
        exp = load_config(config, overrides)  # validated before TensorFlow is even imported
        check_machine(exp, str(config))
        if name is not None:
            _check_name(name)
    elif name is not None:
        raise click.UsageError("--name cannot be used with --resume (the run keeps its directory)")
    from mnistctl.experiment import resume_experiment, run_experiment

    hooks: list[Hook] = [ProgressView(out, quiet)] + ([WatchView(watch)] if watch else [])
    common = dict(data_dir=data_dir, extra_hooks=hooks, log=logger(quiet))
    with StopOnSignal() as stop:
        if resume is None:
            run = run_experiment(exp, runs_dir=runs_dir, name=name, should_stop=stop, **common)
        else:
            run = resume_experiment(
                resume, overrides=overrides, config=config, force=force, should_stop=stop, **common
            )
    _report(run)
    if run.record.status is Status.INTERRUPTED:
        err.print(
            f"[yellow]interrupted[/] at step {run.record.steps_done}; continue with: "
            f"mnistctl train --resume {run.path}"
        )
        sys.exit(stop.exit_code)


def _report(run: Run) -> None:
    record = run.record
    if record.final is not None:
        best = (
            f"best {record.best_test_accuracy:.4f} at step {record.best_step}"
            + (", chosen by validation" if record.selected_by == "validation" else "")
            if record.best_test_accuracy is not None
            else "no best yet"
        )
        out.print(
            f"final test accuracy: [bold]{record.final.test_accuracy:.4f}[/] ({best}), "
            f"{record.wall_s or 0:.0f} s, {record.timing.images_per_s or 0:,.0f} img/s"
        )
    out.print(f"run: {run.path}")


def _check_name(name: str) -> None:
    from mnistctl.config import NAME_RULE, ConfigError, is_valid_name

    if not is_valid_name(name):
        raise ConfigError(f"--name: expected {NAME_RULE}, got {name!r}")


@main.command()
@click.argument("configs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--seeds",
    type=click.IntRange(1, 20),
    default=None,
    help="Seeds 0..N-1 for every config. Default: 3, but 1 for a config whose first run took over 5 minutes.",
)
@click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=Path("runs/reproduce"), show_default=True
)
@click.option("--docs", "docs_dir", type=click.Path(path_type=Path), default=Path("docs"), show_default=True)
@click.option(
    "--dataset",
    type=dataset_choice(),
    default="mnist",
    show_default=True,
    help="fashion: train on Fashion-MNIST (default configs: conv, conv_dropout, record).",
)
@set_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def reproduce(
    configs: tuple[Path, ...],
    seeds: int | None,
    runs_dir: Path,
    docs_dir: Path,
    dataset: str,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Train the walk-through's configs (default: all of them) with several seeds and write
    docs/RESULTS.md and docs/results.csv. Finished (config, seed) runs are skipped next time."""
    from mnistctl.config import check_machine, load_config
    from mnistctl.reproduce import default_configs
    from mnistctl.reproduce import reproduce as run_reproduction

    paths = list(configs) or default_configs(dataset)
    overrides = (*overrides, f"data.dataset={dataset}")
    for path in paths:  # every config is checked before the first (long) run starts
        check_machine(load_config(path, overrides), str(path))
    with StopOnSignal() as stop:
        rows = run_reproduction(
            paths,
            seeds=seeds,
            runs_dir=runs_dir,
            docs_dir=docs_dir,
            overrides=overrides,
            extra_hooks=[ProgressView(out, True)],
            log=logger(quiet),
            should_stop=stop,
        )
    table = Table(title=f"{len(rows)} finished runs (see {docs_dir / 'RESULTS.md'})", title_justify="left")
    columns = ("config", "seed", "max_test_accuracy", "final_test_accuracy", "wall_s")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    out.print(table)
    if stop():
        err.print("[yellow]interrupted[/]: run the same command again to continue")
        sys.exit(stop.exit_code)
