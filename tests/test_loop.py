"""The contract of ``fit`` on a fake session and a tiny in-memory dataset: no TensorFlow, no MNIST.

A fake graph is a bag of names; the fake session answers ``run`` for the few fetches the loop
makes (a training step, the training window, evaluation batches) from a script.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from mnistctl.config import load_config
from mnistctl.dataset import Dataset
from mnistctl.errors import NONFINITE_LOSS
from mnistctl.status import Status
from mnistctl.train.events import EvalRecord, Hook, TrainContext, best_row
from mnistctl.train.loop import Diverged, fit

from .conftest import CONFIGS

TEST_IMAGES = 10


class InvalidArgumentError(Exception):
    """Named as TensorFlow's: the loop recognises a non-finite loss by the name and message."""


class FakeSession:
    """Counts training steps; evaluations return the next scripted accuracy."""

    def __init__(self, g, accuracies=(), fail_at_step=None, diverge_at_step=None):
        self.g = g
        self.steps = 0
        self.accuracies = list(accuracies)
        self.evaluations = 0  # evaluations begun (each reads the test set once)
        self.fail_at_step, self.diverge_at_step = fail_at_step, diverge_at_step
        self.fed = []
        self.measured = []  # the measurement fetches, one per evaluation

    def run(self, fetches, feed=None):
        g = self.g
        if fetches == g.train_op:
            self.steps += 1
            self.fed.append(feed[g.images].shape[0])
            if self.steps == self.fail_at_step:
                raise RuntimeError("a step failed")
            if self.steps == self.diverge_at_step:
                raise InvalidArgumentError(f"{NONFINITE_LOSS} : Tensor had NaN values")
            return None
        if fetches == g.train_window:
            return [1.0, 2, 4]
        if fetches == g.reset_window:
            return None
        if isinstance(fetches, dict):  # the evaluation's one measurement: weights, batch, hidden
            self.measured.append(sorted(fetches))
            n = len(feed[g.images])
            hidden = [np.zeros((n, 4))] * len(fetches["hidden"])
            weights, biases = [np.ones((3, 2))], [np.zeros(2)]
            predictions = np.zeros(n, np.int32)
            first = np.arange(n, dtype=np.float32)[:, None] * np.ones(4)  # image k's output: k
            return {"weights": weights, "biases": biases, "predictions": predictions, "hidden": hidden,
                    "first": first}  # fmt: skip
        # an evaluation batch: [loss_sum, correct, predictions(, probabilities)]. The test set
        # (with probabilities) comes first at each evaluation, then the validation set.
        n = len(feed[g.images])
        testing = len(fetches) == 4
        self.evaluations += testing
        accuracy = self.accuracies[self.evaluations - 1] if self.accuracies else 0.5
        out = [0.5 * n, round(accuracy * n), np.zeros(n, np.int32)]
        return out + ([np.full((n, 10), 0.1, np.float32)] if testing else [])


def fake_graph():
    names = ["images", "labels", "training", "train_op", "train_window", "reset_window"]
    names += ["loss_sum", "correct", "predictions", "probabilities"]
    variables = {"weights": ("layer0/weights",), "biases": ("layer0/biases",), "hidden": ("hidden0",)}
    return SimpleNamespace(**{n: n for n in names}, **variables, swap_averages=None)


def tiny_data(validation: bool = True) -> Dataset:
    zeros = np.zeros((20, 28, 28), np.uint8)
    labels = np.arange(20, dtype=np.uint8) % 10
    return Dataset(
        "fake",
        zeros,
        labels,
        zeros[:TEST_IMAGES],
        labels[:TEST_IMAGES],
        {},
        tuple("0123456789"),
        zeros[:TEST_IMAGES] if validation else None,
        labels[:TEST_IMAGES] if validation else None,
    )


def context(session, steps=10, start=0, validation=True, **settings):
    overrides = [f"train.steps={steps}", "train.eval_every=5", "train.batch_size=4"]
    overrides += [f"data.validation={TEST_IMAGES}"] if validation else []
    overrides += [f"{k}={v}" for k, v in settings.items()]
    exp = load_config(CONFIGS / "tiny.yaml", overrides)
    return TrainContext(exp, session.g, session, total_steps=steps, start_step=start)


class Recorder(Hook):
    """Writes down every call, as ``(event, step)``."""

    def __init__(self, log, name="h", fail_in=None):
        self.log, self.name, self.fail_in = log, name, fail_in

    def _note(self, event, ctx, *extra):
        self.log.append((self.name, event, ctx.step, *extra))
        if event == self.fail_in:
            raise OSError(f"{self.name} failed in {event}")

    def begin(self, ctx):
        self._note("begin", ctx)

    def after_step(self, ctx):
        self._note("after_step", ctx)

    def after_eval(self, ctx, event):
        self._note("after_eval", ctx, event.improved)

    def end(self, ctx, status):
        self._note("end", ctx, status)


def test_hooks_are_called_in_order_and_end_once():
    log = []
    session = FakeSession(fake_graph())
    status = fit(context(session, steps=10), tiny_data(), [Recorder(log)])
    assert status is Status.COMPLETED and session.steps == 10 and set(session.fed) == {4}
    events = [(e, s) for _, e, s, *_ in log]
    assert events[0] == ("begin", 0) and events[-1] == ("end", 10)
    assert [s for e, s in events if e == "after_step"] == list(range(1, 11))
    assert [s for e, s in events if e == "after_eval"] == [5, 10]
    # an evaluation comes before the step hooks of the same step (a checkpoint then holds it)
    assert events.index(("after_eval", 5)) < events.index(("after_step", 5))
    assert log[-1][-1] is Status.COMPLETED


def test_a_failing_begin_still_ends_every_hook_that_began():
    log = []
    hooks = [Recorder(log, "a"), Recorder(log, "b", fail_in="begin"), Recorder(log, "c")]
    session = FakeSession(fake_graph())
    with pytest.raises(OSError, match="b failed in begin"):
        fit(context(session), tiny_data(), hooks)
    assert session.steps == 0
    assert [(name, event) for name, event, *_ in log] == [
        ("a", "begin"),
        ("b", "begin"),
        ("a", "end"),
        ("b", "end"),
    ]
    assert all(entry[-1] is Status.FAILED for entry in log if entry[1] == "end")


def test_an_exception_in_a_step_ends_the_hooks_with_failed_and_propagates():
    log = []
    session = FakeSession(fake_graph(), fail_at_step=3)
    with pytest.raises(RuntimeError, match="a step failed"):
        fit(context(session), tiny_data(), [Recorder(log)])
    assert log[-1][1:] == ("end", 2, Status.FAILED)


def test_a_failing_end_does_not_keep_the_other_hooks_from_ending():
    log = []
    hooks = [Recorder(log, "a", fail_in="end"), Recorder(log, "b")]
    with pytest.raises(OSError, match="a failed in end"):
        fit(context(FakeSession(fake_graph())), tiny_data(), hooks)
    assert ("b", "end", 10, Status.COMPLETED) in log


def test_should_stop_ends_cleanly_after_that_step():
    log = []
    session = FakeSession(fake_graph())
    status = fit(context(session), tiny_data(), [Recorder(log)], should_stop=lambda: session.steps >= 7)
    assert status is Status.INTERRUPTED and session.steps == 7
    assert log[-1][1:] == ("end", 7, Status.INTERRUPTED)


def test_a_nonfinite_loss_is_divergence():
    log = []
    session = FakeSession(fake_graph(), diverge_at_step=4)
    with pytest.raises(Diverged, match="at step 4"):
        fit(context(session), tiny_data(), [Recorder(log)])
    assert log[-1][1:] == ("end", 3, Status.DIVERGED)


def test_best_is_chosen_by_validation_and_improves_only_when_strictly_better():
    accuracies = [0.5, 0.7, 0.7, 0.6]  # validation accuracy at steps 5, 10, 15, 20
    log = []
    session = FakeSession(fake_graph(), accuracies)
    records = []

    class Keep(Hook):
        def after_eval(self, ctx, event):
            records.append(event.record)

    ctx = context(session, steps=20)
    fit(ctx, tiny_data(), [Recorder(log), Keep()])
    assert [entry[-1] for entry in log if entry[1] == "after_eval"] == [True, True, False, False]
    assert ctx.best_step == 10 == best_row(records, "validation_accuracy").step
    assert ctx.best_accuracy == pytest.approx(0.7)


def test_without_validation_the_test_set_chooses():
    session = FakeSession(fake_graph(), [0.2, 0.4])
    ctx = context(session, validation=False)
    fit(ctx, tiny_data(validation=False), [])
    assert ctx.experiment.selection_metric == "test_accuracy"
    assert ctx.best_step == 10 and math.isnan(ctx.last.validation_accuracy)


def test_a_resumed_fit_starts_at_its_step_and_keeps_the_best_it_is_given():
    log = []
    session = FakeSession(fake_graph(), [0.1, 0.1])
    ctx = context(session, steps=20, start=10)
    earlier = EvalRecord.from_row({"step": 10, "test_accuracy": 0.9, "validation_accuracy": 0.3})
    ctx.best = earlier
    fit(ctx, tiny_data(), [Recorder(log)])
    assert session.steps == 10 and log[0][1:3] == ("begin", 10)
    assert ctx.best is earlier  # 0.1 never beats the 0.3 kept from before the resume


def test_best_row_takes_the_first_maximum_and_ignores_nan():
    rows = [{"step": 1, "m": math.nan}, {"step": 2, "m": 0.5}, {"step": 3, "m": 0.5}, {"step": 4, "m": 0.4}]
    assert best_row(rows, "m")["step"] == 2
    assert best_row([{"step": 1, "m": math.nan}], "m") is None
    assert best_row([], "m") is None


def test_a_sweep_trial_reports_its_last_result_after_every_other_hook_has_ended():
    """Tune stops a trial once it has the last result: the run must be complete by then."""
    from mnistctl.many.trial import TuneReporter

    log = []
    reporter = TuneReporter(lambda metrics: log.append(("tune", "report", metrics["step"])))
    fit(context(FakeSession(fake_graph())), tiny_data(), [Recorder(log), reporter])
    events = [entry[:3] for entry in log if entry[1] in ("report", "end")]
    assert events == [("tune", "report", 5), ("h", "end", 10), ("tune", "report", 10)]


def test_a_trial_that_tune_stops_ends_as_stopped():
    from mnistctl.many.trial import TuneReporter

    def stop(metrics):
        raise SystemExit(0)  # what Ray's report does in a trial it has stopped

    session = FakeSession(fake_graph())
    status = fit(context(session, steps=20), tiny_data(), [TuneReporter(stop)])
    assert status is Status.STOPPED and session.steps == 5


def test_one_evaluation_measures_once_and_every_hook_gets_the_same_event():
    """The weights are fetched once per evaluation, however many writers read them."""
    session = FakeSession(fake_graph())
    seen = []

    class Reader(Hook):
        def after_eval(self, ctx, event):
            seen.append(event)

    fit(context(session, steps=10), tiny_data(), [Reader(), Reader(), Reader()])
    assert session.measured == [["biases", "first", "hidden", "predictions", "weights"]] * 2  # steps 5, 10
    assert len(seen) == 6 and seen[0] is seen[1] is seen[2] and seen[3] is seen[4] is seen[5]
    event = seen[-1]
    assert event.record.step == 10 and event.weights[0][0] == "layer0/weights"
    assert event.batch_predictions.shape == event.batch.shape == (4,)  # the batch's, not the extra images'
    assert event.hidden == ()  # tiny has no batch norm: its activations are not carried
    assert (event.probe == 4).all()  # the first layer's output for the first test image, fed last
    assert event.test_probabilities.shape == (TEST_IMAGES, 10)
