"""``mnistctl data``: get and inspect the datasets."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mnistctl.cli.app import data_dir_option, dataset_choice, logger, main, out
from mnistctl.config import DATASETS
from mnistctl.files import to_json


@main.group()
def data() -> None:
    """Get and inspect the datasets (MNIST, Fashion-MNIST)."""


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
@_dataset_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(dataset: str, as_json: bool) -> None:
    """Where the cached dataset is, its counts and checksums."""
    from mnistctl.dataset import dataset_info

    reports = [dataset_info(name) for name in _datasets(dataset)]
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
