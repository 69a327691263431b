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


def _said(done, dry_run: bool) -> None:
    """What rm, restore and gc did (or would do), one line each, then the bytes moved and freed."""
    from mnistctl.files import human_bytes

    would = "would be " if dry_run else ""
    for d in done:
        where = f" -> {d.to}" if d.to else ""
        out.print(f"{would}{d.what}: {escape(str(d.path))}{escape(where)} ({human_bytes(d.bytes)})")
    if not done:
        out.print("nothing to do")
        return
    freed = sum(d.bytes for d in done if d.what in ("deleted", "trimmed"))
    moved = sum(d.bytes for d in done if d.what in ("trashed", "restored"))
    parts = [f"{human_bytes(moved)} moved, nothing deleted"] if moved else []
    parts += [f"{human_bytes(freed)} freed"] if freed else []
    out.print(("would be: " if dry_run else "") + "; ".join(parts))


@main.command("rm")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=PATTERN",
    help="With a folder: the runs in it that match (as compare's --filter), e.g. status=failed.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be moved, and move nothing.")
def remove(paths: tuple[Path, ...], filters: tuple[str, ...], dry_run: bool) -> None:
    """Move runs to the trash (.trash/ beside them): nothing is deleted until mnistctl gc, and
    mnistctl restore brings a run back as it was. A run that is training is refused."""
    from mnistctl.errors import MnistctlError
    from mnistctl.run.directory import is_run_dir
    from mnistctl.run.listing import find_runs, save_index
    from mnistctl.run.trash import trash

    if not paths:
        raise click.UsageError("give RUN directories, or a folder with --filter KEY=PATTERN")
    if filters:
        from mnistctl.report.compare import compare, filter_rows

        runs = find_runs(list(paths), damaged=[], recursive=True, indexed=True)  # as compare lists them
        _, rows = compare(runs) if runs else ([], [])
        save_index(runs)
        by_name = {run.name: run for run in runs}
        _, runs = (
            filter_rows(rows, list(filters), [by_name[row["run"]] for row in rows]) if rows else ([], [])
        )
    else:
        folders = [p for p in paths if p.is_dir() and not is_run_dir(p)]
        if folders:
            raise MnistctlError(
                f"{folders[0]}: a folder of runs; name the runs, or choose some with --filter"
            )
        runs = find_runs(list(paths))
    _said(trash(runs, dry_run), dry_run)


@main.command()
@click.argument("names", nargs=-1)
@click.option("--from", "folder", type=click.Path(path_type=Path), default=Path("runs"), show_default=True,
              help="The runs folder whose trash to look in.")  # fmt: skip
def restore(names: tuple[str, ...], folder: Path) -> None:
    """Bring trashed runs back where they were (NAMES as the listing shows them, or paths); with
    no NAMES, list the trash."""
    from mnistctl.files import human_bytes
    from mnistctl.run.trash import resolve_trashed, size_of, trashed
    from mnistctl.run.trash import restore as bring_back

    if not names:
        entries = trashed(folder)
        for entry in entries:
            out.print(f"{escape(entry.name)}  ({human_bytes(size_of(entry))})")
        if not entries:
            out.print(f"the trash of {escape(str(folder))} is empty")
        return
    _said(bring_back(resolve_trashed(folder, list(names))), False)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path), default=Path("runs"), required=False)
@click.option("--older-than", "days", type=click.FloatRange(min=0), metavar="DAYS",
              help="Only what was trashed more than DAYS ago.")  # fmt: skip
@click.option(
    "--checkpoints", is_flag=True, help="Also keep only each finished run's best and latest checkpoint."
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, and delete nothing.")
def gc(folder: Path, days: float | None, checkpoints: bool, dry_run: bool) -> None:
    """Empty FOLDER's trash (default runs/), for good; --checkpoints trims finished runs to
    their best and latest checkpoints (eval, export and --resume keep working)."""
    from mnistctl.run.trash import gc as collect

    if not folder.is_dir():
        from mnistctl.errors import MnistctlError

        raise MnistctlError(f"{folder}: no such runs folder")
    _said(collect(folder, days, checkpoints, dry_run), dry_run)
