"""Nothing lost: resume in place, interruptions, crashes, divergence, reproducibility."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mnistctl.cli import main

from .conftest import CONFIGS, ROOT, rewrite_config

TINY = str(CONFIGS / "tiny.yaml")
# 120 steps, evaluated every 10 and checkpointed every 25: kills land between checkpoints.
SETTINGS = ["--set", "train.steps=120", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=25"]
RESULT_COLUMNS = (
    "step",
    "epoch",
    "learning_rate",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
)


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def results(run: Path) -> list[tuple[str, ...]]:
    """The metric values that must not depend on timing or interruptions."""
    return [tuple(row[c] for c in RESULT_COLUMNS) for row in metrics(run)]


def meta(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def start_training(runs: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "mnistctl", "train", TINY, "--runs-dir", str(runs), *SETTINGS, *extra]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(runs: Path, rows: int, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        found = list(runs.glob("*/metrics.csv"))
        if found and len(found[0].read_text().splitlines()) - 1 >= rows:
            return found[0].parent
        time.sleep(0.02)
    process.kill()
    raise AssertionError("training made no progress")


@pytest.fixture(scope="module")
def uninterrupted(mnist_cache, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("straight")
    assert invoke("train", TINY, "--runs-dir", runs, *SETTINGS, "--quiet").exit_code == 0
    (run,) = runs.iterdir()
    return run


def test_same_seed_gives_identical_metrics(uninterrupted, tmp_path):
    assert invoke("train", TINY, "--runs-dir", tmp_path, *SETTINGS, "--quiet").exit_code == 0
    (again,) = tmp_path.iterdir()
    assert results(again) == results(uninterrupted)


def test_sigkill_at_a_random_step_then_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    process = start_training(tmp_path)
    run = wait_for_rows(tmp_path, random.Random().randint(2, 9), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    shown = json.loads(invoke("compare", run, "--format", "json").output)
    assert shown[0]["status"] == "crashed"

    result = invoke("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    steps = [int(row["step"]) for row in metrics(run)]
    assert steps == list(range(10, 121, 10))  # each evaluation exactly once
    assert results(run) == results(uninterrupted)
    info = meta(run)
    assert info["status"] == "completed" and info["steps_done"] == 120
    assert len(info["resumes"]) == 1 and info["resumes"][0]["from_step"] in (0, 25, 50, 75, 100)
    saved = [int(p.name[6:-6]) for p in (run / "checkpoints" / "latest").glob("model-*.index")]
    assert max(saved) == 120
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()  # TensorBoard drops the events a resume redid: each step once
    assert [e.step for e in events.Scalars("accuracy/test")] == list(range(10, 121, 10))
    from mnistctl.run.writers import read_evaluations

    logged = read_evaluations(run / "evaluations.jsonl")  # the live page's digits: each step once, the same
    assert logged == read_evaluations(uninterrupted / "evaluations.jsonl")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_and_prints_the_resume_command(uninterrupted, tmp_path, signum, code):
    process = start_training(tmp_path)
    run = wait_for_rows(tmp_path, 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert f"mnistctl train --resume {run}" in stderr
    info = meta(run)
    assert info["status"] == "interrupted"
    stopped = info["steps_done"]
    assert (run / "checkpoints" / "latest" / f"model-{stopped}.index").is_file()
    assert invoke("train", "--resume", run, "--quiet").exit_code == 0
    assert results(run) == results(uninterrupted)
    resumed = meta(run)  # the time adds up over both processes, and the curves' clock goes on
    assert resumed["wall_s"] >= info["wall_s"] + resumed["timing"]["train_s"]
    elapsed = [float(row["elapsed_s"]) for row in metrics(run)]
    assert elapsed == sorted(elapsed), elapsed


def test_completed_run_is_extended_with_more_steps(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    refused = invoke("train", "--resume", run)
    assert refused.exit_code == 2 and "already trained 120 of 120 steps" in refused.output
    result = invoke("train", "--resume", run, "--set", "train.steps=140", "--quiet")
    assert result.exit_code == 0, result.output
    assert [int(r["step"]) for r in metrics(run)][-3:] == [120, 130, 140]
    assert meta(run)["steps_done"] == 140


def test_resume_refuses_config_changes_and_names_the_keys(uninterrupted):
    result = invoke(
        "train", "--resume", uninterrupted, "--set", "model.layers[1].units=32", "--set", "train.eval_every=5"
    )
    assert result.exit_code == 2
    assert (
        "the config differs from the run's: model.layers[1].units: 16 -> 32, train.eval_every: 10 -> 5"
        in result.output
    )
    forced = invoke("train", "--resume", uninterrupted, "--set", "model.layers[1].units=32", "--force")
    assert forced.exit_code == 2
    assert (
        "cannot resume with a different model, optimizer or training data: model.layers[1].units"
        in forced.output
    )


def test_divergence_stops_with_status_and_advice(mnist_cache, tmp_path):
    result = invoke(
        "train", TINY, "--runs-dir", tmp_path, "--quiet",
        "--set", "optimizer={name: sgd}", "--set", "schedule={name: constant, lr: 1.0e+30}",
    )  # fmt: skip
    assert result.exit_code == 3
    assert (
        "the loss became NaN or infinite at step 2;" in result.output
        and "lower learning rate" in result.output
        and "no checkpoint was saved before it" in result.output  # true: none was
    )
    (run,) = tmp_path.iterdir()
    assert meta(run)["status"] == "diverged" and "no checkpoint was saved" in meta(run)["error"]


def test_weights_that_overflow_do_not_crash_the_writers(mnist_cache, tmp_path):
    """A wild rate can leave some weights infinite while the loss stays finite (a ReLU unit
    whose bias went to -inf is dead, not NaN): the histograms and percentiles skip or keep what
    is not finite instead of failing the run with a traceback.

    The infinite bias is set, not provoked: how a diverging run rounds depends on the CPU."""
    from mnistctl.config import load_config
    from mnistctl.run.experiment import run_experiment
    from mnistctl.train.events import Hook

    class KillOneUnit(Hook):
        def after_step(self, ctx):
            if ctx.step == 10:
                bias = ctx.graph.biases[1]  # the dense ReLU layer's
                value = ctx.session.run(bias)
                value[0] = -np.inf
                bias.load(value, ctx.session)

    run = run_experiment(load_config(TINY), runs_dir=tmp_path, extra_hooks=[KillOneUnit()])
    assert run.record.status.value == "completed", run.record.error
    assert np.isfinite(run.record.final.test_loss)
    with (run.path / "distributions.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "biases"]
    assert [float(r["p0"]) for r in rows] == [-np.inf, -np.inf]  # seen at both evaluations
    json.loads((run.path / "run.json").read_text(), parse_constant=_refuse)  # still strict JSON
    plotted = invoke("plot", run.path, "--out", tmp_path / "dashboard.png")  # and it reads back
    assert plotted.exit_code == 0, plotted.output


def _refuse(constant: str):
    raise ValueError(f"not JSON: {constant}")


def test_two_runs_in_the_same_second_get_separate_directories(tmp_path, monkeypatch):
    import datetime as dt

    from mnistctl.config import load_config
    from mnistctl.run import directory
    from mnistctl.run.directory import create_run

    class Frozen(dt.datetime):  # the same second for both, however slow the machine
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=tz)

    monkeypatch.setattr(directory.dt, "datetime", Frozen)
    exp = load_config(TINY)
    first, second = create_run(tmp_path, exp), create_run(tmp_path, exp)
    assert first.path != second.path and first.path.is_dir() and second.path.is_dir()
    assert second.path.name.startswith(first.path.name)


def test_unwritable_runs_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = invoke("train", TINY, "--runs-dir", blocker / "runs")
    assert result.exit_code == 2
    assert f"{blocker / 'runs'}: cannot create the runs directory: Not a directory" in result.output


def test_full_disk_is_one_line_not_a_traceback(mnist_cache, tmp_path, monkeypatch):
    import errno

    from mnistctl.run import directory as runs

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run.json"))

    monkeypatch.setattr(runs, "write_atomic", full)
    result = invoke("train", TINY, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {tmp_path / 'run.json'}: cannot write: No space left on device"
    assert list((tmp_path / "runs").iterdir()) == []  # the run directory is made whole or not at all


@pytest.mark.parametrize("command", [["eval"], ["export", "--out", "{tmp}/model"]])
def test_checkpoint_of_another_architecture_names_the_variable(uninterrupted, tmp_path, command):
    """One restore for eval, export and training: the same words for the same mismatch."""
    import shutil

    run = tmp_path / "other"
    shutil.copytree(uninterrupted, run)
    rewrite_config(run, lambda text: text.replace("units: 16", "units: 24"))
    result = invoke(command[0], run, *(a.format(tmp=tmp_path) for a in command[1:]))
    assert result.exit_code == 2
    assert (
        "made for another model: layer1_dense/weights has shape [784, 16] there and [784, 24]"
        in result.output
    )


def test_truncated_checkpoint_is_reported(uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(uninterrupted, run)
    (data,) = (run / "checkpoints" / "best").glob("*.data-*")
    data.write_bytes(data.read_bytes()[:100])
    result = invoke("eval", run)
    assert result.exit_code == 2 and "damaged checkpoint" in result.output


def test_not_a_run_directory(tmp_path):
    (tmp_path / "x").mkdir()
    result = invoke("train", "--resume", tmp_path / "x")
    assert result.exit_code == 2 and "not a run directory (no run.json and config.yaml)" in result.output


def test_validation_split_chooses_the_checkpoint_and_augmentation_is_reproducible(mnist_cache, tmp_path):
    settings = [
        "--set",
        "data.validation=200",
        "--set",
        "data.augment={rotate: 10, shift: 2, zoom: 0.1}",
        "--quiet",
    ]
    for name in ("a", "b"):
        result = invoke("train", TINY, "--runs-dir", tmp_path / name, *SETTINGS, *settings)
        assert result.exit_code == 0, result.output
    (a,) = (tmp_path / "a").iterdir()
    (b,) = (tmp_path / "b").iterdir()
    assert results(a) == results(b)
    rows = metrics(a)
    assert all(0 < float(r["validation_accuracy"]) <= 1 for r in rows)
    best = max(rows, key=lambda r: float(r["validation_accuracy"]))  # first of equals, as training does
    info = meta(a)
    assert info["selected_by"] == "validation" and info["best_step"] == int(best["step"])
    assert info["best_test_accuracy"] == pytest.approx(float(best["test_accuracy"]))
    assert info["dataset"]["train_images"] == 800


def test_weight_averages_carry_over_a_resume(mnist_cache, tmp_path):
    """The moving averages live in the checkpoint: 30 steps then 30 more evaluate like 60."""
    ema = ["--set", "model.ema_decay=0.9", "--set", "train.eval_every=10", "--quiet"]
    assert (
        invoke("train", TINY, "--runs-dir", tmp_path / "straight", "--set", "train.steps=60", *ema).exit_code
        == 0
    )
    assert (
        invoke("train", TINY, "--runs-dir", tmp_path / "split", "--set", "train.steps=30", *ema).exit_code
        == 0
    )
    (straight,), (split,) = (tmp_path / "straight").iterdir(), (tmp_path / "split").iterdir()
    result = invoke("train", "--resume", split, "--set", "train.steps=60", "--quiet")
    assert result.exit_code == 0, result.output
    assert len(results(split)) == 6 and results(split) == results(straight)
