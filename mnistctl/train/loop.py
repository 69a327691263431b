"""The training loop: pick a batch, run one ``session.run``, tell the hooks; evaluate on a cadence.

``fit`` is short on purpose, and everything that writes files is a hook. It needs a session and
a graph-like object (``mnistctl.model.Graph``), never TensorFlow itself, so its contract is
tested on a fake session in milliseconds (tests/test_loop.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnistctl.dataset import BatchOrder, Dataset
from mnistctl.errors import NONFINITE_LOSS, MnistctlError
from mnistctl.machine import peak_rss_mb
from mnistctl.status import Status
from mnistctl.train.events import HIDDEN_IMAGES, EvalEvent, EvalRecord, Hook, TrainContext, best_row


class Diverged(MnistctlError):
    """The loss became NaN or infinite."""

    exit_code = 3


@dataclass(frozen=True)
class Evaluation:
    """Results on a whole image set."""

    loss: float
    accuracy: float
    predictions: np.ndarray  # int32 [N]
    probabilities: np.ndarray | None  # float32 [N, 10], when asked for


def evaluate(
    session: Any,
    g: Any,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    keep_probabilities: bool = False,
) -> Evaluation:
    """Loss and accuracy over all images, in batches (dropout off, batch norm in test mode)."""
    loss_sum, correct, predictions, probabilities = 0.0, 0, [], []
    fetches = [g.loss_sum, g.correct, g.predictions] + ([g.probabilities] if keep_probabilities else [])
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        out = session.run(fetches, {g.images: images[start:stop], g.labels: labels[start:stop]})
        loss_sum += float(out[0])
        correct += int(out[1])
        predictions.append(out[2])
        if keep_probabilities:
            probabilities.append(out[3])
    n = len(images)
    return Evaluation(
        loss_sum / n,
        correct / n,
        np.concatenate(predictions),
        np.concatenate(probabilities) if keep_probabilities else None,
    )


@contextmanager
def averaged_weights(session: Any, g: Any) -> Iterator[None]:
    """Inside, the model computes with its weights' moving averages (when it keeps them)."""
    if g.swap_averages is None:
        yield
        return
    session.run(g.swap_averages)
    try:
        yield
    finally:
        session.run(g.swap_averages)


@dataclass
class _Window:
    """Images trained and time spent since the last evaluation (for images/s)."""

    images: int = 0
    seconds: float = 0.0


def fit(
    ctx: TrainContext,
    data: Dataset,
    hooks: Sequence[Hook],
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Status:
    """Train from ``ctx.start_step`` to ``ctx.total_steps``; returns how it ended.

    Every hook's ``begin`` is called inside the same ``try`` as the steps, and every hook that
    began gets ``end`` whatever happens, with the status: ``completed``, ``interrupted`` (when
    ``should_stop`` turns true, polled after every step; or Ctrl-C), the status a hook put in
    ``ctx.stop`` (``stopped``), ``diverged`` or ``failed``.

    Raises:
        Diverged: on the first non-finite loss (after the hooks have been told).
    """
    exp, g, session = ctx.experiment, ctx.graph, ctx.session
    cfg = exp.train
    order = BatchOrder(len(data.train_images), cfg.batch_size, cfg.seed)
    x, y = data.train_images, data.train_labels
    ctx.step = ctx.start_step
    ctx.data = data
    began: list[Hook] = []
    status, error = Status.FAILED, None
    try:
        for hook in hooks:
            began.append(hook)  # a begin that fails half-way still gets its end
            hook.begin(ctx)
        window = _Window()
        # A resumed run's clock goes on from its last kept evaluation: elapsed_s is the time
        # its kept progress took, whatever was lost to a crash or spent between sittings.
        started = time.perf_counter() - (ctx.history[-1].elapsed_s if ctx.history else 0.0)
        for step in range(ctx.start_step, ctx.total_steps):
            t0 = time.perf_counter()
            idx = order.indices(step)
            t1 = time.perf_counter()
            try:  # the one sync point per step; nothing is fetched
                session.run(g.train_op, {g.images: x[idx], g.labels: y[idx], g.training: True})
            except Exception as err:
                if not _is_divergence(err):
                    raise
                status = Status.DIVERGED
                raise Diverged(
                    f"the loss became NaN or infinite at step {step + 1}; the run stopped. "
                    "Try a lower learning rate (--set schedule...)"
                ) from None
            ctx.session_s += time.perf_counter() - t1
            ctx.last_batch = idx
            window.images += len(idx)
            ctx.step = step + 1
            step_s = time.perf_counter() - t0
            window.seconds += step_s
            # Evaluate before the step hooks, so a checkpoint taken at an evaluation step holds
            # an empty training window and a resume from it repeats no row.
            if ctx.step % cfg.eval_every == 0 or ctx.step == ctx.total_steps:
                _evaluate_and_report(ctx, data, window, exp.schedule(step), started, hooks)
                window = _Window()
            t2 = time.perf_counter()
            for hook in hooks:
                hook.after_step(ctx)
            hooks_s = time.perf_counter() - t2  # bookkeeping too, checkpoint saves included
            window.seconds += hooks_s
            ctx.steps_s += step_s + hooks_s
            if ctx.stop is None and should_stop():
                ctx.stop = Status.INTERRUPTED
            if ctx.stop is not None and ctx.step < ctx.total_steps:  # after the last step: completed
                status = ctx.stop
                return status
        status = Status.COMPLETED
    except KeyboardInterrupt as err:
        status, error = Status.INTERRUPTED, err
        raise
    except BaseException as err:
        error = err
        raise
    finally:
        _end_all(began, ctx, status, raising=error is not None)
    return status


def _is_divergence(err: Exception) -> bool:
    return type(err).__name__ == "InvalidArgumentError" and NONFINITE_LOSS in str(err)


def _end_all(hooks: Sequence[Hook], ctx: TrainContext, status: Status, raising: bool) -> None:
    """``end`` for every hook, even when one of them fails; the first failure is raised after
    all have ended, unless another exception is already on its way out."""
    failures = []
    for hook in hooks:
        try:
            hook.end(ctx, status)
        except Exception as err:
            failures.append(err)
    if failures and not raising:
        raise failures[0]


def _evaluate_and_report(
    ctx: TrainContext, data: Dataset, window: _Window, lr: float, started: float, hooks: Sequence[Hook]
) -> None:
    cfg = ctx.experiment.train
    with averaged_weights(ctx.session, ctx.graph):
        test = evaluate(
            ctx.session,
            ctx.graph,
            data.test_images,
            data.test_labels,
            cfg.eval_batch_size,
            keep_probabilities=True,
        )
        validation = None
        if data.validation_images is not None:
            validation = evaluate(
                ctx.session, ctx.graph, data.validation_images, data.validation_labels, cfg.eval_batch_size
            )
    loss_sum, correct, images = ctx.session.run(ctx.graph.train_window)
    ctx.session.run(ctx.graph.reset_window)
    record = EvalRecord(
        step=ctx.step,
        epoch=ctx.step * cfg.batch_size / len(data.train_images),
        learning_rate=lr,
        train_loss=float(loss_sum) / max(int(images), 1),
        train_accuracy=int(correct) / max(int(images), 1),
        test_loss=test.loss,
        test_accuracy=test.accuracy,
        validation_loss=validation.loss if validation else math.nan,
        validation_accuracy=validation.accuracy if validation else math.nan,
        elapsed_s=time.perf_counter() - started,
        images_per_s=window.images / window.seconds if window.seconds else 0.0,
        peak_rss_mb=peak_rss_mb(),
    )
    candidates = [r for r in (ctx.best, record) if r is not None]
    improved = best_row(candidates, ctx.experiment.selection_metric) is record
    if improved:
        ctx.best = record
    ctx.last = record
    event = _measure(ctx, data, record, improved, test)
    ctx.last_event = event
    for hook in hooks:
        hook.after_eval(ctx, event)


def _measure(
    ctx: TrainContext, data: Dataset, record: EvalRecord, improved: bool, test: Evaluation
) -> EvalEvent:
    """Everything the hooks read of an evaluation besides the metrics, in one ``session.run``:
    the weights and biases as trained, the last training batch's predictions and, for models
    with batch norm, the hidden layers' outputs on the first HIDDEN_IMAGES test images (test
    mode: each image's outputs are its own, so one batch can hold both sets of images)."""
    g, batch = ctx.graph, ctx.last_batch
    wants_hidden = bool(g.hidden) and any(layer.normalised for layer in ctx.experiment.model.layers)
    shown = data.test_images[:HIDDEN_IMAGES] if wants_hidden else data.test_images[:0]
    first = g.hidden[0] if g.hidden else g.logits  # the first layer's output (of the probe, last)
    fetched = ctx.session.run(
        {"weights": list(g.weights), "biases": list(g.biases), "predictions": g.predictions,
         "hidden": list(g.hidden) if wants_hidden else [], "first": first},
        {g.images: np.concatenate([data.train_images[batch], shown, data.test_images[:1]])},
    )  # fmt: skip
    hidden = slice(len(batch), len(batch) + len(shown))
    return EvalEvent(
        record=record,
        improved=improved,
        test_predictions=test.predictions,
        test_probabilities=test.probabilities,
        batch=batch,
        batch_predictions=np.asarray(fetched["predictions"])[: len(batch)],
        weights=tuple(zip(_names(g.weights), fetched["weights"], strict=True)),
        biases=tuple(zip(_names(g.biases), fetched["biases"], strict=True)),
        hidden=tuple(np.asarray(h)[hidden] for h in fetched["hidden"]),
        probe=np.asarray(fetched["first"])[-1] if len(data.test_images) else None,
    )


def _names(variables: Sequence[Any]) -> list[str]:
    return [getattr(getattr(v, "op", None), "name", str(v)) for v in variables]
