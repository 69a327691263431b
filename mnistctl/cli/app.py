"""The ``mnistctl`` command group, the consoles, and the options several commands share.

The CLI is the only part of mnistctl that prints. Every command parses its arguments, calls one
library function and shows the result; TensorFlow is imported inside the commands that build
graphs, so ``--help``, ``validate``, ``compare`` and ``data info`` start fast.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from mnistctl import __version__
from mnistctl.config import DATASETS
from mnistctl.errors import MnistctlError

out = Console(highlight=False, soft_wrap=True, emoji=False)  # ":smile:" in a name stays text
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


class _Group(click.Group):
    """Turns every MnistctlError into one line on stderr and its exit code: no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MnistctlError as error:  # printed literally: [brackets] in a message are text
            err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            if _still_working():  # a server's request thread, still computing: not waited for
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(130)
            sys.exit(130)
        except OSError as error:  # a full disk, a read-only directory: say so, in one line
            where = f"{error.filename}: " if error.filename else ""
            err.print(f"[bold red]error:[/] {escape(where + str(error.strerror or error))}", soft_wrap=True)
            sys.exit(2)


def _still_working() -> bool:
    """Whether a thread that Python would wait for at exit is still running (mnistctl's own
    threads are daemons: such a thread is a library's, like the one computing a web request)."""
    main = threading.main_thread()
    return any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate())


def without_cycle_collector(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command`` with Python's cycle collector off: a listing of thousands of runs makes
    millions of small objects and no cycles, which the collector would only walk over and over
    (a fifth of a warm listing of 10,000 runs)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return command(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    return run


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from mnistctl.provenance import code_state

    code = code_state(with_patch=False)
    where = (
        f" (commit {code.commit[:12]}{', with uncommitted changes' if code.dirty else ''})"
        if code.commit
        else ""
    )
    click.echo(f"mnistctl, version {__version__}{where}")
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version (and the commit, in a checkout) and exit.")  # fmt: skip
def main() -> None:
    """Train, evaluate and compare the networks of the "TensorFlow and deep learning,
    without a PhD" MNIST walk-through, from YAML configs.

    \b
    mnistctl train configs/conv_dropout.yaml     train; results go to runs/<time>-<name>/
    mnistctl eval runs/<run>                     test accuracy, per class, confusion matrix
    mnistctl compare runs/                       the runs side by side
    """


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key, e.g. --set train.steps=2000 --set model.layers[3].dropout=0.5 (repeatable).",
)
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A directory holding the four IDX files (gzipped or not); tried before the cache.",
)
top_option = click.option(
    "--top",
    type=click.IntRange(min=2),
    help="From a directory of runs, average only the best K by their selection metric.",
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="Print only the final result.")


def dataset_choice(*extra: str) -> click.Choice:
    """The datasets the config schema knows (plus ``extra`` choices such as ``all``)."""
    return click.Choice([*DATASETS, *extra])


def logger(quiet: bool) -> Callable[[str], None]:
    """Where library progress messages go: dim lines on stderr, or nowhere with --quiet."""
    return (lambda msg: None) if quiet else (lambda msg: err.print(f"[dim]{escape(msg)}[/]"))


def check_figure_path(path: Path | None) -> None:
    """Refuse an output format the plots cannot write, before any work (imports matplotlib)."""
    if path is not None:
        from mnistctl.report.plots import check_figure_path as check

        check(path)


@contextlib.contextmanager
def loading_tensorflow() -> Iterator[None]:
    """Say "loading TensorFlow" on the terminal while the import takes its seconds.

    A plain line, written before the import (which silences file descriptor 2 while it runs)
    and wiped after it; nothing when stderr is not a terminal or TensorFlow is already loaded.
    """
    shown = "tensorflow" not in sys.modules and sys.stderr.isatty()
    if shown:
        sys.stderr.write("loading TensorFlow…")
        sys.stderr.flush()
    try:
        import mnistctl._tf  # noqa: F401  (the slow part)

        yield
    finally:
        if shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
