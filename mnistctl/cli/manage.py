"""Living with many runs: ``show`` one whole, ``diff`` two, ``tag`` and ``note`` them. Reads and
writes only run directories' files; never imports TensorFlow."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import main, out


def _print(sections, headers: tuple[str, ...] = ()) -> None:
    for section in sections:
        if section.commands:  # to copy and run: whole lines, never folded
            out.print(f"[bold]{escape(section.title)}[/]")
            for label, command in section.lines:
                out.print(f"[dim]{escape(label)}:[/] {escape(command)}", soft_wrap=True)
            out.print()
            continue
        columns = max(len(line) for line in section.lines)
        table = Table(title=escape(section.title), title_justify="left", title_style="bold",
                      show_header=bool(headers) and columns == 3, box=None, pad_edge=False)  # fmt: skip
        table.add_column("", style="dim", no_wrap=True)
        for i in range(columns - 1):
            table.add_column(escape(headers[i]) if headers else "", overflow="fold")
        for line in section.lines:
            table.add_row(*(escape(cell) for cell in line))
        out.print(table)
        out.print()


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--all", "everything", is_flag=True, help="The whole config, not only what differs from the shipped one."
)
def show(run_dir: Path, everything: bool) -> None:
    """One run whole: results, config (what differs from the shipped config of its name), code,
    machine, data, tags and notes, and the commands that train it again."""
    from mnistctl.report.describe import show as describe
    from mnistctl.run.directory import load_run

    _print(describe(load_run(run_dir), everything))


@main.command()
@click.argument("run_a", type=click.Path(path_type=Path))
@click.argument("run_b", type=click.Path(path_type=Path))
def diff(run_a: Path, run_b: Path) -> None:
    """What differs between two runs: config keys, results side by side, code (commit and
    uncommitted change), machine and data."""
    from mnistctl.report.describe import diff as differ
    from mnistctl.run.directory import load_run

    a, b = load_run(run_a), load_run(run_b)
    _print(differ(a, b), (a.name, b.name if b.name != a.name else str(run_b)))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, required=True)
def tag(args: tuple[str, ...]) -> None:
    """Tag runs: mnistctl tag RUN... +NAME -NAME (add with +, remove with -). compare shows the
    tags and --filter tag=NAME keeps the runs that have one."""
    from mnistctl.run.directory import load_run
    from mnistctl.run.labels import change_tags

    runs = [Path(a) for a in args if a[:1] not in "+-"]
    add = [a[1:] for a in args if a.startswith("+")]
    remove = [a[1:] for a in args if a.startswith("-")]
    if not runs or not (add or remove):
        raise click.UsageError("give RUN directories and +TAG or -TAG, e.g. mnistctl tag runs/a +baseline")
    for run_dir in runs:
        load_run(run_dir)  # every one is a run before any is changed
    for run_dir in runs:
        labels = change_tags(run_dir, add, remove)
        out.print(f"{escape(str(run_dir))}: {escape(', '.join(labels.tags)) or 'no tags'}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("text")
def note(run_dir: Path, text: str) -> None:
    """Add a note to a run (kept in RUN_DIR/labels.json, safe beside a training still running);
    show lists them."""
    from mnistctl.run.directory import load_run
    from mnistctl.run.labels import add_note

    load_run(run_dir)
    labels = add_note(run_dir, text)
    out.print(f"{escape(str(run_dir))}: {len(labels.notes)} note(s)")
