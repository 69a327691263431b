"""The run's writers, fed synthetic evaluation events: no TensorFlow, no session, no MNIST.

Each writer only writes what the loop measured (``EvalEvent``); a context without a session
proves it never computes anything itself.
"""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from mnistctl.run.writers import (
    PERCENTILES,
    CsvWriter,
    DistributionWriter,
    EvaluationLog,
    KernelLog,
    PredictionWriter,
    forget_after,
    read_distributions,
    read_evaluations,
    read_metrics,
    read_predictions,
    unpack,
)
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, EvalRecord

TEST_LABELS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.uint8)


def record(step: int, accuracy: float) -> EvalRecord:
    return EvalRecord(step=step, epoch=step / 60, learning_rate=0.01, train_loss=0.5, train_accuracy=0.8,
                      test_loss=0.4, test_accuracy=accuracy, validation_loss=math.nan,
                      validation_accuracy=math.nan, elapsed_s=step / 10, images_per_s=1000.0,
                      peak_rss_mb=100.0)  # fmt: skip


def event(step: int, accuracy: float, improved: bool, normalised: bool = False) -> EvalEvent:
    predictions = TEST_LABELS.copy()
    predictions[:2] = [7, 7]  # the first two test digits are wrong
    probabilities = np.full((10, 10), 0.1, np.float32)
    return EvalEvent(
        record=record(step, accuracy),
        improved=improved,
        test_predictions=predictions,
        test_probabilities=probabilities,
        batch=np.array([3, 1, 4]),
        batch_predictions=np.array([3, 1, 9]),
        weights=(("layer0/weights", np.arange(12.0).reshape(3, 4)), ("layer1/weights", np.full(4, 100.0))),
        biases=(("layer0/biases", np.array([-1.0, 1.0])),),
        hidden=(np.linspace(0, 1, 11),) if normalised else (),
    )


def context(start_step: int = 0, normalised: bool = False) -> SimpleNamespace:
    """Only what writers may read: no session, no graph."""
    layers = (SimpleNamespace(normalised=normalised),)
    return SimpleNamespace(
        start_step=start_step,
        experiment=SimpleNamespace(model=SimpleNamespace(layers=layers)),
        data=SimpleNamespace(test_labels=TEST_LABELS),
    )


def feed(writer, events, ctx, status=Status.COMPLETED):
    writer.begin(ctx)
    for e in events:
        writer.after_eval(ctx, e)
    writer.end(ctx, status)


def test_the_csv_writer_writes_each_events_record_and_a_resume_forgets_what_came_after(tmp_path):
    path = tmp_path / "metrics.csv"
    feed(CsvWriter(path), [event(10, 0.5, True), event(20, 0.6, True)], context())
    assert [(r["step"], r["test_accuracy"]) for r in read_metrics(path)] == [(10, 0.5), (20, 0.6)]
    resumed = CsvWriter(path)
    forget_after(resumed.step_files, 10)  # resumed from step 10: as run_experiment does
    feed(resumed, [event(20, 0.7, True)], context(start_step=10))
    assert [(r["step"], r["test_accuracy"]) for r in read_metrics(path)] == [(10, 0.5), (20, 0.7)]


def test_a_resume_forgets_the_rows_after_its_step_in_every_declared_file_and_a_torn_line(tmp_path):
    writers = [
        CsvWriter(tmp_path / "metrics.csv"),
        DistributionWriter(tmp_path / "distributions.csv"),
        EvaluationLog(tmp_path / "evaluations.jsonl"),
    ]
    for writer in writers:
        feed(writer, [event(step, 0.5, True) for step in (10, 20, 30)], context())
    with (tmp_path / "metrics.csv").open("a") as f:
        f.write("40,0.6")  # killed while writing a row
    before = (tmp_path / "metrics.csv").read_text().splitlines()
    forget_after([path for writer in writers for path in writer.step_files], 20)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.csv")] == [10, 20]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == before[:3]  # rows kept as written
    assert {int(row[0]) for row in read_distributions(tmp_path / "distributions.csv")["weights"]} == {10, 20}
    assert [e["step"] for e in read_evaluations(tmp_path / "evaluations.jsonl")] == [10, 20]


def test_the_distribution_writer_summarises_the_events_weights_and_activations(tmp_path):
    path = tmp_path / "distributions.csv"
    feed(DistributionWriter(path), [event(10, 0.5, True, normalised=True)], context(normalised=True))
    kinds = read_distributions(path)
    everything = np.concatenate([np.arange(12.0), np.full(4, 100.0)])
    assert kinds["weights"][0, 1:] == pytest.approx(np.percentile(everything, PERCENTILES))
    assert kinds["biases"][0, 1:] == pytest.approx(np.percentile([-1.0, 1.0], PERCENTILES))
    assert kinds["activations"][0, 1:] == pytest.approx(np.percentile(np.linspace(0, 1, 11), PERCENTILES))
    feed(DistributionWriter(tmp_path / "plain.csv"), [event(10, 0.5, True)], context())
    assert set(read_distributions(tmp_path / "plain.csv")) == {"weights", "biases"}


def test_the_evaluation_log_keeps_each_events_mistakes_and_last_batch(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    feed(EvaluationLog(path), [event(10, 0.5, True), event(20, 0.6, True)], context())
    entries = read_evaluations(path)
    assert [e["step"] for e in entries] == [10, 20]
    assert entries[-1]["wrong"] == [[0, 7], [1, 7]] and entries[-1]["test_count"] == 10
    assert entries[-1]["batch"] == [3, 1, 4] and entries[-1]["batch_predicted"] == [3, 1, 9]


def test_the_kernel_log_keeps_the_first_layers_weights_and_feature_maps_to_a_255th(tmp_path):
    rng = np.random.default_rng(0)
    kernels, maps = rng.normal(size=(5, 5, 1, 6)), np.abs(rng.normal(size=(28, 28, 6)))
    conv = [replace(event(10, 0.5, True), weights=(("layer0/weights", kernels),), probe=maps)]
    path = tmp_path / "kernels.jsonl"
    feed(KernelLog(path), conv, context())
    (entry,) = read_evaluations(path)
    for sent, original in ((unpack(entry["kernels"]), kernels), (unpack(entry["maps"]), maps)):
        span = original.reshape(-1, 6).max(axis=0) - original.reshape(-1, 6).min(axis=0)
        assert sent.shape == original.shape and (np.abs(sent - original) <= span / 510 + 1e-12).all()
    # A dense first layer: its first MAX_UNITS units, each 784 weights (a 28x28 picture).
    dense = [replace(event(20, 0.5, True), weights=(("layer0/weights", rng.normal(size=(784, 200))),),
                     probe=rng.normal(size=200))]  # fmt: skip
    feed(KernelLog(path), dense, context())
    entry = read_evaluations(path)[-1]
    assert entry["kernels"]["shape"] == [784, 16] and entry["maps"]["shape"] == [16]


def test_the_prediction_writer_keeps_the_best_and_the_last_event(tmp_path):
    path = tmp_path / "predictions.npz"
    best = event(10, 0.9, True)
    last = event(20, 0.5, False)
    feed(PredictionWriter(path), [best, last], context())
    saved = read_predictions(path)
    assert int(saved["step"]) == 20 and int(saved["best_step"]) == 10
    assert list(saved["train_indices"]) == [3, 1, 4] and list(saved["train_predictions"]) == [3, 1, 9]
    assert list(saved["predictions"]) == list(last.test_predictions)
    feed(PredictionWriter(tmp_path / "failed.npz"), [best], context(), status=Status.FAILED)
    assert not (tmp_path / "failed.npz").exists()  # a failed run's predictions are not kept
