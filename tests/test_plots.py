"""The dashboard, comparisons, galleries, recorded distributions and TensorBoard events."""

from __future__ import annotations

import csv
import json
import shutil

import matplotlib.image
import numpy as np
import pytest
from click.testing import CliRunner

from mnistctl.cli import main, sparkline

from .conftest import CONFIGS
from .test_runs import OLD_RUN


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_distributions_are_recorded_per_evaluation(trained_run):
    rows = list(csv.DictReader((trained_run / "distributions.csv").open()))
    assert [(r["step"], r["kind"]) for r in rows] == [
        (s, k) for s in ("20", "40", "60") for k in ("weights", "biases")
    ]
    for row in rows:
        values = [float(row[f"p{p}"]) for p in (0, 10, 25, 50, 75, 90, 100)]
        assert values == sorted(values)


def test_predictions_are_recorded_for_the_gallery(trained_run):
    with np.load(trained_run / "predictions.npz") as saved:
        assert saved["predictions"].shape == (500,) and saved["probabilities"].shape == (500, 10)
        assert int(saved["step"]) == 60 and saved["train_predictions"].shape == (50,)
        accuracy = float((saved["predictions"] == saved["labels"]).mean())
    final = list(csv.DictReader((trained_run / "metrics.csv").open()))[-1]
    assert accuracy == pytest.approx(float(final["test_accuracy"]))


def test_dashboard_png_has_six_panels_of_real_data(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = invoke("plot", run)
    assert result.exit_code == 0, result.output
    image = matplotlib.image.imread(run / "dashboard.png")
    assert image.shape[:2] == (875, 1500)
    assert image[..., :3].std() > 0.1  # not a blank canvas
    from mnistctl.report import plots
    from mnistctl.run.directory import load_run

    figure = plots.dashboard(load_run(run))
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:2] == ["accuracy", "cross-entropy loss"]
    assert "weights: percentiles over time" in titles and "biases: percentiles over time" in titles
    assert any("misrecognised first" in t and "test digits" in t for t in titles)
    assert any("last training batch" in t for t in titles)
    (digits,) = [ax for ax in figure.axes if "test digits" in ax.get_title()]
    width = digits.get_window_extent().width  # pixels at the PNG's 100 dpi
    assert width / 10 >= 20  # ten to a row, each digit at least 20 px: legible
    assert digits.get_images()[0].get_array().shape[:2] == (300, 300)  # a hundred of them


@pytest.mark.parametrize("suffix", [".svg", ".html"])
def test_other_formats(trained_run, tmp_path, suffix):
    out = tmp_path / f"dash{suffix}"
    assert invoke("plot", trained_run, "--out", out).exit_code == 0
    text = out.read_text()
    assert ("<svg" in text) if suffix == ".svg" else ("data:image/png;base64," in text)


def test_compare_overlays_runs(trained_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    out = tmp_path / "cmp.png"
    result = invoke("plot", trained_run, other, "--compare", "--train", "--out", out)
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(out).shape[1] == 1500


def test_compare_fits_every_run_and_names_every_difference(trained_run, tmp_path):
    """A weak run stays on the chart, and the table under it names all five differing keys."""
    from mnistctl.report import plots
    from mnistctl.run.directory import load_run

    weak = tmp_path / "weak"
    shutil.copytree(trained_run, weak)
    metrics = weak / "metrics.csv"
    lines = metrics.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("test_accuracy")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[column] = "0.31"
    metrics.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    config = weak / "config.yaml"
    text = config.read_text()
    changes = [("units: 16", "units: 17"), ("lr0: 0.003", "lr0: 0.002"), ("batch_size: 50", "batch_size: 40")]
    changes += [("seed: 0", "seed: 3"), ("dropout: 0.25", "dropout: 0.5")]
    for old, new in changes:
        assert old in text
        text = text.replace(old, new)
    config.write_text(text)
    figure = plots.compare_figure([load_run(trained_run), load_run(weak)], train=True)
    accuracy = figure.subfigs[0].axes[0]
    low, high = accuracy.get_ylim()
    assert low <= 0.31 and high <= 1.0  # the weak run is on the chart
    assert len(accuracy.get_lines()) >= 4  # test and train curves of both runs
    table = figure.subfigs[1].axes[0].tables[0]
    header = [table[0, c].get_text().get_text() for c in range(len(table.get_celld()) // 3)]
    assert header[:2] == ["#", "run"] and header[-2:] == ["best", "final test"]
    assert {"layers[1]", "lr0", "batch_size", "seed"} <= set(header)


def test_the_compare_table_of_five_runs_differing_in_many_keys_fits_the_figure(trained_run, tmp_path):
    """Five runs set apart by sixteen keys: the table wraps into pieces, each inside the
    figure's width, every key in one piece, no two headers alike, the results in the last."""
    import yaml

    from mnistctl.report import plots
    from mnistctl.run.directory import load_run

    from .conftest import rewrite_config

    keys = [("train", "steps"), ("train", "batch_size"), ("train", "eval_every"), ("train", "seed"),
            ("train", "checkpoint_every"), ("train", "eval_batch_size"), ("schedule", "lr0"),
            ("schedule", "lr_min"), ("schedule", "decay_steps"), ("data", "train_size"),
            ("data", "test_size")]  # fmt: skip
    runs = []
    for k in range(5):
        run = tmp_path / f"20261207T0000{k:02d}Z-a-rather-long-run-name-{k}"
        shutil.copytree(trained_run, run)

        def edit(text: str, k: int = k) -> str:
            config = yaml.safe_load(text)
            for section, key in keys:
                config[section][key] = config[section][key] + k if k else config[section][key]
            layers = config["model"]["layers"]
            layers[0]["filters"] += k
            layers[0]["kernel"] += k % 2
            layers[1]["units"] += 3 * k
            layers[1]["dropout"] = 0.1 * (k + 1)
            config["optimizer"] = {"name": "adam"} if k % 2 else {"name": "sgd"}
            return yaml.safe_dump(config)

        rewrite_config(run, edit)
        runs.append(load_run(run))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = plots.compare_figure(runs)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    width = figure.get_figwidth() * figure.dpi
    tables = [ax.tables[0] for ax in figure.subfigs[1].axes]
    headers = []
    for table in tables:
        box = table.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= width, (box, width)  # inside the figure: nothing cut
        columns = max(c for _, c in table.get_celld()) + 1
        headers.append([table[0, c].get_text().get_text() for c in range(columns)])
    assert len(tables) >= 2  # wrapped
    assert all(h[:2] == ["#", "run"] for h in headers) and headers[-1][-2:] == ["best", "final test"]
    named = [h for piece in headers for h in piece[2:] if h not in ("best", "final test")]
    assert len(named) == len(set(named)) >= 16  # every differing key once, no two headers alike
    assert {"steps", "lr0", "train_size", "layers[0]", "layers[1]"} <= set(named)
    assert {"name", "optimizer.name"} & set(named)  # adam or sgd


@pytest.mark.plumbing
def test_every_picture_names_its_run_and_checkpoint(trained_run, tmp_path):
    from mnistctl.report import plots
    from mnistctl.run.directory import load_run

    title = plots.dashboard(load_run(trained_run))._suptitle.get_text()
    record = load_run(trained_run).record
    assert title.startswith(trained_run.name) and f"best checkpoint: step {record.best_step}" in title
    result = invoke("eval", trained_run, "--gallery", tmp_path / "g.svg", "--confusion", tmp_path / "c.svg")
    assert result.exit_code == 0, result.output
    for picture in ("g.svg", "c.svg"):
        text = (tmp_path / picture).read_text()
        assert trained_run.name in text and "checkpoint" in text and f"step {record.best_step}" in text


def test_bad_output_format_is_one_line(trained_run, tmp_path):
    result = invoke("plot", trained_run, "--out", tmp_path / "x.jpg")
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: {tmp_path / 'x.jpg'}: unsupported format .jpg; expected one of: .png, .svg, .html"
    )


@pytest.mark.plumbing
def test_eval_draws_gallery_and_confusion(trained_run, tmp_path):
    result = invoke("eval", trained_run, "--gallery", tmp_path / "g.png", "--confusion", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(tmp_path / "g.png").std() > 0.05
    assert matplotlib.image.imread(tmp_path / "c.png").std() > 0.05


def test_tensorboard_reader_finds_scalars_and_histograms(trained_run):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(
        str(trained_run / "tensorboard"), size_guidance={"histograms": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    for scalar in ("accuracy/train", "accuracy/test", "loss/train", "loss/test", "learning_rate"):
        assert scalar in tags["scalars"]
    assert [e.step for e in accumulator.Scalars("accuracy/test")] == [20, 40, 60]
    assert "layer0_conv/weights" in tags["histograms"] and "layer2_dense/biases" in tags["histograms"]
    assert tags["graph"]
    # Each evaluation's misrecognised test digits, as a grid of up to 40 of them.
    images = accumulator.Images("misrecognised_test_digits")
    assert [e.step for e in images] == [20, 40, 60]
    wrong = [json.loads(line) for line in (trained_run / "evaluations.jsonl").read_text().splitlines()]
    shown = min(40, len(wrong[-1]["wrong"]))
    assert images[-1].width == min(10, shown) * 30 and images[-1].height == -(-shown // 10) * 30


def test_the_evaluation_log_has_each_evaluations_mistakes_and_last_batch(trained_run):
    from mnistctl.dataset import load_dataset
    from mnistctl.run.writers import read_evaluations, read_metrics

    entries = read_evaluations(trained_run / "evaluations.jsonl")
    rows = read_metrics(trained_run / "metrics.csv")
    assert [e["step"] for e in entries] == [int(r["step"]) for r in rows] == [20, 40, 60]
    labels = load_dataset("mnist").test_labels[:500]
    for entry, row in zip(entries, rows, strict=True):
        assert entry["test_count"] == 500
        assert len(entry["wrong"]) == round((1 - row["test_accuracy"]) * 500)
        assert all(labels[i] != predicted for i, predicted in entry["wrong"])
        assert len(entry["batch"]) == len(entry["batch_predicted"]) == 50


def test_event_files_made_in_one_second_are_kept_apart_in_order(tmp_path):
    """A run resumed within the second its crashed process began (TensorFlow names an event file
    by the second): the events written before are kept, and read first."""
    from tensorboard.backend.event_processing import event_accumulator

    from mnistctl._tf import tf
    from mnistctl.run.tensorboard import event_writer

    for step in (10, 20):
        writer = event_writer(tf, tmp_path, tf.Graph())
        writer.add_summary(
            tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag="x", simple_value=step)]), step
        )
        writer.close()
    assert len(list(tmp_path.iterdir())) == 2
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(10, 10.0), (20, 20.0)]


def test_tensorboard_hparams_dashboard_gets_the_config(trained_run):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = event_accumulator.EventAccumulator(str(trained_run / "tensorboard"))
    accumulator.Reload()
    (content,) = accumulator.PluginTagToContent("hparams").values()
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.group_name == trained_run.name
    assert start.hparams["train.steps"].number_value == 60
    assert start.hparams["model.layers[0].type"].string_value == "conv"


def test_batch_norm_models_record_activations(mnist_cache, tmp_path):
    result = invoke(
        "train", CONFIGS / "tiny.yaml", "--runs-dir", tmp_path, "--quiet",
        "--set", "model.layers[0].batch_norm=true", "--set", "train.steps=20",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    kinds = {row["kind"] for row in csv.DictReader((run / "distributions.csv").open())}
    assert kinds == {"weights", "biases", "activations"}


def test_sparkline():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, 1, 1]) == "▁▁▁"
    assert sparkline([]) == ""


def _write_metrics(run, accuracy) -> None:
    """A metrics.csv whose accuracies follow ``accuracy(step)`` (train a little above test)."""
    import csv

    from mnistctl.train.events import FIELDS

    with (run / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for step in range(100, 2001, 100):
            values = {"step": step, "train_accuracy": accuracy(step) + 0.002, "test_accuracy": accuracy(step),
                      "validation_accuracy": accuracy(step), "train_loss": 0.3, "test_loss": 0.3}  # fmt: skip
            writer.writerow({k: 0 for k in FIELDS} | values)


def test_the_dashboards_accuracy_axis_is_fitted_to_the_run(tmp_path):
    """The talk's first model (softmax, ~0.92) fills its panel; the 99% line only when in range."""
    from mnistctl.report.plots import dashboard
    from mnistctl.run.directory import load_run

    models = {"softmax": lambda s: 0.90 + 0.025 * s / 2000, "record": lambda s: 0.985 + 0.01 * s / 2000}
    for name, accuracy in models.items():
        run = tmp_path / name
        shutil.copytree(OLD_RUN, run)
        _write_metrics(run, accuracy)
        (ax,) = [a for a in dashboard(load_run(run)).axes if a.get_title() == "accuracy"]
        low, high = ax.get_ylim()
        spread = accuracy(2000) + 0.002 - accuracy(200)
        assert low <= accuracy(200) and high >= accuracy(2000) + 0.002  # every curve in view
        assert spread / (high - low) > 0.5, (low, high)  # and filling the panel, not squashed
        flat = [
            line for line in ax.get_lines() if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2
        ]
        assert any(abs(line.get_ydata()[0] - 0.99) < 1e-9 for line in flat) == (name == "record")


def test_one_label_convention_on_the_dashboard_the_gallery_and_the_live_page():
    from importlib import resources

    from mnistctl.digits import digit_label

    assert digit_label(7, 7) == "7" and digit_label(7, 1) == "7→1"  # true→predicted
    page = resources.files("mnistctl").joinpath("static/live.html").read_text()
    # The page writes it the same way (name() is the class's name: a digit, or a Fashion item).
    assert "`${name(panel.labels[k])}→${name(panel.predicted[k])}`" in page
    assert "(${panel.labels[k]})" not in page and "(${name(panel.labels[k])})" not in page


def test_a_fashion_gallery_says_items_and_names_the_classes_and_its_run():
    from mnistctl.data import get_spec
    from mnistctl.report.plots import gallery

    classes = list(get_spec("fashion").classes)
    labels = np.array([0, 1, 2, 3] * 60)
    predictions = (labels + 1) % 10  # every one wrong: 240, of which 200 are drawn
    figure = gallery(
        np.zeros((240, 28, 28)), labels, predictions, np.full(240, 0.5), classes, "runs/f at step 9"
    )
    title = figure._suptitle.get_text()
    assert "runs/f at step 9" in title and "240 misrecognised test items, the first 200 shown" in title
    names = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert names[0].startswith(f"{classes[0]}→") and classes[1] in names[0]
    digits = gallery(
        np.zeros((4, 28, 28)),
        np.array([1, 2, 3, 4]),
        np.array([1, 7, 3, 4]),
        np.ones(4),
        [str(d) for d in range(10)],
    )
    assert "1 misrecognised test digits" in digits._suptitle.get_text()
    assert [ax.get_title() for ax in digits.axes if ax.get_title()] == ["2→7 100%"]
