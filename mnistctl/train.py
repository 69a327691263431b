"""The training loop, and ``run_experiment`` that wires data, graph, run directory and hooks.

The loop (``fit``) is short on purpose: pick the batch, run one ``session.run``, tell the
hooks. Everything that writes files is a hook.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistctl.checkpoints import (
    LATEST,
    CheckpointHook,
    Checkpoints,
    drop_checkpoints_after,
    latest_in,
    restore,
)
from mnistctl.config import Experiment, apply_to, diff_configs, dump_yaml, load_config
from mnistctl.data import BatchOrder, Dataset, load_dataset
from mnistctl.errors import MnistctlError
from mnistctl.files import write_atomic
from mnistctl.hooks import EvalRecord, Hook, TrainContext
from mnistctl.metrics import (
    CsvWriter,
    DistributionWriter,
    PredictionWriter,
    TensorBoardWriter,
    read_metrics,
    truncate_metrics,
)
from mnistctl.model import (
    Graph,
    averaged_weights,
    build_graph,
    count_parameters,
    make_session,
    tf_errors,
)
from mnistctl.runs import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DISTRIBUTIONS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TENSORBOARD_DIR,
    Run,
    RunRecorder,
    cpu_has_bfloat16,
    create_run,
    load_run,
    peak_rss_mb,
    utc_now,
)


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
    """Images trained and time spent since the last evaluation (for images/s)."""

    images: int = 0
    seconds: float = 0.0


def fit(
    ctx: TrainContext, data: Dataset, hooks: Sequence[Hook], should_stop: Callable[[], bool] = lambda: False
) -> str:
    """Train from ``ctx.start_step`` to ``ctx.total_steps``; returns the final status.

    ``should_stop`` is polled after every step: a signal handler sets it, and the loop ends
    cleanly after the current step with status ``interrupted`` (checkpointed by the hooks).

    Raises:
        Diverged: on the first non-finite loss (after the hooks have been told).
    """
    exp, g, session = ctx.experiment, ctx.graph, ctx.session
    cfg = exp.train
    order = BatchOrder(len(data.train_images), cfg.batch_size, cfg.seed)
    x, y = data.train_images, data.train_labels
    window = _Window()
    started = time.perf_counter()
    ctx.step = ctx.start_step
    ctx.data = data
    for hook in hooks:
        hook.begin(ctx)
    status = "failed"
    try:
        for step in range(ctx.start_step, ctx.total_steps):
            t0 = time.perf_counter()
            idx = order.indices(step)
            t1 = time.perf_counter()
            try:  # the one sync point per step; nothing is fetched
                session.run(g.train_op, {g.images: x[idx], g.labels: y[idx], g.training: True})
            except tf_errors.InvalidArgumentError as err:
                if "the loss is not a finite number" not in str(err):
                    raise
                status = "diverged"
                raise Diverged(
                    f"the loss became NaN or infinite at step {step + 1}; the run stopped and keeps its "
                    "last good checkpoint. Try a lower learning rate (--set schedule...)"
                ) from None
            ctx.session_s += time.perf_counter() - t1
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
            if should_stop():
                status = "interrupted"
                return status
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
    with averaged_weights(ctx.session, ctx.graph):
        test = evaluate(ctx.session, ctx.graph, data.test_images, data.test_labels, cfg.eval_batch_size, True)
        validation = None
        if data.validation_images is not None:
            validation = evaluate(
                ctx.session, ctx.graph, data.validation_images, data.validation_labels, cfg.eval_batch_size
            )
    ctx.last_test = test
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
    selected = validation.accuracy if validation else test.accuracy  # never the test set when we can help it
    improved = selected > ctx.best_accuracy
    if improved:
        ctx.best_accuracy, ctx.best_step = selected, ctx.step
    ctx.last = record
    for hook in hooks:
        hook.after_eval(ctx, record, improved)


def load_experiment_data(exp: Experiment, data_dir: Path | None, log: Callable[[str], None]) -> Dataset:
    data = load_dataset(exp.data.dataset, data_dir=data_dir, log=log)
    return data.subset(exp.data.train_size, exp.data.test_size, exp.data.validation)


def _check_precision(exp: Experiment, log: Callable[[str], None]) -> None:
    if exp.train.precision == "bfloat16" and not cpu_has_bfloat16():
        log(
            "warning: train.precision is bfloat16 but this CPU has neither AVX512_BF16 nor AMX; "
            "it will be emulated and slower than float32"
        )


def selection_key(exp: Experiment) -> str:
    """The metrics.csv column that chooses the best checkpoint."""
    return "validation_accuracy" if exp.data.validation else "test_accuracy"


def run_experiment(
    exp: Experiment,
    runs_dir: Path,
    name: str | None = None,
    data_dir: Path | None = None,
    extra_hooks: Sequence[Hook] = (),
    log: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Run:
    """Train an experiment in a new run directory under ``runs_dir``.

    The data is loaded and the graph built before the run directory is made, so a missing
    dataset leaves nothing behind. Returns the run; its ``run.json`` says how it ended.
    """
    data = load_experiment_data(exp, data_dir, log)
    _check_precision(exp, log)
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
    _train(run, exp, g, data, None, extra_hooks, should_stop)
    return run


# Keys a resume may change. Steps: always (that is how a finished run is extended); the rest
# only with --force, since they change the results but not the graph's variables.
ALWAYS_RESUMABLE = ("train.steps", "description")
RESUMABLE_WITH_FORCE = ("train.", "schedule.", "data.test_size")


def resume_experiment(
    run_dir: Path,
    overrides: Sequence[str] = (),
    config: Path | None = None,
    force: bool = False,
    data_dir: Path | None = None,
    extra_hooks: Sequence[Hook] = (),
    log: Callable[[str], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Run:
    """Continue a run in place from its latest checkpoint.

    The step counter, learning rate, batch order and dropout masks continue exactly; metric
    rows and TensorBoard events after the checkpoint are dropped and redone.

    Raises:
        ResumeError: when the run is still alive, is complete, or its config would change in a
            way that is not allowed (the message lists the differing keys).
    """
    run = load_run(run_dir)
    if run.status == "running":
        raise ResumeError(f"{run_dir}: still running (pid {run.meta.get('pid')} on {run.meta.get('host')})")
    recorded = run.experiment()
    exp = (
        load_config(config, overrides)
        if config
        else apply_to(recorded, overrides, str(run_dir / CONFIG_FILE))
    )
    changes = diff_configs(recorded, exp)
    _check_changes(run_dir, changes, force)
    checkpoint = latest_in(run.path / CHECKPOINT_DIR / LATEST)
    step = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else 0
    if step >= exp.train.steps:
        raise ResumeError(
            f"{run_dir}: already trained {step} of {exp.train.steps} steps; "
            f"extend it with --set train.steps=N (N > {step})"
        )
    data = load_experiment_data(exp, data_dir, log)
    _check_precision(exp, log)
    g = build_graph(exp)
    truncate_metrics(run.path / METRICS_FILE, step)
    drop_checkpoints_after(run.path, step)
    write_atomic(run.path / CONFIG_FILE, dump_yaml(exp))
    resumes = [*run.meta.get("resumes", []), {"at": utc_now(), "from_step": step, "changed": changes}]
    run.update(resumes=resumes, status="resuming", error=None, pid=os.getpid(), host=socket.gethostname())
    log(f"resuming {run.name} from step {step}" + (f" ({_describe(changes)})" if changes else ""))
    _train(run, exp, g, data, checkpoint, extra_hooks, should_stop)
    return run


class ResumeError(MnistctlError):
    """A run that cannot be resumed as asked."""


def _check_changes(run_dir: Path, changes: list[dict], force: bool) -> None:
    refused = [c for c in changes if not c["key"].startswith(ALWAYS_RESUMABLE)]
    if not force:
        if refused:
            raise ResumeError(
                f"{run_dir}: the config differs from the run's: {_describe(refused)}; "
                "resume with the same config, or --force to accept train/schedule changes"
            )
        return
    breaking = [c for c in refused if not c["key"].startswith(RESUMABLE_WITH_FORCE)]
    if breaking:
        raise ResumeError(
            f"{run_dir}: cannot resume with a different model, optimizer or training data: "
            f"{_describe(breaking)}; start a new run instead"
        )


def _describe(changes: list[dict]) -> str:
    return ", ".join(f"{c['key']}: {c['old']!r} -> {c['new']!r}" for c in changes)


def _train(
    run: Run,
    exp: Experiment,
    g: Graph,
    data: Dataset,
    checkpoint: str | None,
    extra_hooks: Sequence[Hook],
    should_stop: Callable[[], bool],
) -> None:
    """Train ``g`` inside ``run``, from scratch or from ``checkpoint``, recording how it ended."""
    try:
        rows = read_metrics(run.path / METRICS_FILE)
        hooks: list[Hook] = [
            RunRecorder(run),
            CsvWriter(run.path / METRICS_FILE),
            TensorBoardWriter(run.path / TENSORBOARD_DIR),
            DistributionWriter(run.path / DISTRIBUTIONS_FILE),
            PredictionWriter(run.path / PREDICTIONS_FILE),
            CheckpointHook(Checkpoints(run.path, g), exp.train.checkpoint_every),
            *extra_hooks,
        ]
        with make_session(g) as session:
            step = restore(session, g, checkpoint) if checkpoint else 0
            if not checkpoint:
                session.run(g.init_op)
            g.graph.finalize()  # nothing may add ops inside the loop (a classic TF1 slowdown)
            ctx = TrainContext(
                exp, g, session, total_steps=exp.train.steps, start_step=step, run_dir=run.path
            )
            if rows:
                key = selection_key(exp)
                best = max(rows, key=lambda r: r[key])
                ctx.best_accuracy, ctx.best_step = best[key], int(best["step"])
            fit(ctx, data, hooks, should_stop)
    except MnistctlError as err:
        run.update(error=str(err))
        raise
    except Exception as err:
        run.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
