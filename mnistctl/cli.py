"""The command line: parse arguments, call one library function, print with rich.

This is the only module that prints. TensorFlow is imported inside the commands that build
graphs (train, eval), so ``--help``, ``validate``, ``compare`` and ``data info`` start fast.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from mnistctl import __version__
from mnistctl.errors import MnistctlError
from mnistctl.hooks import EvalRecord, Hook, TrainContext

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Group(click.Group):
    """Turns every MnistctlError into one line on stderr and its exit code: no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MnistctlError as error:
            err.print(f"[bold red]error:[/] {error}", soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            sys.exit(130)
        except OSError as error:  # a full disk, a read-only directory: say so, in one line
            where = f" ({error.filename})" if error.filename else ""
            err.print(f"[bold red]error:[/] {error.strerror or error}{where}", soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnistctl")
def main() -> None:
    """Train, evaluate and compare the networks of the "TensorFlow and deep learning,
    without a PhD" MNIST walk-through, from YAML configs.

    \b
    mnistctl train configs/conv_dropout.yaml     train; results go to runs/<time>-<name>/
    mnistctl eval runs/<run>                     test accuracy, per class, confusion matrix
    mnistctl compare runs/                       the runs side by side
    """


_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.steps=2000 --set model.layers[3].dropout=0.5 (repeatable).",
)
_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A directory holding the four IDX files (gzipped or not); tried before the cache.",
)


# -- train --------------------------------------------------------------------------------


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 16) -> str:
    """A tiny unicode chart of the last ``width`` values."""
    values = [v for v in values[-width:] if v == v]  # drop NaN
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


class ProgressView(Hook):
    """A live progress bar with the latest metrics and sparklines, or one line per evaluation
    when the output is not a terminal (CI, pipes). ``quiet`` silences both."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress: Progress | None = None
        self.task = None
        self.accuracies: list[float] = []
        self.losses: list[float] = []

    def begin(self, ctx: TrainContext) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TextColumn("lr {task.fields[lr]:.5f}  {task.fields[speed]} img/s"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(
            ctx.experiment.name,
            total=ctx.total_steps,
            completed=ctx.step,
            lr=ctx.experiment.schedule(ctx.step),
            speed="-",
        )
        self.metrics = Text("waiting for the first evaluation", style="dim", overflow="fold")
        self.screen = Live(Group(self.progress, self.metrics), console=self.console, refresh_per_second=4)
        self.screen.start()

    def after_step(self, ctx: TrainContext) -> None:
        if self.progress is not None and (ctx.step % 10 == 0 or ctx.step == ctx.total_steps):
            self.progress.update(self.task, completed=ctx.step, lr=ctx.experiment.schedule(ctx.step))

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        best = f"{ctx.best_accuracy:.4f}@{ctx.best_step}"
        self.accuracies.append(record.test_accuracy)
        self.losses.append(record.test_loss)
        if self.progress is not None:
            self.metrics.plain = ""
            self.metrics.style = ""
            self.metrics.append(f"train acc {record.train_accuracy:.4f} loss {record.train_loss:.4f}   ")
            self.metrics.append(f"test acc {record.test_accuracy:.4f} ")
            self.metrics.append(sparkline(self.accuracies), style="green")
            self.metrics.append(f" loss {record.test_loss:.4f} ")
            self.metrics.append(sparkline(self.losses), style="red")
            self.metrics.append(f"   best {best}", style="bold")
            self.progress.update(self.task, speed=f"{record.images_per_s:,.0f}")
        elif not self.quiet:
            self.console.print(
                f"step {record.step}/{ctx.total_steps}  lr {record.learning_rate:.5f}  "
                f"train acc {record.train_accuracy:.4f} loss {record.train_loss:.4f}  "
                f"test acc {record.test_accuracy:.4f} loss {record.test_loss:.4f}  "
                f"best {best}  {record.images_per_s:,.0f} img/s"
            )

    def end(self, ctx: TrainContext, status: str) -> None:
        if self.progress is not None:
            self.screen.stop()


class WatchView(Hook):
    """Redraws RUN_DIR/dashboard.png every ``every`` evaluations (``train --watch N``).

    Only numbers the run already wrote are drawn; no TensorFlow work is added. Drawing takes
    about a second, which the training waits for.
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self.evaluations = 0

    def after_eval(self, ctx: TrainContext, record: EvalRecord, improved: bool) -> None:
        self.evaluations += 1
        if self.evaluations % self.every == 0:
            self._draw(ctx)

    def end(self, ctx: TrainContext, status: str) -> None:
        if status in ("completed", "interrupted"):
            self._draw(ctx)

    def _draw(self, ctx: TrainContext) -> None:
        from mnistctl import plots
        from mnistctl.runs import load_run

        run_dir = ctx.run_dir
        plots.save(plots.dashboard(load_run(run_dir)), run_dir / "dashboard.png")


class _StopOnSignal:
    """First Ctrl-C or SIGTERM: finish the step, checkpoint, stop. A second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> _StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        err.print(
            f"[yellow]{signal.Signals(signum).name}[/]: stopping after this step and saving a checkpoint"
        )

    def __call__(self) -> bool:
        return self.signum is not None


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@_set_option
@click.option("--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True)
@click.option("--name", help="Run name (default: the config's name).")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    metavar="RUN_DIR",
    help="Continue RUN_DIR from its latest checkpoint, in place (CONFIG optional: it must match the run's).",
)
@click.option("--force", is_flag=True, help="With --resume: accept changed train/schedule settings.")
@_data_dir_option
@click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")
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
    from mnistctl.config import load_config

    if config is None and resume is None:
        raise click.UsageError("give a CONFIG to train, or --resume RUN_DIR")
    if resume is None:
        exp = load_config(config, overrides)  # validated before TensorFlow is even imported
        if name is not None:
            _check_name(name)
    elif name is not None:
        raise click.UsageError("--name cannot be used with --resume (the run keeps its directory)")
    from mnistctl.train import resume_experiment, run_experiment

    hooks: list[Hook] = [ProgressView(out, quiet)] + ([WatchView(watch)] if watch else [])
    log = (lambda msg: None) if quiet else (lambda msg: err.print(f"[dim]{msg}[/]"))
    with _StopOnSignal() as stop:
        if resume is None:
            run = run_experiment(exp, runs_dir, name, data_dir, hooks, log, stop)
        else:
            run = resume_experiment(resume, overrides, config, force, data_dir, hooks, log, stop)
    final = run.meta.get("final") or {}
    status = run.meta.get("status")
    if final:
        out.print(
            f"final test accuracy: [bold]{final['test_accuracy']:.4f}[/] "
            f"(best {run.meta['best_test_accuracy']:.4f} at step {run.meta['best_step']}), "
            f"{run.meta.get('wall_s', 0):.0f} s, {run.meta['timing']['images_per_s'] or 0:,.0f} img/s"
        )
    out.print(f"run: {run.path}")
    if status == "interrupted":
        err.print(
            f"[yellow]interrupted[/] at step {run.meta.get('steps_done')}; continue with: "
            f"mnistctl train --resume {run.path}"
        )
        sys.exit(128 + (stop.signum or signal.SIGINT))


def _check_name(name: str) -> None:
    from mnistctl.config import NAME_RULE, ConfigError, is_valid_name

    if not is_valid_name(name):
        raise ConfigError(f"--name: expected {NAME_RULE}, got {name!r}")


# -- validate -----------------------------------------------------------------------------


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@_set_option
def validate(config: Path, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and show its layers, output shapes and parameter counts (no TensorFlow)."""
    from mnistctl.config import infer_shapes, load_config

    exp = load_config(config, overrides)
    table = Table(title=f"{exp.name}: {exp.description}", title_justify="left")
    for column in ("#", "layer", "output", "parameters"):
        table.add_column(column, justify="right" if column in ("#", "parameters") else "left")
    shapes = infer_shapes(exp.model)
    for i, (layer, shape) in enumerate(zip(exp.model.layers, shapes, strict=True)):
        table.add_row(str(i), _describe_layer(layer), "x".join(map(str, shape.output)), f"{shape.params:,}")
    out.print(table)
    averaged = f" (evaluated as moving averages, decay {exp.model.ema_decay})" if exp.model.ema_decay else ""
    out.print(
        f"{sum(s.params for s in shapes):,} parameters{averaged}; optimizer {exp.optimizer.tag}, schedule "
        f"{exp.schedule.tag}, {exp.train.steps} steps of {exp.train.batch_size} on {exp.data.dataset}: valid"
    )


def _describe_layer(layer: Any) -> str:
    if layer.tag == "conv":
        text = f"conv {layer.kernel}x{layer.kernel}x{layer.filters} stride {layer.stride} {layer.padding}"
    else:
        text = f"dense {layer.units}"
    text += f" {layer.activation}"
    if layer.batch_norm:
        text += " +batchnorm"
    if layer.dropout:
        text += f" dropout {layer.dropout:g}"
    return text


# -- eval ---------------------------------------------------------------------------------


@main.command("eval")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--gallery", type=click.Path(path_type=Path), help="Draw the misrecognised digits to this PNG/SVG."
)
@click.option(
    "--confusion", type=click.Path(path_type=Path), help="Draw the confusion matrix to this PNG/SVG."
)
@_data_dir_option
def eval_(
    target: Path, as_json: bool, gallery: Path | None, confusion: Path | None, data_dir: Path | None
) -> None:
    """Evaluate TARGET on the test set: a run directory (its best checkpoint) or a checkpoint."""
    from mnistctl.evaluate import evaluate_checkpoint

    for path in (gallery, confusion):
        if path is not None:
            _check_figure_path(path)
    report = evaluate_checkpoint(target, data_dir)
    if gallery is not None or confusion is not None:
        import numpy as np

        from mnistctl import plots

        if gallery is not None:
            figure = plots.gallery(report.images, report.labels, report.predictions, report.confidence)
            err.print(f"gallery: {plots.save(figure, gallery)}")
        if confusion is not None:
            figure = plots.confusion_figure(np.array(report.confusion), report.classes)
            err.print(f"confusion matrix: {plots.save(figure, confusion)}")
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    out.print(f"run: {report.run}\ncheckpoint: {report.checkpoint} (step {report.step})")
    out.print(
        f"test accuracy: [bold]{report.test_accuracy:.4f}[/]  loss: {report.test_loss:.4f}  "
        f"({report.count:,} {report.dataset} test images)"
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


# -- reproduce ----------------------------------------------------------------------------


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
    type=click.Choice(["mnist", "fashion"]),
    default="mnist",
    show_default=True,
    help="fashion: train on Fashion-MNIST (default configs: conv, conv_dropout, record).",
)
@_set_option
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
    from mnistctl.config import load_config
    from mnistctl.reproduce import WALKTHROUGH
    from mnistctl.reproduce import reproduce as run_reproduction

    defaults = WALKTHROUGH if dataset == "mnist" else ("conv", "conv_dropout", "record")
    paths = list(configs) or [Path("configs") / f"{name}.yaml" for name in defaults]
    overrides = (*overrides, f"data.dataset={dataset}")
    for path in paths:  # every config is checked before the first (long) run starts
        load_config(path, overrides)
    log = (lambda msg: None) if quiet else (lambda msg: err.print(f"[dim]{msg}[/]"))
    with _StopOnSignal() as stop:
        rows = run_reproduction(
            paths, seeds, runs_dir, docs_dir, overrides, [ProgressView(out, True)], log, stop
        )
    table = Table(title=f"{len(rows)} finished runs (see {docs_dir / 'RESULTS.md'})", title_justify="left")
    for column in ("config", "seed", "max_test_accuracy", "final_test_accuracy", "wall_s"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            *(row[c] for c in ("config", "seed", "max_test_accuracy", "final_test_accuracy", "wall_s"))
        )
    out.print(table)
    if stop():
        err.print("[yellow]interrupted[/]: run the same command again to continue")
        sys.exit(128 + (stop.signum or signal.SIGINT))


# -- plot ---------------------------------------------------------------------------------


def _check_figure_path(path: Path) -> None:
    if path.suffix.lower() not in (".png", ".svg", ".html"):
        raise MnistctlError(
            f"{path}: unsupported format {path.suffix or '(none)'}; expected one of: .png, .svg, .html"
        )


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    help="PNG, SVG or HTML file (default: RUN_DIR/dashboard.png).",
)
@click.option("--compare", "overlay", is_flag=True, help="Overlay the test curves of several runs.")
def plot(run_dirs: tuple[Path, ...], out_file: Path | None, overlay: bool) -> None:
    """Draw the walk-through's dashboard for a run, or --compare several runs' test curves.

    RUN_DIRS are run directories, or directories of runs.
    """
    from mnistctl.runs import find_runs

    if out_file is not None:
        _check_figure_path(out_file)
    runs = find_runs(list(run_dirs))
    if not runs:
        raise MnistctlError(f"no runs found in {', '.join(map(str, run_dirs))}")
    from mnistctl import plots

    if overlay or len(runs) > 1:
        written = plots.save(plots.compare_figure(runs), out_file or Path("comparison.png"))
    else:
        written = plots.save(plots.dashboard(runs[0]), out_file or runs[0].path / "dashboard.png")
    out.print(f"wrote {written}")


# -- export, predict, serve ----------------------------------------------------------------


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory for the SavedModel."
)
@click.option("--force", is_flag=True, help="Replace an existing export.")
def export(target: Path, out_dir: Path, force: bool) -> None:
    """Export TARGET (a run directory's best checkpoint, or a checkpoint) as a TensorFlow SavedModel
    (tag serve, signature serving_default): the format TensorFlow Serving loads."""
    from mnistctl.export import export_saved_model

    info = export_saved_model(target, out_dir, overwrite=force)
    out.print(f"exported {info['run_name']} step {info['step']} to {out_dir}")
    out.print(
        "input: images float32 [N, 28, 28, 1] in [0, 1]; outputs: probabilities [N, 10], classes [N]; "
        f"try: saved_model_cli show --dir {out_dir} --all"
    )


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def predict(source: Path, images: tuple[Path, ...], as_json: bool) -> None:
    """Classify your own digit pictures (PNG, JPEG, ...) with SOURCE, a run directory or an export.

    Each picture is turned into an MNIST-style input first: grayscale, dark-on-light inverted,
    cropped to the ink, scaled into 20x20 and centred by its centre of mass in 28x28.
    """
    import numpy as np

    from mnistctl.images import ImageError, preprocess

    inputs = []
    for path in images:  # every file is checked before the model is loaded
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(f"{path}: cannot read: {error.strerror}") from None
        inputs.append(preprocess(data, str(path)))
    from mnistctl.export import Predictor

    predictor = Predictor(source)
    probabilities = predictor.predict(np.stack(inputs))
    classes = predictor.info.get("classes") or [str(i) for i in range(10)]
    results = [
        {"file": str(p), "class": int(np.argmax(row)), "label": classes[int(np.argmax(row))],
         "probabilities": [round(float(x), 6) for x in row]}
        for p, row in zip(images, probabilities, strict=True)
    ]  # fmt: skip
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        top = max(r["probabilities"])
        ranked = sorted(range(10), key=lambda i: -r["probabilities"][i])[1:3]
        others = ", ".join(f"{classes[i]} {r['probabilities'][i]:.1%}" for i in ranked)
        out.print(f"{r['file']}: [bold]{r['label']}[/] ({top:.1%}; then {others})")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
def serve(source: Path, host: str, port: int) -> None:
    """Serve SOURCE (a run directory or an export) over HTTP: TF Serving's REST predict API,
    image upload, and a page where you draw a digit."""
    from mnistctl.export import Predictor
    from mnistctl.serve import serve as run_server

    predictor = Predictor(source)
    out.print(f"serving {predictor.info.get('run_name') or source} on http://{host}:{port}/  (Ctrl-C stops)")
    out.print(
        f'  POST http://{host}:{port}/v1/models/mnist:predict  {{"instances": [28x28x1 floats in 0..1, ...]}}'
    )
    out.print(f"  POST http://{host}:{port}/predict  (body: a PNG or JPEG, Content-Type: image/png)")
    run_server(predictor, host, port)


# -- compare ------------------------------------------------------------------------------


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "markdown"]),
    default="table",
    show_default=True,
)
@click.option("--sort", "sort_key", metavar="KEY", help="Sort by this column (e.g. best_test_accuracy).")
@click.option("--reverse", is_flag=True, help="Sort in descending order.")
def compare(paths: tuple[Path, ...], fmt: str, sort_key: str | None, reverse: bool) -> None:
    """Compare runs: results, then the config keys that differ. PATHS are run directories or
    directories of runs (default: runs/)."""
    from mnistctl.compare import cell, render
    from mnistctl.compare import compare as compare_runs
    from mnistctl.runs import find_runs

    runs = find_runs(list(paths) or [Path("runs")])
    if not runs:
        raise MnistctlError(f"no runs found in {', '.join(map(str, paths or ['runs']))}")
    columns, rows = compare_runs(runs, sort_key, reverse)
    if fmt != "table":
        click.echo(render(columns, rows, fmt))
        return
    cells = [[cell(row.get(c), c) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) + 3 for i, c in enumerate(columns)]
    if sum(widths) <= out.width:
        table = Table()
        for column in columns:
            table.add_column(column)
        for row_cells in cells:
            table.add_row(*row_cells)
    else:  # too wide for the terminal: one column per run instead of one row per run
        table = Table(show_header=False)
        table.add_column(no_wrap=True)
        for _ in rows:
            table.add_column(overflow="fold")
        for i, column in enumerate(columns):
            table.add_row(f"[bold]{column}[/]", *(r[i] for r in cells))
    out.print(table)


# -- data ---------------------------------------------------------------------------------


@main.group()
def data() -> None:
    """Get and inspect the datasets (MNIST, Fashion-MNIST)."""


_dataset_option = click.option(
    "--dataset", type=click.Choice(["mnist", "fashion", "all"]), default="mnist", show_default=True
)


def _datasets(name: str) -> list[str]:
    return ["mnist", "fashion"] if name == "all" else [name]


@data.command()
@_dataset_option
@_data_dir_option
def download(dataset: str, data_dir: Path | None) -> None:
    """Fetch, verify and cache a dataset (training does this on first use)."""
    from mnistctl.data import ensure_dataset

    for name in _datasets(dataset):
        path = ensure_dataset(name, data_dir=data_dir, log=lambda msg: err.print(f"[dim]{msg}[/]"))
        out.print(f"{name}: verified, cached in {path}")


@data.command()
@_dataset_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(dataset: str, as_json: bool) -> None:
    """Where the cached dataset is, its counts and checksums."""
    from mnistctl.data import dataset_info

    reports = [dataset_info(name) for name in _datasets(dataset)]
    if as_json:
        click.echo(json.dumps(reports, indent=2))
        return
    for report in reports:
        table = Table(
            title=f"{report['title']} ({report['dataset']}) in {report['cache']}", title_justify="left"
        )
        table.add_column("file", no_wrap=True)
        for column in ("status", "count", "bytes"):
            table.add_column(column, overflow="fold")
        table.add_column("sha256 (uncompressed)", overflow="fold", min_width=16)
        for f in report["files"]:
            status = f["status"]
            style = "green" if status == "verified" else "red"
            table.add_row(
                Path(f["file"]).name,
                f"[{style}]{status}[/]",
                f"{f.get('count', '-'):,}" if "count" in f else "-",
                f"{f['bytes']:,}" if "bytes" in f else "-",
                f["sha256"],
            )
        out.print(table)
        if any(f["status"] != "verified" for f in report["files"]):
            out.print(f"run [bold]mnistctl data download --dataset {report['dataset']}[/] to fetch it")
