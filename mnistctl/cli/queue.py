"""``mnistctl queue``: add runs to a queue while it runs, list it, and run it (in turn, or side by
side on Ray) through the same driver as sweeps and reproductions."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import err, logger, main, out, set_option

runs_dir_option = click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
    help="The runs folder the queue belongs to (its entries train there).",
)  # fmt: skip


@main.group()
def queue() -> None:
    """A queue of runs: add CONFIGs at any time (also while it runs), then run it."""


@queue.command("add")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
@click.option("--name", help="The run directory's name (default: <time>-<config name>).")
@runs_dir_option
def add_entry(config: Path, overrides: tuple[str, ...], name: str | None, runs_dir: Path) -> None:
    """Queue CONFIG (a path or a shipped name) with its --set, checked now."""
    from mnistctl.config.shipped import resolve_config
    from mnistctl.many.queue import add

    entry = add(runs_dir, resolve_config(config), overrides, name)
    out.print(f"queued {escape(entry.name)}: {escape(entry.source)}")


@queue.command("ls")
@runs_dir_option
def list_entries(runs_dir: Path) -> None:
    """The queue's entries and their states (pending, running, completed, interrupted, ...)."""
    from mnistctl.many.queue import entries, state

    found = entries(runs_dir)
    if not found:
        out.print(f"the queue of {escape(str(runs_dir))} is empty (mnistctl queue add CONFIG)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("run", "state", "config"):
        table.add_column(column)
    for entry in found:
        table.add_row(escape(entry.name), state(runs_dir, entry), escape(entry.source))
    out.print(table)


@queue.command("run")
@runs_dir_option
@click.option(
    "--max-concurrent", type=click.IntRange(min=1), help="Side by side on Ray, this many at a time."
)
@click.option("--address", help="Join a Ray cluster (HOST:PORT) instead of training here.")
@click.option("--quiet", "-q", is_flag=True, help="Print only what finished.")
def run_entries(runs_dir: Path, max_concurrent: int | None, address: str | None, quiet: bool) -> None:
    """Train the queue until nothing is pending, picking up entries added meanwhile; an
    interrupted queue continues with the same command."""
    from mnistctl.cli.views import ProgressView, StopOnSignal
    from mnistctl.many.jobs import OnRay
    from mnistctl.many.queue import pending, run_queue
    from mnistctl.many.ray_session import stop_ray

    on_ray = OnRay(address, max_concurrent, group="queue", quiet=quiet) if max_concurrent or address else None
    with StopOnSignal() as stop:
        trained = run_queue(runs_dir, on_ray=on_ray, extra_hooks=[ProgressView(out, True)],
                            log=logger(quiet), should_stop=stop)  # fmt: skip
        stop_ray()
    out.print(f"{len(trained)} run(s) finished: {escape(', '.join(trained)) or '-'}")
    left = pending(runs_dir)
    if stop() or left:
        again = escape(f"mnistctl queue run --runs-dir {runs_dir}")
        err.print(f"[yellow]interrupted[/]: {len(left)} left; continue with: {again}")
        sys.exit(stop.exit_code if stop() else 1)
