"""The walk-through's dashboard and comparisons, drawn with matplotlib from a run directory.

Everything here reads files a run wrote (metrics.csv, distributions.csv, predictions.npz and
the cached dataset); nothing imports TensorFlow.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mnistctl.dataset import load_experiment_data
from mnistctl.digits import CONVENTION, digit_label, mosaic
from mnistctl.errors import MnistctlError
from mnistctl.run.directory import DISTRIBUTIONS_FILE, METRICS_FILE, Run
from mnistctl.run.writers import latest_predictions, read_distributions, read_metrics

FORMATS = (".png", ".svg", ".html")  # what save() writes, by the file's suffix
DASHBOARD_SIZE = (15, 8.75)  # inches; 1500x875 pixels at save()'s 100 dpi
DASHBOARD_MARGINS = {"left": 0.045, "right": 0.99, "bottom": 0.06, "top": 0.91, "wspace": 0.16, "hspace": 0.3}
TRAIN_COLOR, TEST_COLOR, VALIDATION_COLOR = "#1f77b4", "#d62728", "#2ca02c"


def compare_figure(runs: list[Run], train: bool = False) -> Figure:
    """Several runs' curves overlaid, and what sets them apart (``mnistctl.report.comparison``)."""
    from mnistctl.report.comparison import comparison_figure

    return comparison_figure(runs, train)


class PlotError(MnistctlError):
    """A run that has nothing to plot yet, or an output we cannot write."""


def dashboard(run: Run) -> Figure:
    """The six panels of the walk-through for one run."""
    rows = read_metrics(run.path / METRICS_FILE)
    if not rows:
        raise PlotError(f"{run.path}: no metrics yet (metrics.csv is empty)")
    distributions = read_distributions(run.path / DISTRIBUTIONS_FILE)
    exp = run.experiment()
    data = load_experiment_data(exp)
    predictions = latest_predictions(run.path, data.test_labels)  # the latest evaluation's

    # Figures are made without pyplot (its import alone is 0.3 s) and drawn by Agg on save. The
    # dashboard's size never changes, so its margins are fixed: constrained layout would measure
    # every text again on each save (0.3 s of the 1 s a plot may take).
    fig = Figure(figsize=DASHBOARD_SIZE)
    axes = fig.subplots(2, 3, gridspec_kw=DASHBOARD_MARGINS)
    best = run.best(rows)
    kept = f"; best checkpoint: step {int(best['step']):,}" if best is not None else ""
    fig.suptitle(f"{run.name}  ({run.status}, {exp.description or exp.name}{kept})", fontsize=13)
    _accuracy_panel(axes[0, 0], rows, best, exp.selection_metric)
    _loss_panel(axes[0, 1], rows)
    second = "activations" if "activations" in distributions else "biases"
    _percentile_panel(axes[1, 0], distributions.get("weights"), "weights")
    _percentile_panel(axes[1, 1], distributions.get(second), second)
    if predictions is None:
        for ax in (axes[0, 2], axes[1, 2]):
            _empty(ax, "no evaluation yet")
    else:
        batch = predictions["train_indices"]
        _digit_grid(
            axes[0, 2],
            data.train_images[batch],
            data.train_labels[batch],
            predictions["train_predictions"],
            f"last training batch at step {int(predictions['step'])}: misrecognised first",
            columns=10,
            label_all=True,
        )
        # A hundred test digits, big enough to read (each over 30 pixels): the misrecognised ones
        # of the whole test set first, then correctly read ones.
        tested = predictions["predictions"]
        shown = order_wrong_first(data.test_labels, tested)[:SHOWN_TEST_DIGITS]
        wrong = int((data.test_labels != tested).sum())
        which = f"misrecognised first ({wrong:,} in all)"
        _digit_grid(
            axes[1, 2],
            data.test_images[shown],
            data.test_labels[shown],
            tested[shown],
            f"{len(shown)} of {len(tested):,} test digits at step {int(predictions['step'])}\n{which}",
            columns=10,
            label_all=True,
            count_wrong=False,
        )
        fig.text(0.99, 0.005, f"digits: {CONVENTION}", ha="right", va="bottom", fontsize=9, color="#444")
    return fig


SHOWN_TEST_DIGITS = 100  # ten rows of ten: each digit legible in the PNG


def _accuracy_panel(
    ax: Axes, rows: list[dict[str, float]], best: dict[str, float] | None, metric: str
) -> None:
    steps = np.array([r["step"] for r in rows])
    train = np.array([r["train_accuracy"] for r in rows])
    test = np.array([r["test_accuracy"] for r in rows])
    ax.plot(steps, train, color=TRAIN_COLOR, lw=1.2, label="train (mini-batches)")
    ax.plot(steps, test, color=TEST_COLOR, lw=1.6, label="test")
    curves = [train, test]
    if metric == "validation_accuracy":
        validation = np.array([r["validation_accuracy"] for r in rows])
        ax.plot(steps, validation, color=VALIDATION_COLOR, lw=1.2, label="validation")
        curves.append(validation)
    if best is not None:  # the run's best evaluation: its checkpoint is what eval and export use
        chosen = "by validation" if metric == "validation_accuracy" else "by test"
        ax.plot(
            best["step"],
            best["test_accuracy"],
            "o",
            color="black",
            ms=6,
            label=f"best ({chosen}): test {best['test_accuracy']:.4f} @ {int(best['step'])}",
        )
    low, high = accuracy_range(curves)
    if low <= 0.99 <= high:  # the walk-through's goal, where it is in sight
        ax.axhline(0.99, color="gray", ls="--", lw=0.8, label="99%")
    ax.set_ylim(low, high)
    ax.set(title="accuracy", xlabel="step")
    ax.legend(loc="best", fontsize=9)
    ax.grid(alpha=0.3)


def _loss_panel(ax: Axes, rows: list[dict[str, float]]) -> None:
    steps = [r["step"] for r in rows]
    train = np.array([r["train_loss"] for r in rows])
    test = np.array([r["test_loss"] for r in rows])
    ax.plot(steps, train, color=TRAIN_COLOR, lw=1.2, label="train (mini-batches)")
    ax.plot(steps, test, color=TEST_COLOR, lw=1.6, label="test")
    values = np.concatenate([train, test])
    finite = values[np.isfinite(values)]
    if finite.size:
        ax.set_ylim(0, float(np.percentile(finite, 95)) * 1.3 + 1e-9)
    ax.set(title="cross-entropy loss", xlabel="step")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)


def _percentile_panel(ax: Axes, table: np.ndarray | None, kind: str) -> None:
    if table is None or not len(table):
        _empty(ax, f"no {kind} recorded")
        return
    steps = table[:, 0]
    p0, p10, p25, p50, p75, p90, p100 = table[:, 1:].T
    ax.fill_between(steps, p0, p100, color="#9ecae1", label="min-max")
    ax.fill_between(steps, p10, p90, color="#6baed6", label="10-90%")
    ax.fill_between(steps, p25, p75, color="#3182bd", label="25-75%")
    ax.plot(steps, p50, color="#08306b", lw=1.2, label="median")
    ax.set(title=f"{kind}: percentiles over time", xlabel="step")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_axis_off()


def accuracy_range(curves: list[np.ndarray]) -> tuple[float, float]:
    """An accuracy axis fitted to the run: every curve after its first tenth (the climb from
    chance would squash the rest), with a margin, within [0, 1] - softmax's 0.92 and the
    record's 0.995 each fill their panel."""
    tails = [c[len(c) // 10 :] if len(c) > 10 else c for c in curves]
    values = np.concatenate([t[np.isfinite(t)] for t in tails]) if tails else np.array([])
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    pad = max(0.004, (high - low) * 0.12)
    return max(0.0, low - pad), min(1.0 + 1e-9, high + pad)


def order_wrong_first(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Indices with the misrecognised digits first, each group in its original order."""
    wrong = labels != predictions
    return np.concatenate([np.flatnonzero(wrong), np.flatnonzero(~wrong)])


def _digit_grid(
    ax: Axes,
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    title: str,
    columns: int,
    label_all: bool,
    count_wrong: bool = True,
) -> None:
    order = order_wrong_first(labels, predictions)
    images, labels, predictions = images[order], labels[order], predictions[order]
    wrong = labels != predictions
    ax.imshow(mosaic(images, wrong, columns), interpolation="nearest")
    size = 7 if label_all else 5
    for i in range(len(images)):
        if label_all or wrong[i]:
            r, c = divmod(i, columns)
            text = digit_label(labels[i], predictions[i])
            # Inside the image, so constrained layout need not measure them (hundreds of texts).
            ax.text(c * 30 + 28, r * 30 + 28, text, color="yellow", fontsize=size, ha="right", va="bottom",
                    in_layout=False)  # fmt: skip
    ax.set_title(f"{title} ({int(wrong.sum())} wrong)" if count_wrong else title, fontsize=10)
    ax.set_axis_off()


def gallery(
    images: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    confidence: np.ndarray,
    classes: list[str] | None = None,
    run: str = "",
) -> Figure:
    """The misrecognised images, each with its true class, the prediction and its probability:
    digits, or for Fashion-MNIST items named by their classes (``classes``), titled with the run."""
    names = classes if classes and any(not c.isdigit() for c in classes) else None
    what = "digits" if names is None else "items"
    wrong = np.flatnonzero(labels != predictions)
    shown = wrong[:200]
    columns = 20 if names is None else 10
    rows = max(1, -(-len(shown) // columns))
    fig = Figure(figsize=(columns * (0.9 if names is None else 1.6), rows * 1.05 + 0.8))
    axes = fig.subplots(rows, columns, squeeze=False)
    more = f", the first {len(shown)} shown" if len(shown) < len(wrong) else ""
    of = f"{run}: " if run else ""
    fig.suptitle(
        f"{of}{len(wrong)} misrecognised test {what}{more} (true→predicted, confidence)", fontsize=12
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(images[i], cmap="gray_r", interpolation="nearest")
        label = (
            digit_label(labels[i], predictions[i])
            if names is None
            else f"{names[labels[i]]}→\n{names[predictions[i]]}"
        )
        ax.set_title(f"{label} {confidence[i]:.0%}", fontsize=7, color="#b00")
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str], source: str = "") -> Figure:
    """The confusion matrix as a heat map, counts in the cells; ``source`` names the run and
    checkpoint it was measured on."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    shown = np.log1p(confusion)
    ax.imshow(shown, cmap="Blues")
    for (r, c), n in np.ndenumerate(confusion):
        if n:
            ax.text(c, r, str(n), ha="center", va="center", fontsize=8, color="white" if r == c else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes[0]) > 1 else 0)
    ax.set_yticks(range(len(classes)), classes)
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    of = f"{source}\n" if source else ""
    ax.set(xlabel="predicted", ylabel="true", title=f"{of}confusion matrix (accuracy {accuracy:.4f})")
    return fig


def check_figure_path(out: Path) -> None:
    """Refuse an output file whose format ``save`` cannot write, before any work is done."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise PlotError(
            f"{out}: unsupported format {suffix or '(none)'}; expected one of: {', '.join(FORMATS)}"
        )


def save(fig: Figure, out: Path) -> Path:
    """Write a figure as PNG, SVG or a self-contained HTML page (by the file's suffix)."""
    check_figure_path(out)
    suffix = out.suffix.lower()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".html":
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
            encoded = base64.b64encode(buffer.getvalue()).decode()
            title = html.escape(fig.get_suptitle() or "mnistctl", quote=True)
            out.write_text(
                f"<!doctype html><meta charset=utf-8><title>{title}</title>"
                f'<body style="margin:0;background:#fff"><img style="max-width:100%" '
                f'alt="{title}" src="data:image/png;base64,{encoded}"></body>\n',
                encoding="utf-8",
            )
        else:
            fig.savefig(out, dpi=100)
    except OSError as err:
        raise PlotError(f"{out}: cannot write: {err.strerror}") from None
    return out


def sweep_figure(sweep_dir: Path) -> Figure:
    """A sweep at a glance: parallel coordinates (each trial a line from its parameters to its
    metric, coloured by the metric) beside every trial's curve of that metric over the steps."""
    from mnistctl.many.sweep import read_sweep_dir
    from mnistctl.many.trials import short_keys, trial_rows

    sweep = read_sweep_dir(sweep_dir)
    metric = sweep.spec.metric
    rows = [r for r in trial_rows(sweep_dir) if r[metric] is not None]
    if not rows:
        raise PlotError(f"{sweep_dir}: no trial has evaluated yet")
    keys = list(sweep.space)
    fig = Figure(figsize=(17, 6.5), layout="constrained")
    coords, curves = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    fig.suptitle(f"sweep {sweep.name}: {len(rows)} trials, best first by {metric}", fontsize=13)
    values = np.array([r[metric] for r in rows])
    low, high = float(values.min()), float(values.max())
    colours = colormaps["viridis"]((values - low) / ((high - low) or 1.0))
    axes = [_axis_positions([r[k] for r in rows], sweep.space[k].kind == "loguniform") for k in keys]
    axes.append(_axis_positions(list(values), False))
    xs = np.arange(len(axes))
    for i in reversed(range(len(rows))):  # the best drawn last, on top
        ys = [axis[0][i] for axis in axes]
        coords.plot(xs, ys, color=colours[i], lw=2.6 if i == 0 else 1.2, alpha=0.95 if i == 0 else 0.7)
    for x, (_, labels) in zip(xs, axes, strict=True):
        coords.axvline(x, color="gray", lw=0.8)
        for y, text in labels:
            coords.text(x + 0.02, y, text, fontsize=8, va="center")
    labels = short_keys(keys)
    coords.set_xticks(xs, [labels[k] for k in keys] + [metric], fontsize=9)
    coords.set_yticks([])
    coords.set_ylim(-0.05, 1.05)
    coords.set_title("parameters → metric (each line a trial; the thick one is the best)", fontsize=10)
    for spine in ("top", "right", "left"):
        coords.spines[spine].set_visible(False)
    column = metric
    drawn: list[np.ndarray] = []
    for i, row in reversed(list(enumerate(rows))):
        metrics = read_metrics(Path(row["run"]) / METRICS_FILE)
        steps = [m["step"] for m in metrics]
        label = f"{row['trial']} ({row[metric]:.4f})" if i < 5 else None
        drawn.append(np.array([m[column] for m in metrics], dtype=float))
        curves.plot(steps, drawn[-1], color=colours[i], lw=2.2 if i == 0 else 1.0, label=label)
    curves.set(title=f"{metric} of every trial", xlabel="step")
    curves.set_ylim(*accuracy_range(drawn))  # every trial's curve in view, the weakest too
    curves.grid(alpha=0.3)
    handles, labels = curves.get_legend_handles_labels()
    best = "the best" if len(handles) == 1 else f"the {len(handles)} best"
    curves.legend(handles[::-1], labels[::-1], loc="best", fontsize=8, title=best)
    return fig


def _axis_positions(values: list, log: bool) -> tuple[list[float], list[tuple[float, str]]]:
    """Where each value sits on a parallel-coordinates axis in [0, 1], and a few tick labels."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        numbers = np.log10(np.array(values, float)) if log else np.array(values, float)
        low, high = float(numbers.min()), float(numbers.max())
        span = (high - low) or 1.0
        positions = list((numbers - low) / span)
        ticks = sorted({low, high})
        shown = [(float((t - low) / span), f"{(10**t if log else t):.4g}") for t in ticks]
        return positions, shown
    distinct = list(dict.fromkeys(str(v) for v in values))
    place = {v: (i / (len(distinct) - 1) if len(distinct) > 1 else 0.5) for i, v in enumerate(distinct)}
    return [place[str(v)] for v in values], [(p, v) for v, p in place.items()]
