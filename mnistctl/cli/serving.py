"""Commands that take a trained model to production: ``export``, ``predict``, ``serve``."""

from __future__ import annotations

import os
from pathlib import Path

import click
from rich.markup import escape

from mnistctl.cli.app import data_dir_option, err, loading_tensorflow, main, out, top_option
from mnistctl.errors import MnistctlError
from mnistctl.files import to_json


@main.command()
@click.argument("targets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "base",
    type=click.Path(path_type=Path),
    required=True,
    help="The model's base folder (TF Serving's --model_base_path); the SavedModel goes in BASE/VERSION.",
)
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing export of that version.")
@top_option
def export(targets: tuple[Path, ...], base: Path, version: int, force: bool, top: int | None) -> None:
    """Export TARGETS (a run directory's selected checkpoint, or a checkpoint) as a TensorFlow
    SavedModel (tag serve, signature serving_default) in BASE/VERSION: the layout TensorFlow
    Serving loads. Several runs, or a directory of runs, export as one model that averages
    their probabilities."""
    from mnistctl.many.ensemble import is_ensemble, members_of
    from mnistctl.run.checkpoints import check_export_target

    out_dir = base / str(version)
    check_export_target(out_dir, force)  # a target that exists: one line now, before TensorFlow
    if is_ensemble(targets):
        members = members_of(targets, top=top, log=lambda line: err.print(escape(line)))
        with loading_tensorflow():
            from mnistctl.serving.export import export_ensemble

        export_ensemble(members, out_dir, overwrite=force)
        what = f"an ensemble of {len(members)} runs"
    else:
        from mnistctl.run.checkpoints import resolve

        resolve(targets[0])  # not a run or checkpoint: one line now, before TensorFlow loads
        with loading_tensorflow():
            from mnistctl.serving.export import export_saved_model

        info = export_saved_model(targets[0], out_dir, overwrite=force)
        what = f"{info['run_name']} step {info['step']}"
    out.print(f"exported {escape(what)} to {escape(str(out_dir))} (version {version})")
    out.print(
        "input: images float32 [N, 28, 28, 1] in [0, 1]; outputs: probabilities [N, 10], classes [N]; "
        f"try: saved_model_cli show --dir {escape(str(out_dir))} --all, or mnistctl serve {escape(str(base))}"
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

    from mnistctl.pictures import ImageError, read_image_file
    from mnistctl.run.checkpoints import check_model_source
    from mnistctl.serving.info import check_info

    inputs: dict[Path, np.ndarray] = {}
    problems: dict[Path, str] = {}
    for path in images:  # every file is read before the model loads; a bad one is reported alone
        try:
            inputs[path] = read_image_file(path)
        except ImageError as error:
            problems[path] = str(error)
    results: dict[Path, dict] = {}
    if inputs:  # with no picture to classify, the model is not even looked at
        check_model_source(source)
        check_info(source)
        with loading_tensorflow():
            from mnistctl.serving.export import Predictor

        predictor = Predictor(source)
        rows = predictor.labelled(predictor.predict(np.stack(list(inputs.values()))))
        results = dict(zip(inputs, rows, strict=True))
    if as_json:
        report = [{"file": str(path), **results.get(path, {"error": problems.get(path)})} for path in images]
        click.echo(to_json(report, indent=2))
    else:
        for path in images:
            if path in problems:
                err.print(f"[bold red]error:[/] {escape(problems[path])}", soft_wrap=True)
                continue
            r, classes = results[path], predictor.classes
            top = max(r["probabilities"])
            ranked = sorted(range(len(classes)), key=lambda i: -r["probabilities"][i])[1:3]
            others = ", ".join(f"{classes[i]} {r['probabilities'][i]:.1%}" for i in ranked)
            out.print(f"{escape(str(path))}: [bold]{r['label']}[/] ({top:.1%}; then {others})")
    if problems:
        raise SystemExit(2)  # the others were answered; the exit code says not all were


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 256),
    default=64,
    show_default=True,
    help="Merge concurrent requests into one model run of at most this many images (1: no batching).",
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0, 1000),
    default=0.0,
    show_default=True,
    help="How long a batch that is not full waits for more requests.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes serving side by side, each with its own copy of the model (more requests per "
    "second on several cores, that many times the memory).",
)
@click.option("--quiet", "-q", is_flag=True, help="No line per request (on a terminal there is one).")
def serve(
    source: Path, host: str, port: int, max_batch: int, batch_wait_ms: float, workers: int, quiet: bool
) -> None:
    """Serve SOURCE (a run directory or an export) over HTTP: TF Serving's REST predict API,
    image upload, and a page where you draw a digit."""
    from mnistctl.run.checkpoints import check_model_source
    from mnistctl.serving.info import check_info
    from mnistctl.serving.listen import bind, serve_forked
    from mnistctl.serving.listen import serve as run_server
    from mnistctl.serving.serve import Batching

    if workers > 1 and not hasattr(os, "fork"):
        raise click.BadParameter(
            "more than one process needs fork(), which this system lacks", param_hint="--workers"
        )
    check_model_source(source)  # a wrong path is one line at once, before TensorFlow loads
    check_info(source)  # so is a damaged export description, before any worker forks
    sock = bind(host, port)  # a taken port or unknown host is one line, before the model loads
    batching = Batching(max_batch=max_batch, max_wait_ms=batch_wait_ms)
    log = None if quiet or not out.is_terminal else lambda line: out.print(escape(line), highlight=False)
    if workers > 1:  # TensorFlow loads in each process, after the fork
        where = f"http://{host}:{port}/"
        out.print(f"serving {escape(str(source))} on {where} from {workers} processes  (Ctrl-C stops)")
        _announce_routes(host, port, max_batch)

        def load() -> object:
            from mnistctl.serving.export import Predictor

            return Predictor(source)

        serve_forked(load, sock, batching, workers, log)
        return
    with loading_tensorflow():
        from mnistctl.serving.export import Predictor

    predictor = Predictor(source)
    out.print(f"serving {predictor.info.get('run_name') or source} on http://{host}:{port}/  (Ctrl-C stops)")
    _announce_routes(host, port, max_batch)
    run_server(predictor, sock, batching, log)


def _announce_routes(host: str, port: int, max_batch: int) -> None:
    out.print(
        f'  POST http://{host}:{port}/v1/models/mnist:predict  {{"instances": [28x28x1 floats in 0..1, ...]}}'
    )
    out.print(f"  POST http://{host}:{port}/predict  (body: a PNG or JPEG, Content-Type: image/png)")
    if max_batch > 1:
        out.print(f"  concurrent requests are merged into batches of up to {max_batch} images")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8502, show_default=True)
@data_dir_option
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--exit-with", "parent", type=int, hidden=True, help="Stop when the process PID is gone (train --live)."
)
def watch(path: Path, host: str, port: int, data_dir: Path | None, quiet: bool, parent: int | None) -> None:
    """Watch PATH - a run directory, a sweep or a directory of runs - learn, on a local page:
    the walk-through's six panels for a run, every run's curve for a folder. Reads only the
    files, so it works on a run another process (or machine) is training. No TensorFlow."""
    from mnistctl.serving.listen import bind, run_server
    from mnistctl.serving.live import create_live_app

    app = create_live_app(path, data_dir=data_dir)  # a wrong path is one line, before binding
    try:
        sock = bind(host, port)
    except MnistctlError as error:
        raise MnistctlError(f"{error}{whose_page(host, port)}") from None
    if not quiet:
        out.print(f"watching {escape(str(path))} on http://{host}:{port}/  (Ctrl-C stops)")
    if parent is not None:
        _exit_with(parent)
    run_server(app, sock)


def whose_page(host: str, port: int) -> str:
    """When a port is taken by a live page of mnistctl's own, which one (so it can be stopped)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/api/runs",
                                    timeout=2) as answer:  # fmt: skip
            watched = json.loads(answer.read(1 << 20)).get("path")
    except (OSError, ValueError, AttributeError):
        return ""
    return f": mnistctl's live page of {watched} is there; stop it, or give --port another" if watched else ""


def _exit_with(parent: int) -> None:
    """Stop this server (as SIGTERM does) once ``parent`` is gone: a page never outlives the
    training it was started for, even one killed with SIGKILL."""
    import signal
    import threading
    import time

    def watchdog() -> None:
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass
            if os.getppid() != parent:  # re-parented: the training process is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watchdog, daemon=True, name="exit-with-parent").start()
