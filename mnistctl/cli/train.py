"""Commands that train: ``train`` (one run, or a resume) and ``reproduce`` (the ledger of runs)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import (
    data_dir_option,
    dataset_choice,
    err,
    loading_tensorflow,
    logger,
    main,
    out,
    quiet_option,
    set_option,
)
from mnistctl.cli.views import LivePage, ProgressView, RedrawView, StopOnSignal
from mnistctl.run.directory import Run
from mnistctl.status import Status
from mnistctl.train.events import Hook


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
    "--redraw",
    type=click.IntRange(min=1),
    metavar="N",
    help="Redraw RUN_DIR/dashboard.png every N evaluations; keep it open in an image viewer.",
)
# The flag's name until this version (it read as the live page's `mnistctl watch`); kept hidden
# for one release.
@click.option("--watch", "watch_alias", type=click.IntRange(min=1), hidden=True)
@click.option(
    "--live",
    is_flag=True,
    help="Serve the six panels on a local page while it trains (mnistctl watch RUN_DIR, in its own process).",
)
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8502, show_default=True, help="The --live page's port."
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
    redraw: int | None,
    watch_alias: int | None,
    live: bool,
    port: int,
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
    else:  # every refusal that needs only the run's files comes now, before TensorFlow loads
        from mnistctl.run.directory import RunLock, load_run
        from mnistctl.run.resume import check_resume

        load_run(resume)  # not a run directory: one line, and no lock file made in it
        with RunLock(resume):  # trained by another process: "in use by pid ..."
            check_resume(resume, overrides=overrides, config=config, force=force)
    if live:
        check_port(port)
    with loading_tensorflow():
        from mnistctl.run.experiment import resume_experiment, run_experiment

    redraw = redraw or watch_alias
    hooks: list[Hook] = [ProgressView(out, quiet)] + ([RedrawView(redraw)] if redraw else [])
    page = LivePage(port, err) if live else None
    hooks += [page] if page else []
    common = dict(data_dir=data_dir, extra_hooks=hooks, log=logger(quiet))
    with StopOnSignal() as stop:
        if resume is None:
            record = {"rerun_of": str(rerun_of)} if (rerun_of := _rerun_of(config)) else None
            run = run_experiment(exp, runs_dir=runs_dir, name=name, should_stop=stop, record=record, **common)
        else:
            run = resume_experiment(
                resume, overrides=overrides, config=config, force=force, should_stop=stop, **common
            )
    _report(run)
    if run.record.status is Status.INTERRUPTED:
        if page:
            page.stop()
        err.print(
            f"[yellow]interrupted[/] at step {run.record.steps_done}; continue with: "
            f"mnistctl train --resume {run.path}"
        )
        sys.exit(stop.exit_code)
    if page:
        page.keep_serving(run.record.status)


def check_port(port: int) -> None:
    """A live page's port taken is one line now, not after the data loads; naming the page of
    mnistctl's that holds it, if one does."""
    from mnistctl.cli.serving import whose_page
    from mnistctl.errors import MnistctlError
    from mnistctl.serving.listen import bind

    try:
        bind("127.0.0.1", port).close()
    except MnistctlError as error:
        raise MnistctlError(f"{error}{whose_page('127.0.0.1', port)}") from None


def _rerun_of(config: Path | None) -> Path | None:
    """The run a config was taken from (``train RUN/config.yaml``): recorded as ``rerun_of``."""
    from mnistctl.run.directory import CONFIG_FILE, is_run_dir

    if config is None or config.name != CONFIG_FILE or not is_run_dir(config.parent):
        return None
    return config.parent.resolve()


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
    if record.status.ended_by_rule:
        out.print(
            f"{record.status} after {record.steps_done} of {record.steps_total} steps: "
            + escape(record.stop_reason or "")
        )
    out.print(f"run: {escape(str(run.path))}")


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
@click.option(
    "--docs",
    "docs_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the ledger, RESULTS.md and results.csv go (default: docs/ inside the mnistctl "
    "checkout, else --runs-dir).",
)
@click.option(
    "--dataset",
    type=dataset_choice(),
    default="mnist",
    show_default=True,
    help="fashion: train on Fashion-MNIST (default configs: conv, conv_dropout, record).",
)
@set_option
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    metavar="N",
    help="Train N runs side by side on Ray, one core each (default: one after another, on every core).",
)
@click.option("--address", metavar="HOST:PORT", help="Train on this Ray cluster (side by side).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def reproduce(
    configs: tuple[Path, ...],
    seeds: int | None,
    runs_dir: Path,
    docs_dir: Path | None,
    dataset: str,
    overrides: tuple[str, ...],
    max_concurrent: int | None,
    address: str | None,
    quiet: bool,
) -> None:
    """Train the walk-through's configs (default: all of them; CONFIGS are paths or shipped
    names) with several seeds and write RESULTS.md and results.csv. Finished (config, seed)
    runs are skipped next time."""
    from mnistctl.config import check_machine, load_config
    from mnistctl.config.shipped import resolve_config
    from mnistctl.many.jobs import OnRay
    from mnistctl.many.reproduce import default_configs, default_docs_dir
    from mnistctl.many.reproduce import reproduce as run_reproduction

    paths = [resolve_config(c) for c in configs] or default_configs(dataset)
    docs_dir = docs_dir or default_docs_dir(runs_dir)
    overrides = (*overrides, f"data.dataset={dataset}")
    for path in paths:  # every config is checked before the first (long) run starts
        check_machine(load_config(path, overrides), str(path))
    from mnistctl.many.ray_session import stop_ray

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
            on_ray=OnRay(address, max_concurrent, group="reproduce", quiet=quiet)
            if max_concurrent or address
            else None,
        )
        stop_ray()
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


@main.command()
@click.argument("source", type=click.Path(path_type=Path), required=False)
@set_option
@click.option(
    "--grid",
    "grids",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="With a config instead of a sweep file: try every combination of these values (repeatable).",
)
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--name", help="The sweep's directory under --runs-dir (default: the sweep file's name).")
@click.option("--max-concurrent", type=click.IntRange(min=1), metavar="N", help="Trials at once.")
@click.option(
    "--address",
    metavar="HOST:PORT",
    help="Run on this Ray cluster (default: a Ray on this machine, bound to 127.0.0.1).",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="SWEEP_DIR",
    help="Continue a stopped sweep: finished trials are kept, unfinished ones resume.",
)
@data_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No line per trial.")
def sweep(
    source: Path | None,
    overrides: tuple[str, ...],
    grids: tuple[str, ...],
    runs_dir: Path,
    name: str | None,
    max_concurrent: int | None,
    address: str | None,
    resume: Path | None,
    data_dir: Path | None,
    quiet: bool,
) -> None:
    """Train many runs on Ray Tune: SOURCE is a sweep file (a base config and a search space),
    or a config with --grid. Each trial is a run directory under --runs-dir/<sweep name>/."""
    from mnistctl.many import sweep as sweeps

    if resume is not None:
        if source is not None or overrides or grids or name:
            raise click.UsageError(
                "--resume continues the sweep as it was started: give no SOURCE, --set, --grid or --name"
            )
        plan = sweeps.read_sweep_dir(resume)
    elif source is None:
        raise click.UsageError("give a SWEEP file (or a config with --grid), or --resume SWEEP_DIR")
    elif sweeps.is_sweep_file(source):
        if grids:
            raise click.UsageError("--grid is for a config; a sweep file has its space: in the file")
        plan = sweeps.load_sweep(source, overrides, name)
    else:
        plan = sweeps.grid_sweep(source, grids, overrides, logger(quiet), name)
    from mnistctl.many.engine import run_sweep
    from mnistctl.many.ray_session import stop_ray

    try:
        outcome = run_sweep(
            plan,
            runs_dir=runs_dir,
            sweep_dir=resume,
            address=address,
            max_concurrent=max_concurrent,
            data_dir=data_dir,
            quiet=quiet,
        )
    finally:
        stop_ray()
    if outcome.interrupted:  # stopping already: a further Ctrl-C would only cut the last lines short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not outcome.trials:
        from mnistctl.errors import MnistctlError

        if outcome.interrupted:
            err.print(
                f"[yellow]interrupted[/] before the first trial: start it with --resume {outcome.sweep_dir}"
            )
            sys.exit(130)
        raise MnistctlError(
            f"{outcome.sweep_dir}: every trial failed before it made a run directory "
            f"(Ray Tune's record of them: {outcome.sweep_dir / 'tune'})"
        )
    _sweep_table(plan, outcome)
    if outcome.failed:
        err.print(
            f"[bold red]error:[/] {len(outcome.failed)} trial(s) failed after their retries: "
            f"{', '.join(outcome.failed)} (why: above; whole tracebacks in {outcome.sweep_dir / 'ray.log'}); "
            f"once the cause is fixed, try them again with: mnistctl sweep --resume {outcome.sweep_dir}"
        )
    if outcome.interrupted:
        err.print(f"[yellow]interrupted[/]: continue with: mnistctl sweep --resume {outcome.sweep_dir}")
        sys.exit(130)
    if outcome.failed:
        sys.exit(1)


def _short(value, column: str) -> str:
    from mnistctl.report.compare import cell

    return (
        f"{value:.4g}"
        if isinstance(value, float) and not column.endswith("accuracy")
        else cell(value, column)
    )


def _sweep_table(plan, outcome) -> None:
    """The trials, best first: a table in a terminal, aligned plain text elsewhere (a log)."""
    from mnistctl.many.trials import short_keys

    metric = plan.spec.metric
    rows = outcome.trials
    title = f"{len(rows)} trials in {outcome.wall_s:.0f} s, best first by {metric} ({outcome.sweep_dir})"
    columns = ["trial", *plan.space, "status", "steps", metric, "best_test_accuracy", "best_step"]
    labels = short_keys(list(plan.space)) | {"best_test_accuracy": "best", "best_step": "at step"}
    headers = [labels.get(c, c) for c in columns]
    cells = [[_short(row.get(c), c) for c in columns] for row in rows[:20]]
    if out.is_terminal:
        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, no_wrap=True)
        for line in cells:
            table.add_row(*line)
        out.print(table)
    else:
        widths = [max([len(h), *(len(line[i]) for line in cells)]) for i, h in enumerate(headers)]
        out.print(title)
        for line in [headers, *cells]:
            out.print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())
    out.print(f"best: the test accuracy at each trial's best evaluation by {metric}, as compare shows it")
    if len(rows) > 20:
        out.print(f"(the first 20 of {len(rows)}; all of them in {outcome.sweep_dir / 'trials.csv'})")
    if outcome.best:
        out.print(
            f"best: {outcome.best['trial']} ({metric} {outcome.best[metric]:.4f}): "
            f"mnistctl eval {outcome.best['run']}"
        )
