"""The training loop, and ``run_experiment`` that wires data, graph, run directory and hooks.

The loop (``fit``) is short on purpose: pick the batch, run one ``session.run``, tell the
hooks. Everything that writes files is a hook.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistctl.checkpoints import CheckpointHook, Checkpoints
from mnistctl.config import Experiment
from mnistctl.data import BatchOrder, Dataset, load_dataset
from mnistctl.errors import MnistctlError
from mnistctl.hooks import EvalRecord, Hook, TrainContext
from mnistctl.metrics import CsvWriter, TensorBoardWriter
from mnistctl.model import Graph, build_graph, count_parameters, make_session
from mnistctl.runs import METRICS_FILE, TENSORBOARD_DIR, Run, RunRecorder, create_run


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
    session,
    g: Graph,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
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


@dataclass
class _Window:
    """Training loss/accuracy and time since the last evaluation."""

    loss: float = 0.0
    correct: int = 0
    images: int = 0
    steps: int = 0
    seconds: float = 0.0


def fit(ctx: TrainContext, data: Dataset, hooks: Sequence[Hook]) -> str:
    """Train from ``ctx.start_step`` to ``ctx.total_steps``; returns the final status.

    Raises:
        Diverged: on the first non-finite loss (after the hooks have been told).
    """
    exp, g, session = ctx.experiment, ctx.graph, ctx.session
    cfg = exp.train
    order = BatchOrder(len(data.train_images), cfg.batch_size, cfg.seed)
    x, y = data.train_images, data.train_labels
    fetches = [g.train_op, g.loss, g.correct]
    window = _Window()
    started = time.perf_counter()
    ctx.step = ctx.start_step
    for hook in hooks:
        hook.begin(ctx)
    status = "failed"
    try:
        for step in range(ctx.start_step, ctx.total_steps):
            t0 = time.perf_counter()
            idx = order.indices(step)
            lr = exp.schedule(step)
            feed = {g.images: x[idx], g.labels: y[idx], g.learning_rate: lr, g.training: True}
            t1 = time.perf_counter()
            _, loss, correct = session.run(fetches, feed)  # the one sync point per step
            ctx.session_s += time.perf_counter() - t1
            if not math.isfinite(loss):
                status = "diverged"
                raise Diverged(
                    f"the loss became {loss} at step {step + 1}; the run stopped and keeps its last "
                    f"good checkpoint. Try a lower learning rate (--set schedule...)"
                )
            window.loss += float(loss) * len(idx)
            window.correct += int(correct)
            window.images += len(idx)
            window.steps += 1
            ctx.step = step + 1
            for hook in hooks:
                hook.after_step(ctx)
            elapsed = time.perf_counter() - t0
            window.seconds += elapsed
            ctx.steps_s += elapsed
            if ctx.step % cfg.eval_every == 0 or ctx.step == ctx.total_steps:
                _evaluate_and_report(ctx, data, window, lr, started, hooks)
                window = _Window()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        for hook in hooks:
            hook.end(ctx, status)
    return status


def _evaluate_and_report(
    ctx: TrainContext, data: Dataset, window: _Window, lr: float, started: float, hooks: Sequence[Hook]
) -> None:
    cfg = ctx.experiment.train
    test = evaluate(ctx.session, ctx.graph, data.test_images, data.test_labels, cfg.eval_batch_size)
    record = EvalRecord(
        step=ctx.step,
        epoch=ctx.step * cfg.batch_size / len(data.train_images),
        learning_rate=lr,
        train_loss=window.loss / max(window.images, 1),
        train_accuracy=window.correct / max(window.images, 1),
        test_loss=test.loss,
        test_accuracy=test.accuracy,
        elapsed_s=time.perf_counter() - started,
        images_per_s=window.images / window.seconds if window.seconds else 0.0,
    )
    improved = test.accuracy > ctx.best_accuracy
    if improved:
        ctx.best_accuracy, ctx.best_step = test.accuracy, ctx.step
    ctx.last = record
    for hook in hooks:
        hook.after_eval(ctx, record, improved)


def load_experiment_data(exp: Experiment, data_dir: Path | None, log: Callable[[str], None]) -> Dataset:
    data = load_dataset(exp.data.dataset, data_dir=data_dir, log=log)
    return data.subset(exp.data.train_size, exp.data.test_size)


def run_experiment(
    exp: Experiment,
    runs_dir: Path,
    name: str | None = None,
    data_dir: Path | None = None,
    extra_hooks: Sequence[Hook] = (),
    log: Callable[[str], None] = lambda _: None,
) -> Run:
    """Train an experiment in a new run directory under ``runs_dir``.

    The data is loaded before the run directory is made, so a missing dataset leaves nothing
    behind. Returns the finished run; its ``run.json`` says how it ended.
    """
    data = load_experiment_data(exp, data_dir, log)
    g = build_graph(exp)
    run = create_run(runs_dir, exp, name)
    run.update(
        parameters=count_parameters(g),
        dataset={
            "name": data.name,
            "train_images": len(data.train_images),
            "test_images": len(data.test_images),
        },
        dataset_sha256=data.checksums,
    )
    try:
        hooks: list[Hook] = [
            RunRecorder(run),
            CsvWriter(run.path / METRICS_FILE),
            TensorBoardWriter(run.path / TENSORBOARD_DIR),
            CheckpointHook(Checkpoints(run.path, g), exp.train.checkpoint_every),
            *extra_hooks,
        ]
        g.graph.finalize()  # nothing may add ops inside the loop (a classic TF1 slowdown)
        with make_session(g) as session:
            session.run(g.init_op)
            fit(TrainContext(exp, g, session, total_steps=exp.train.steps), data, hooks)
    except MnistctlError as err:
        run.update(error=str(err))
        raise
    except Exception as err:
        run.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    return run
