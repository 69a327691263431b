"""Commands that read: ``validate`` a config, ``eval`` a checkpoint, ``compare`` and ``plot`` runs,
``code``: a config as a standalone script."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import (
    check_figure_path,
    data_dir_option,
    err,
    loading_tensorflow,
    main,
    out,
    set_option,
    top_option,
    without_cycle_collector,
)
from mnistctl.cli.views import column_texts, is_numeric, print_columns
from mnistctl.errors import MnistctlError
from mnistctl.files import to_json
from mnistctl.report.compare import FORMATS


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@set_option
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and show its layers, output shapes and parameter counts (no TensorFlow).

    A sweep file is checked as ``sweep`` would check it: its base config with the file's
    ``set:``, and every bound of its search space."""
    from mnistctl.config import check_machine, infer_shapes, load_config
    from mnistctl.many.sweep import is_sweep_file, load_sweep

    sweep = None
    if is_sweep_file(config):
        sweep = load_sweep(config, overrides)
        exp = sweep.base
    else:
        exp = load_config(config, overrides)
    check_machine(exp, str(config))
    table = Table(title=f"{exp.name}: {exp.description}", title_justify="left")
    for column in ("#", "layer", "output", "parameters"):
        table.add_column(column, justify="right" if column in ("#", "parameters") else "left")
    shapes = infer_shapes(exp.model)
    for i, (layer, shape) in enumerate(zip(exp.model.layers, shapes, strict=True)):
        table.add_row(str(i), layer.describe(), "x".join(map(str, shape.output)), f"{shape.params:,}")
    out.print(table)
    averaged = f" (evaluated as moving averages, decay {exp.model.ema_decay})" if exp.model.ema_decay else ""
    out.print(
        f"{sum(s.params for s in shapes):,} parameters{averaged}; optimizer {exp.optimizer.tag}, schedule "
        f"{exp.schedule.tag}, {exp.train.steps} steps of {exp.train.batch_size} on {exp.data.dataset}: valid"
    )
    if sweep is not None:
        trials = f"{sweep.trials} trials" + (" at most" if sweep.spec.scheduler else "")
        space = "; ".join(f"{key}: {escape(domain.describe())}" for key, domain in sweep.space.items())
        out.print(
            f"sweep {sweep.name}: {trials} of the config above, {space}; ranked by {sweep.spec.metric}: valid"
        )
        cpus, here = sweep.spec.resources.cpus_per_trial, os.cpu_count() or 1
        if cpus > here:
            err.print(
                f"[yellow]note:[/] resources.cpus_per_trial: {cpus} is more than the {here} CPUs of this "
                "machine: sweep refuses it here, and runs it only on a cluster that has them (--address)"
            )


@main.command("configs")
def list_configs() -> None:
    """The configs that ship with mnistctl, one line each; name one instead of a path
    (mnistctl train conv_dropout). No TensorFlow."""
    from mnistctl.config import load_config, parameter_count
    from mnistctl.config.shipped import PUBLISHED, shipped_configs, shipped_sweeps

    rows = []
    for name, path in shipped_configs().items():
        exp = load_config(path)
        published = PUBLISHED.get(name)
        rows.append(
            (
                name,
                f"{parameter_count(exp.model):,}",
                f"{exp.train.steps:,} x {exp.train.batch_size}",
                published[1] if published else "-",
                exp.description,
            )
        )
    headers = ("config", "parameters", "steps x batch", "walk-through (max)", "model")
    if out.is_terminal:
        table = Table(title="shipped configs: mnistctl train NAME", title_justify="left")
        for header in headers:
            table.add_column(header, justify="right" if header == "parameters" else "left", no_wrap=True)
        for row in rows:
            table.add_row(*map(escape, row))
        out.print(table)
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        for line in (headers, *rows):
            out.print(escape("  ".join(t.ljust(w) for t, w in zip(line, widths, strict=True)).rstrip()))
    out.print(f"sweeps (mnistctl sweep NAME): {', '.join(shipped_sweeps())}")


@main.command("eval")
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--gallery", type=click.Path(path_type=Path), help="Draw the misrecognised digits to this PNG/SVG."
)
@click.option(
    "--confusion", type=click.Path(path_type=Path), help="Draw the confusion matrix to this PNG/SVG."
)
@click.option(
    "--split",
    type=click.Choice(["test", "validation"]),
    default="test",
    show_default=True,
    help="Evaluate on the test images, or on the runs' validation hold-out (data.validation).",
)
@top_option
@data_dir_option
def eval_(
    targets: tuple[Path, ...],
    as_json: bool,
    gallery: Path | None,
    confusion: Path | None,
    split: str,
    top: int | None,
    data_dir: Path | None,
) -> None:
    """Evaluate TARGETS on the test set: a run directory (its selected checkpoint) or a checkpoint;
    several runs, or a directory of runs (a sweep), are evaluated as an ensemble that averages
    their probabilities."""
    from mnistctl.many.ensemble import is_ensemble, members_of

    check_figure_path(gallery)
    check_figure_path(confusion)
    if is_ensemble(targets):
        members = members_of(targets, split=split, top=top, log=lambda line: err.print(escape(line)))
        with loading_tensorflow():
            from mnistctl.report.evaluate import evaluate_ensemble

        ensemble = evaluate_ensemble(members, data_dir=data_dir, split=split)
        report = ensemble.ensemble
    else:
        from mnistctl.run.checkpoints import resolve

        resolve(targets[0])  # not a run or checkpoint: one line now, before TensorFlow loads
        with loading_tensorflow():
            from mnistctl.report.evaluate import evaluate_checkpoint

        ensemble = None
        report = evaluate_checkpoint(targets[0], data_dir=data_dir, split=split)
    if gallery is not None or confusion is not None:
        import numpy as np

        from mnistctl.report import plots

        source = f"{report.run}, checkpoint {report.checkpoint} (step {report.step:,})"
        if gallery is not None:
            figure = plots.gallery(report.images, report.labels, report.predictions, report.confidence,
                                   report.classes, source)  # fmt: skip
            err.print(f"gallery: {plots.save(figure, gallery)}")
        if confusion is not None:
            figure = plots.confusion_figure(np.array(report.confusion), report.classes, source)
            err.print(f"confusion matrix: {plots.save(figure, confusion)}")
    if as_json:
        click.echo(to_json((ensemble or report).as_dict(), indent=2))
        return
    if ensemble is None:
        out.print(f"run: {escape(report.run)}\ncheckpoint: {escape(report.checkpoint)} (step {report.step})")
    else:
        members = Table(title=f"{report.run}, soft voting", title_justify="left")
        for column in ("run", "step", f"{report.split} accuracy", "loss"):
            members.add_column(column, justify="left" if column == "run" else "right")
        for m in ensemble.members:
            members.add_row(
                escape(Path(m.run).name), str(m.step), f"{m.test_accuracy:.4f}", f"{m.test_loss:.4f}"
            )
        members.add_row(
            "[bold]ensemble[/]", "", f"[bold]{report.test_accuracy:.4f}[/]", f"{report.test_loss:.4f}"
        )
        out.print(members)
    out.print(
        f"{report.split} accuracy: [bold]{report.test_accuracy:.4f}[/]  loss: {report.test_loss:.4f}  "
        f"({report.count:,} {report.dataset} {report.split} images)"
    )
    table = Table(title="confusion matrix (rows: true class, columns: predicted)", title_justify="left")
    table.add_column("true")
    for i in range(len(report.classes)):
        table.add_column(str(i), justify="right")
    table.add_column("accuracy", justify="right")
    for i, row in enumerate(report.confusion):
        cells = [
            f"[green]{n}[/]" if j == i else (f"[red]{n}[/]" if n else "[dim]0[/]") for j, n in enumerate(row)
        ]
        table.add_row(
            f"{i} {report.classes[i]}" if report.classes[i] != str(i) else str(i),
            *cells,
            f"{report.per_class_accuracy[i]:.4f}",
        )
    out.print(table)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
)
@click.option("--sort", "sort_key", metavar="KEY", help="Sort by this column (e.g. best_test_accuracy).")
@click.option("--reverse", is_flag=True, help="Sort in descending order.")
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=PATTERN",
    help="Only runs whose column or config key matches (status=completed, run=*conv*, "
    "schedule.lr0=0.004); repeatable.",
)
@click.option("--columns", metavar="A,B,...", help="Show these columns, in this order.")
@click.option(
    "--flat", is_flag=True, help="Only the runs directly in each folder, not those in folders inside it."
)
@without_cycle_collector
def compare(
    paths: tuple[Path, ...],
    fmt: str,
    sort_key: str | None,
    reverse: bool,
    filters: tuple[str, ...],
    columns: str | None,
    flat: bool,
) -> None:
    """Compare runs, one row each: results, then the config keys that differ. PATHS are run
    directories, directories of runs (with the runs in folders inside them: a sweep's trials
    appear as SWEEP/trial-00000), or a sweep (its trials, best first by the sweep's metric)
    (default: runs/). A folder keeps an index of what was read (.mnistctl-index.json), so
    listing it again reads only the runs that changed."""
    from mnistctl.many.sweep import is_sweep_dir, ranking_column
    from mnistctl.many.trials import short_keys
    from mnistctl.report.compare import (
        HEADERS,
        cell,
        choose_columns,
        facts,
        filter_rows,
        fit_columns,
        render,
        summarize_layers,
        table_order,
    )
    from mnistctl.report.compare import compare as compare_runs
    from mnistctl.run.listing import find_runs, save_index

    damaged: list[MnistctlError] = []
    runs = find_runs(list(paths) or [Path("runs")], damaged, recursive=not flat, indexed=True)
    for error in damaged:  # a run whose run.json is unreadable: named, and the others shown
        err.print(f"[yellow]damaged:[/] {escape(str(error))}", soft_wrap=True)
    if not runs:
        raise (
            damaged[0]
            if damaged
            else MnistctlError(f"no runs found in {', '.join(map(str, paths or ['runs']))}")
        )
    if sort_key is None and len(paths) == 1 and is_sweep_dir(paths[0]):
        sort_key, reverse = ranking_column(paths[0]), True
    if sort_key is not None:  # the header's word is accepted too: --sort best
        sort_key = {header: column for column, header in HEADERS.items()}.get(sort_key, sort_key)
    names, rows = compare_runs(runs, sort_key, reverse)
    save_index(runs)  # what was read, kept for the next listing of the folder
    by_name = {run.name: run for run in runs}
    ordered = [by_name[row["run"]] for row in rows]
    if filters:
        rows, ordered = filter_rows(rows, list(filters), ordered)
        if not rows:
            raise MnistctlError(f"no runs match --filter {' --filter '.join(filters)}")
    for row, run in zip(rows, ordered, strict=True):
        unreadable = row["error"] if row.get("status") == "damaged" else facts(run).get("unreadable")
        if unreadable:
            err.print(f"[yellow]damaged:[/] {escape(unreadable)}", soft_wrap=True)
    if fmt in ("table", "markdown"):  # for people: one column per differing layer
        names = summarize_layers(names, rows, ordered)
    if columns:
        names = choose_columns(names, columns)
    if fmt != "table":
        click.echo(render(names, rows, fmt))
        return
    note = ""
    if not columns:  # the terminal's order: what differs between the runs comes early
        names = table_order(names)
        chosen = {row.get("selected_by") for row in rows}
        if len(chosen) == 1 and "selected_by" in names:
            names.remove("selected_by")
            note = f"best: the best evaluation by {chosen.pop()} accuracy; "
    texts = [column_texts(rows, c, cell) for c in names]  # column by column
    labels = short_keys([c for c in names if "." in c])  # config keys: lr0, layers[0].filters
    headers = [HEADERS.get(c) or labels.get(c, c) for c in names]
    headers = [h if headers.count(h) == 1 else c for h, c in zip(headers, names, strict=True)]  # name, name
    widths = [max(len(h), *map(len, texts[i])) + 3 for i, h in enumerate(headers)]
    # When the terminal is narrow, what differs between the runs stays and what they share goes
    # first; columns asked for by name are all shown (the terminal wraps the lines instead).
    differs = [i for i in range(1, len(names)) if len(set(texts[i])) > 1]
    priority = [0, *differs, *(i for i in range(1, len(names)) if i not in differs)]
    if columns:
        keep, left_out = priority, []
    else:
        fitted, _ = fit_columns(priority, [widths[i] for i in priority], out.width - 1)
        keep, left_out = fitted, [names[i] for i in priority if i not in fitted]
    shown = sorted(keep)  # in the table's own order
    print_columns(
        [headers[i] for i in shown], [texts[i] for i in shown], [is_numeric(rows, names[i]) for i in shown]
    )
    if left_out:
        note += (
            f"{len(left_out)} columns left out to fit the terminal: {', '.join(left_out)} "
            "(--columns chooses; --format csv has them all)"
        )
    if note:
        err.print(f"[dim]{escape(note.rstrip('; '))}[/]", soft_wrap=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    help="PNG, SVG or HTML file (default: RUN_DIR/dashboard.png).",
)
@click.option("--compare", "overlay", is_flag=True, help="Overlay the test curves of several runs.")
@click.option("--train", "with_train", is_flag=True, help="With --compare: the training curves too (dashed).")
def plot(run_dirs: tuple[Path, ...], out_file: Path | None, overlay: bool, with_train: bool) -> None:
    """Draw the walk-through's dashboard for a run, or --compare several runs' test curves.

    RUN_DIRS are run directories, or directories of runs; a sweep directory alone draws the
    sweep: parallel coordinates beside its trials' curves (default SWEEP_DIR/sweep.png).
    """
    from mnistctl.many.sweep import is_sweep_dir
    from mnistctl.run.listing import find_runs

    if len(run_dirs) == 1 and is_sweep_dir(run_dirs[0]) and not overlay:
        check_figure_path(out_file)
        from mnistctl.report import plots

        written = plots.save(plots.sweep_figure(run_dirs[0]), out_file or run_dirs[0] / "sweep.png")
        out.print(f"wrote {written}")
        return

    runs = find_runs(list(run_dirs))
    if not runs:
        raise MnistctlError(f"no runs found in {', '.join(map(str, run_dirs))}")
    check_figure_path(out_file)
    from mnistctl.report import plots

    if overlay or len(runs) > 1:
        written = plots.save(plots.compare_figure(runs, train=with_train), out_file or Path("comparison.png"))
    else:
        written = plots.save(plots.dashboard(runs[0]), out_file or runs[0].path / "dashboard.png")
    out.print(f"wrote {written}")


@main.command()
@click.argument("source", metavar="CONFIG|RUN_DIR", type=click.Path(path_type=Path))
@set_option
@click.option("--out", "out_file", type=click.Path(path_type=Path, dir_okay=False), help="Write it here.")
def code(source: Path, overrides: tuple[str, ...], out_file: Path | None) -> None:
    """Write CONFIG (or the config RUN_DIR was trained with) as a standalone tf.compat.v1
    script in the talk's style: placeholders, one line per layer, the loss, the optimizer,
    the learning rate, a Session and the training loop. It needs only TensorFlow and numpy."""
    from mnistctl.config import load_config
    from mnistctl.run.directory import is_run_dir, load_run

    if is_run_dir(source):
        if overrides:
            raise click.UsageError("--set cannot be used with a run directory (it was trained as it was)")
        exp = load_run(source).experiment()
    else:
        exp = load_config(source, overrides)  # checked before TensorFlow is imported
    with loading_tensorflow():
        from mnistctl.model.script import not_written, write_script

    named = " ".join([str(source), *(f"--set {o}" for o in overrides)])
    script = write_script(exp, named)
    if out_file is None:
        click.echo(script, nl=False)
        return
    from mnistctl.files import write_atomic

    write_atomic(out_file, script)
    lines = script.count("\n")
    err.print(f"wrote {escape(str(out_file))} ({lines} lines); run it: python {escape(str(out_file))}")
    for missing in not_written(exp):
        err.print(f"[yellow]not in the script:[/] {escape(missing)}")
