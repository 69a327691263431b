"""``plot --compare``: several runs' test curves overlaid, numbered in the legend, and a table
under them of every config key that differs between the runs, wrapped into pieces as wide as
the figure. Reads run files only; no TensorFlow."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mnistctl.report.compare import compare
from mnistctl.run.directory import METRICS_FILE, Run
from mnistctl.run.writers import read_metrics


def comparison_figure(runs: list[Run], train: bool = False) -> Figure:
    """Test accuracy and loss of several runs, overlaid (``train``: their training curves too,
    dashed). Each run is numbered in the legend, and a table under the plots names every config
    key that differs between them, with each run's best and final accuracy: wrapped into more
    tables, one under the other, when the keys are too many for one row of the figure."""
    from mnistctl.report.compare import summarize_layers

    columns, rows = compare(runs)
    differing = [c for c in columns[columns.index("parameters") + 1 :] if c not in ("name", "description")]
    differing = summarize_layers(differing, rows, runs)
    tables = _differences_tables(runs, rows, differing)
    height = sum(0.26 * (len(runs) + 1) + 0.25 for _ in tables)
    fig = Figure(figsize=(FIGURE_WIDTH_IN, 5.8 + height), layout="constrained")
    plots, below = fig.subfigures(2, 1, height_ratios=[5.8, height])
    fig.suptitle(f"{len(runs)} runs compared: the curves, and what sets them apart", fontsize=13)
    acc, loss = plots.subplots(1, 2)
    colours = colormaps["tab10" if len(runs) <= 10 else "tab20"].colors
    late: list[float] = []  # each run's accuracies after its first tenth: what the axis must show
    for k, run in enumerate(runs):
        metrics = read_metrics(run.path / METRICS_FILE)
        if not metrics:
            continue
        colour = colours[k % len(colours)]
        steps = [m["step"] for m in metrics]
        label = f"#{k + 1} {run.name}"
        acc.plot(steps, [m["test_accuracy"] for m in metrics], lw=1.4, color=colour, label=label)
        loss.plot(steps, [m["test_loss"] for m in metrics], lw=1.4, color=colour)
        if train:
            acc.plot(steps, [m["train_accuracy"] for m in metrics], lw=0.9, ls="--", color=colour)
            loss.plot(steps, [m["train_loss"] for m in metrics], lw=0.9, ls="--", color=colour)
        first = steps[0] + 0.1 * (steps[-1] - steps[0])
        late += [m["test_accuracy"] for m in metrics if m["step"] >= first]
        if train:
            late += [m["train_accuracy"] for m in metrics if m["step"] >= first]
    late = [v for v in late if np.isfinite(v)]
    if late:  # fitted to every run, so a weak one is never off the chart
        acc.set_ylim(max(0.0, min(late) - 0.005), min(1.0, max(late) + 0.003))
    if not late or max(late) >= 0.99 > min(late) - 0.005:
        acc.axhline(0.99, color="gray", ls="--", lw=0.8)
    kind = "test (solid) and train mini-batch (dashed)" if train else "test"
    acc.set(title=f"{kind} accuracy", xlabel="step")
    loss.set(title=f"{kind} cross-entropy loss", xlabel="step")
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8, loc="lower right")
    for ax, (header, body) in zip(below.subplots(len(tables), 1, squeeze=False)[:, 0], tables, strict=True):
        _draw_table(ax, header, body, colours)
    return fig


FIGURE_WIDTH_IN = 15
TABLE_FONT_PT = 8
# What one character of the table's font takes, with a cell's padding spread over its text: a
# table of more characters a line than fit the figure's width is wrapped into another.
CHAR_IN = TABLE_FONT_PT * 0.62 / 72
CELL_PAD_CHARS = 2


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def _differences_tables(runs: list[Run], rows: list[dict], keys: list[str]) -> list[tuple[list, list]]:
    """The table of differing keys as (header, body) pieces, each as wide as the figure at
    most: every piece starts with the runs' numbers and names, the last ends with the results.
    Headers are the shortest unambiguous key paths (never two alike)."""
    from mnistctl.many.trials import short_keys
    from mnistctl.report.compare import cell

    labels = short_keys([k for k in keys if "." in k])
    lead = [["#", *(f"#{k + 1}" for k in range(len(runs)))], ["run", *(run.name for run in runs)]]
    tail = [
        ["best", *(cell(row.get("best_test_accuracy"), "accuracy") for row in rows)],
        ["final test", *(cell(row.get("final_test_accuracy"), "accuracy") for row in rows)],
    ]
    middle = [[labels.get(k, k), *(_short(cell(row.get(k), k)) for row in rows)] for k in keys]

    def chars(column: list[str]) -> int:
        return max(len(str(v)) for v in column) + CELL_PAD_CHARS

    budget = FIGURE_WIDTH_IN / CHAR_IN - sum(map(chars, lead))
    pieces: list[list[list[str]]] = [[]]
    for column in middle:
        used = sum(map(chars, pieces[-1]))
        if pieces[-1] and used + chars(column) > budget:
            pieces.append([])
        pieces[-1].append(column)
    if sum(map(chars, pieces[-1] + tail)) > budget:
        pieces.append([])
    pieces[-1] += tail
    tables = []
    for piece in pieces:
        columns = lead + piece
        body = [list(r) for r in zip(*(c[1:] for c in columns), strict=True)]
        tables.append(([c[0] for c in columns], body))
    return tables


def _draw_table(ax: Axes, header: list[str], body: list[list[str]], colours) -> None:
    """One piece of the differences table, each run's number coloured as its curves."""
    ax.set_axis_off()
    table = ax.table(cellText=body, colLabels=header, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(TABLE_FONT_PT)
    table.auto_set_column_width(list(range(len(header))))
    for k in range(len(body)):
        table[k + 1, 0].set_facecolor(colours[k % len(colours)])
        table[k + 1, 0].get_text().set_color("white")
