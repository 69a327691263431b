"""One experiment in one run directory: set up, train with hooks, record how it ended.

``run_experiment`` and ``resume_experiment`` are the single run that everything else calls:
``mnistctl train``, ``reproduce``, and each trial of a sweep or member of an ensemble. They
differ only in the hooks they are given: ``default_hooks`` writes the run directory, and
callers add their own (a progress view, a sweep's reporter) or replace the defaults.

What a resume may change, and every refusal that needs only the run's files, is
:mod:`mnistctl.run.resume` (no TensorFlow, so a refusal is instant).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mnistctl.config import Experiment, check_machine, dump_yaml
from mnistctl.dataset import Dataset, load_experiment_data
from mnistctl.errors import MnistctlError
from mnistctl.files import write_atomic
from mnistctl.machine import bfloat16_takes_effect, cpu_flags, onednn_enabled
from mnistctl.model import Graph, build_graph, count_parameters, make_session
from mnistctl.run.checkpoints import LATEST, CheckpointHook, Checkpoints, latest_in, restore, step_of
from mnistctl.run.directory import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DISTRIBUTIONS_FILE,
    EVALUATIONS_FILE,
    KERNELS_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    TENSORBOARD_DIR,
    Resume,
    Run,
    RunLock,
    config_digest,
    create_run,
    load_run,
    utc_now,
)
from mnistctl.run.recorder import RunRecorder
from mnistctl.run.resume import check_resume, describe_changes
from mnistctl.run.tensorboard import TensorBoardWriter
from mnistctl.run.writers import (
    CsvWriter,
    DistributionWriter,
    EvaluationLog,
    KernelLog,
    PredictionWriter,
    forget_after,
    read_metrics,
)
from mnistctl.status import Status
from mnistctl.train.events import EvalRecord, Hook, TrainContext, best_row
from mnistctl.train.loop import Diverged, fit
from mnistctl.train.stopping import StoppingRules

HookFactory = Callable[[Run, Experiment, Graph], list[Hook]]
Log = Callable[[str], None]


def default_hooks(run: Run, experiment: Experiment, graph: Graph) -> list[Hook]:
    """The hooks that make a run directory describe itself: run.json, metrics.csv, TensorBoard
    events, distributions.csv, predictions.npz, evaluations.jsonl and the checkpoints."""
    return [
        RunRecorder(run),
        CsvWriter(run.path / METRICS_FILE),
        TensorBoardWriter(run.path / TENSORBOARD_DIR),
        DistributionWriter(run.path / DISTRIBUTIONS_FILE),
        PredictionWriter(run.path / PREDICTIONS_FILE),
        EvaluationLog(run.path / EVALUATIONS_FILE),
        KernelLog(run.path / KERNELS_FILE),
        CheckpointHook(Checkpoints(run.path, graph), experiment.train.checkpoint_every),
    ]


def run_experiment(
    exp: Experiment,
    *,
    runs_dir: Path,
    name: str | None = None,
    data_dir: Path | None = None,
    build_hooks: HookFactory = default_hooks,
    extra_hooks: Sequence[Hook] = (),
    log: Log = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    exact_name: bool = False,
    threads: int | None = None,
    record: Mapping[str, Any] | None = None,
) -> Run:
    """Train an experiment in a new run directory under ``runs_dir``.

    The data is loaded and the graph built before the run directory is made, so a missing
    dataset leaves nothing behind. Returns the run; its record says how it ended.

    Args:
        exact_name: the directory is ``runs_dir / name``, not ``<time>-<name>`` (a sweep's trial).
        threads: TensorFlow threads (default: every core).
        record: more fields for run.json (a sweep's trial id, the node).
    """
    check_machine(exp, exp.name)
    data = load_experiment_data(exp, data_dir=data_dir, log=log)
    _check_precision(exp, log)
    g = build_graph(exp)
    run = create_run(runs_dir, exp, name, exact=exact_name)
    run.update(
        parameters=count_parameters(g),
        dataset={
            "name": data.name,
            "train_images": len(data.train_images),
            "test_images": len(data.test_images),
        },
        dataset_sha256=data.checksums,
        **(record or {}),
    )
    with RunLock(run.path):
        hooks = _hooks(run, exp, g, build_hooks, extra_hooks)
        _train(run, exp, g, data, hooks=hooks, should_stop=should_stop, threads=threads)
    return run


def _hooks(
    run: Run, exp: Experiment, g: Graph, build_hooks: HookFactory, extra_hooks: Sequence[Hook]
) -> list[Hook]:
    """The stopping rules (part of what the config asks, whoever replaces the writers), then
    the writers, then the caller's own."""
    rules = [StoppingRules(exp.train)] if StoppingRules.wanted(exp.train) else []
    return [*rules, *build_hooks(run, exp, g), *extra_hooks]


class RunWriteError(MnistctlError):
    """A run's file that could not be written (a full disk, say)."""


def resume_experiment(
    run_dir: Path,
    *,
    overrides: Sequence[str] = (),
    config: Path | None = None,
    force: bool = False,
    data_dir: Path | None = None,
    build_hooks: HookFactory = default_hooks,
    extra_hooks: Sequence[Hook] = (),
    log: Log = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    threads: int | None = None,
    record: Mapping[str, Any] | None = None,
    reclaim: bool = False,
) -> Run:
    """Continue a run in place from its latest checkpoint.

    The step counter, learning rate, batch order and dropout masks continue exactly. Nothing is
    forgotten until the checkpoint is restored; then each hook forgets what it kept after it
    (the contract in :mod:`mnistctl.train.events`), and those steps are trained again.

    Args:
        reclaim: the caller knows the process that last trained the run is gone, though the
            run's record may not show it yet (a sweep retrying a trial whose node died).

    Raises:
        ResumeError: when the run is still alive, is complete, or its config would change in a
            way that is not allowed (the message lists the differing keys).
    """
    load_run(run_dir)  # one clear line if it is not a run directory, before the lock file is made
    with RunLock(run_dir):  # one writer at a time: a second resume is refused here
        plan = check_resume(run_dir, overrides=overrides, config=config, force=force, reclaim=reclaim)
        run, exp, changes, checkpoint = plan.run, plan.experiment, plan.changes, plan.checkpoint
        data = load_experiment_data(exp, data_dir=data_dir, log=log)
        _check_precision(exp, log)
        g = build_graph(exp)
        run.update(
            status=Status.RESUMING, error=None, pid=os.getpid(), host=socket.gethostname(), **(record or {})
        )
        said = f" ({describe_changes(changes)})" if changes else ""
        log(f"resuming {run.name} from step {plan.step}{said}")

        def record_resume(restored: int) -> None:
            text = dump_yaml(exp)
            write_atomic(run.path / CONFIG_FILE, text)
            run.update(
                resumes=[*run.record.resumes, Resume(utc_now(), restored, changes)],
                config_sha256=config_digest(text),
            )

        _train(
            run,
            exp,
            g,
            data,
            hooks=_hooks(run, exp, g, build_hooks, extra_hooks),
            should_stop=should_stop,
            checkpoint=checkpoint,
            on_restored=record_resume,
            threads=threads,
        )
        return run


def _check_precision(exp: Experiment, log: Log) -> None:
    """Say what ``precision: bfloat16`` does where the CPU has no bfloat16 of its own."""
    if exp.train.precision != "bfloat16" or bfloat16_takes_effect():
        return
    if not onednn_enabled():
        why = "oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0), and with it the rewrite to bfloat16"
        effect = "the run is float32: the same results and time as train.precision=float32"
    elif "avx512f" in cpu_flags():
        why = "this CPU has AVX-512 but neither AVX512_BF16 nor AMX"
        effect = "oneDNN emulates bfloat16 with AVX-512, which may be slower than float32"
    else:  # measured on an AMD EPYC with AVX2 only: bit-identical results, the same time
        why = "this CPU has neither AVX512_BF16 nor AMX"
        effect = "TensorFlow leaves the graph in float32: the same results and time as float32"
    log(f"note: train.precision is bfloat16 but {why}; {effect} (--set train.precision=float32 says so)")


def _train(
    run: Run,
    exp: Experiment,
    g: Graph,
    data: Dataset,
    *,
    hooks: Sequence[Hook],
    should_stop: Callable[[], bool],
    checkpoint: str | None = None,
    on_restored: Callable[[int], None] = lambda step: None,
    threads: int | None = None,
) -> None:
    """Train ``g`` inside ``run``, from scratch or from ``checkpoint``, recording how it ended.

    A failure before training begins (a damaged checkpoint, say) leaves the run's files as they
    were and its status ``failed`` with the reason; once the hooks have begun, they record it.
    ``on_restored(step)`` is called once the variables hold ``step``: restored, or freshly
    initialised (a resume of a run killed before its first checkpoint starts again at 0).
    """
    try:
        with make_session(g, threads) as session:
            if checkpoint:
                step = restore(session, g, checkpoint)
            else:
                session.run(g.init_op)
                step = 0
            on_restored(step)
            forget_after([path for hook in hooks for path in hook.step_files], step)
            g.graph.finalize()  # nothing may add ops inside the loop (a classic TF1 slowdown)
            kept = [
                EvalRecord.from_row(r) for r in read_metrics(run.path / METRICS_FILE) if r["step"] <= step
            ]
            ctx = TrainContext(
                exp,
                g,
                session,
                total_steps=exp.train.steps,
                start_step=step,
                run_dir=run.path,
                best=best_row(kept, exp.selection_metric),
                history=kept,
            )
            fit(ctx, data, hooks, should_stop=should_stop)
    except KeyboardInterrupt:
        if run.record.status.claimed:  # before the hooks began: nothing was changed
            run.update(status=Status.INTERRUPTED)
        raise
    except Diverged as err:
        kept = latest_in(run.path / CHECKPOINT_DIR / LATEST)
        where = (
            f"its last good checkpoint (step {step_of(kept)}) is kept"
            if kept
            else "no checkpoint was saved before it"
        )
        err.args = (f"{err}; {where}",)
        run.update(error=str(err))
        raise
    except MnistctlError as err:
        if run.record.status.claimed:
            run.update(status=Status.FAILED)
        run.update(error=str(err))
        raise
    except OSError as err:  # a full disk or a read-only directory while a hook wrote a file
        failure = RunWriteError(f"{err.filename or run.path}: cannot write: {err.strerror or err}")
        run.update(status=Status.FAILED, error=str(failure))
        raise failure from None
    except Exception as err:
        run.update(status=Status.FAILED, error=f"{type(err).__name__}: {err}")
        raise
