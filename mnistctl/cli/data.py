"""``mnistctl data``: get and inspect the datasets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from mnistctl.cli.app import data_dir_option, dataset_choice, logger, main, out
from mnistctl.config import DATASETS
from mnistctl.files import to_json


@main.group()
def data() -> None:
    """Get and inspect the datasets (MNIST, Fashion-MNIST), or make one of your pictures."""


_dataset_option = click.option("--dataset", type=dataset_choice("all"), default="mnist", show_default=True)


def _datasets(name: str) -> list[str]:
    return list(DATASETS) if name == "all" else [name]


@data.command()
@_dataset_option
@data_dir_option
def download(dataset: str, data_dir: Path | None) -> None:
    """Fetch, verify and cache a dataset (training does this on first use)."""
    from mnistctl.data import ensure_dataset

    for name in _datasets(dataset):
        path = ensure_dataset(name, data_dir=data_dir, log=logger(False))
        out.print(f"{name}: verified, cached in {path}")


@data.command()
@click.option(
    "--dataset",
    default="mnist",
    show_default=True,
    help="mnist, fashion, all (both), imported (every one `data import` made) or an imported one's name.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(dataset: str, as_json: bool) -> None:
    """Where the cached dataset is, its counts and checksums."""
    from mnistctl.config.datasets import imported_datasets
    from mnistctl.dataset import dataset_info

    names = imported_datasets() if dataset == "imported" else _datasets(dataset)
    reports = [dataset_info(name) for name in names]  # an unknown name: one line listing the known
    if as_json:
        click.echo(to_json(reports, indent=2))
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


@data.command("import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The dataset's name: then `data.dataset: NAME` trains on it.")
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="The share of each class's pictures kept for testing.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Of the split.")
@click.option("--force", is_flag=True, help="Replace a dataset of that name made before.")
def import_(folder: Path, name: str, test_fraction: float, seed: int, force: bool) -> None:
    """Make a dataset of your own pictures: FOLDER holds one subfolder of PNG or JPEG pictures
    per class (at most ten), each prepared as `predict` prepares one and split into training
    and test images; then train on it with --set data.dataset=NAME."""
    from mnistctl.imported import import_folder

    made = import_folder(folder, name, test_fraction=test_fraction, seed=seed, force=force)
    for skipped in made.skipped[:10]:
        out.print(f"[yellow]skipped[/] {escape(skipped)}")
    if len(made.skipped) > 10:
        out.print(f"[yellow]skipped[/] {len(made.skipped) - 10} more pictures")
    counts = ", ".join(f"{escape(c)}: {n}" for c, n in made.per_class.items())
    out.print(
        f"{escape(name)}: {made.train + made.test} pictures, {len(made.classes)} classes ({counts}); "
        f"{made.train} to train, {made.test} to test, {len(made.skipped)} skipped; "
        f"in {escape(str(made.path))}/"
    )
    out.print(f"train on it: mnistctl train CONFIG --set data.dataset={escape(name)}")
