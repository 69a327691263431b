"""`mnistctl reproduce` end to end on a tiny budget; the full runs are the benchmark."""

from __future__ import annotations

import csv
import os
import socket

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.config.shipped import PUBLISHED, WALKTHROUGH
from mnistctl.many.results import _machines, aggregate

from .conftest import CONFIGS


def ledger_row(**changes: str) -> dict[str, str]:
    """One row of docs/reproduce-runs.csv, as aggregate reads it."""
    row = {"config": "conv", "config_sha": "a", "steps": "10", "max_test_accuracy": "0.99",
           "final_test_accuracy": "0.99", "first_99_step": "", "wall_s": "400", "images_per_s": "100",
           "cpu": "x", "cores": "2", "tensorflow": "2"}  # fmt: skip
    return {**row, **changes}


BUDGET = ["--set", "train.steps=20", "--set", "train.eval_every=10", "--set", "data.train_size=500"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_reproduce_fills_the_table_and_skips_finished_runs(mnist_cache, tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    args = ["reproduce", CONFIGS / "softmax.yaml", CONFIGS / "tiny.yaml", "--seeds", "2", "--runs-dir", runs,
            "--docs", docs, "--quiet", *BUDGET]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    ledger = list(csv.DictReader((docs / "reproduce-runs.csv").open()))
    assert sorted((r["config"], r["seed"]) for r in ledger) == [
        ("softmax", "0"),
        ("softmax", "1"),
        ("tiny", "0"),
        ("tiny", "1"),
    ]
    assert len(list(runs.iterdir())) == 4
    table = list(csv.DictReader((docs / "results.csv").open()))
    assert [r["config"] for r in table] == ["softmax", "tiny"]  # the walk-through's order first
    assert table[0]["seeds"] == "2" and "±" in table[0]["max_test_accuracy"]
    assert table[0]["published"] == PUBLISHED["softmax"][1]
    text = (docs / "RESULTS.md").read_text()
    assert "| `softmax` |" in text and "Machine:" in text
    assert text.index("## Past the walk-through") < text.index("| `tiny` |")  # not a walk-through row

    again = invoke(*args)  # everything is in the ledger: nothing is trained again
    assert again.exit_code == 0
    assert len(list(runs.iterdir())) == 4

    changed = invoke(*args, "--set", "train.steps=30")  # a different config is a new row set
    assert changed.exit_code == 0
    assert len(list(runs.iterdir())) == 8
    table = list(csv.DictReader((docs / "results.csv").open()))
    assert table[0]["steps"] == "30"  # the table shows the current version of each config
    earlier = (docs / "RESULTS.md").read_text().split("## Earlier versions")[1]
    assert f"| `softmax` ({table[0]['config_sha']}" not in earlier  # the current one is not earlier
    assert "| `softmax` (" in earlier and ", 20 steps) |" in earlier  # the old one stays visible


def test_slow_configs_get_one_seed_unless_seeds_are_asked_for(mnist_cache, tmp_path, monkeypatch):
    monkeypatch.setattr("mnistctl.many.reproduce.ONE_SEED_AFTER_S", 0.0)  # every run counts as slow
    args = ["reproduce", CONFIGS / "tiny.yaml", "--runs-dir", tmp_path / "runs", "--docs", tmp_path / "docs",
            "--quiet", *BUDGET]  # fmt: skip
    assert invoke(*args).exit_code == 0
    ledger = tmp_path / "docs" / "reproduce-runs.csv"
    assert [r["seed"] for r in csv.DictReader(ledger.open())] == ["0"]
    assert invoke(*args, "--seeds", "2").exit_code == 0  # asked for: seed 1 is trained too
    assert [r["seed"] for r in csv.DictReader(ledger.open())] == ["0", "1"]


def test_fashion_runs_get_their_own_table(fashion_cache, tmp_path):
    args = ["reproduce", CONFIGS / "tiny.yaml", "--dataset", "fashion", "--seeds", "1", "--runs-dir",
            tmp_path / "runs", "--docs", tmp_path / "docs", "--quiet", *BUDGET]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (row,) = list(csv.DictReader((tmp_path / "docs" / "reproduce-runs.csv").open()))
    assert row["config"] == "tiny@fashion"
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "## Fashion-MNIST" in text and "| `tiny@fashion` |" in text


def test_bad_config_is_refused_before_any_training(tmp_path):
    result = invoke(
        "reproduce", CONFIGS / "tiny.yaml", tmp_path / "missing.yaml", "--runs-dir", tmp_path / "runs"
    )
    assert result.exit_code == 2 and "no such config file" in result.output
    assert not (tmp_path / "runs").exists()


def test_reproduce_by_name_outside_the_checkout_keeps_its_ledger_beside_its_runs(
    mnist_cache, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = invoke("reproduce", "tiny", "--seeds", "1", "--quiet", *BUDGET)
    assert result.exit_code == 0, result.output
    runs = tmp_path / "runs" / "reproduce"
    assert [r["config"] for r in csv.DictReader((runs / "reproduce-runs.csv").open())] == ["tiny"]
    assert (runs / "RESULTS.md").is_file() and "RESULTS.md" in result.output


def test_the_ledger_goes_to_the_checkouts_docs_only_inside_the_checkout(tmp_path):
    from mnistctl.config.shipped import SHIPPED_DIR
    from mnistctl.many.reproduce import default_docs_dir

    checkout = SHIPPED_DIR.parent.parent
    if not (checkout / "pyproject.toml").is_file():
        pytest.skip("mnistctl is installed, not run from its checkout")
    runs = tmp_path / "runs"
    assert default_docs_dir(runs, cwd=checkout) == checkout / "docs"
    assert default_docs_dir(runs, cwd=checkout / "tests") == checkout / "docs"
    assert default_docs_dir(runs, cwd=tmp_path) == runs


def test_every_walkthrough_config_is_shipped():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= set(WALKTHROUGH)


def test_aggregate_marks_partial_99_and_one_seed():
    row = ledger_row(max_test_accuracy="0.9900", final_test_accuracy="0.9890", first_99_step="900")
    (summary,) = aggregate([row])
    assert summary["seeds"] == 1 and summary["max_test_accuracy"] == "0.9900"
    assert summary["gap_points"] == "+0.10"
    (summary,) = aggregate([row, {**row, "first_99_step": "", "max_test_accuracy": "0.9800"}])
    assert summary["first_99_step"] == "900 (1/2 seeds)"


def test_machines_line_says_which_machine_measured_what():
    row = ledger_row(cpu="A", vector="AVX2")
    other = {**row, "config": "record", "cpu": "B", "vector": ""}  # a row from before the column
    assert _machines(aggregate([row]), [row]) == "Machine: A (AVX2), 2 cores, TensorFlow 2 (CPU only)."
    line = _machines(aggregate([row, other]), [row, other])
    assert "A (AVX2), 2 cores, TensorFlow 2: `conv`" in line
    assert "B (vector extensions not recorded), 2 cores, TensorFlow 2: `record`" in line


def test_labels_keep_datasets_and_precisions_apart():
    from mnistctl.config import load_config
    from mnistctl.many.reproduce import label

    assert label(load_config(CONFIGS / "conv.yaml")) == "conv"
    assert label(load_config(CONFIGS / "conv.yaml", ["data.dataset=fashion"])) == "conv@fashion"
    assert label(load_config(CONFIGS / "conv.yaml", ["train.precision=bfloat16"])) == "conv+bf16"
    both = load_config(CONFIGS / "conv.yaml", ["train.precision=bfloat16", "data.dataset=fashion"])
    assert label(both) == "conv+bf16@fashion"
    names = ["record", "conv+bf16", "conv_dropout", "conv"]
    assert [r["config"] for r in aggregate([ledger_row(config=n) for n in names])] == [
        "conv",
        "conv+bf16",
        "conv_dropout",
        "record",
    ]


def test_a_second_reproduce_into_the_same_ledger_is_refused(tmp_path):
    from mnistctl.many.reproduce import LEDGER_LOCK
    from mnistctl.run.directory import RunLock

    docs = tmp_path / "docs"
    with RunLock(docs, LEDGER_LOCK):  # as a first `reproduce` still training holds it
        result = invoke("reproduce", CONFIGS / "tiny.yaml", "--runs-dir", tmp_path / "runs", "--docs", docs)
    assert result.exit_code == 2, result.output
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    assert result.output.strip() == f"error: {docs}: in use by {holder}; let it finish or stop it first"
    assert not (tmp_path / "runs").exists() and not (docs / "reproduce-runs.csv").exists()
