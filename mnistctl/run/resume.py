"""What a resume may change, and every refusal that needs only the run's files.

``check_resume`` reads the run directory (run.json, config.yaml, metrics.csv, the checkpoint
slots) and nothing else: no TensorFlow, no data. ``mnistctl train --resume`` calls it before
TensorFlow loads, so "already trained", "the config differs" or "still running" arrive at once;
``resume_experiment`` calls it again under the run's lock, since the run may change between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mnistctl.config import Experiment, apply_to, check_machine, diff_configs, load_config
from mnistctl.errors import MnistctlError
from mnistctl.run.checkpoints import LATEST, latest_in, step_of
from mnistctl.run.directory import CHECKPOINT_DIR, CONFIG_FILE, METRICS_FILE, Run, load_run
from mnistctl.run.writers import read_metrics


class ResumeError(MnistctlError):
    """A run that cannot be resumed as asked."""


# Keys a resume may change. Steps: always (that is how a finished run is extended); the rest
# only with --force, since they change the results but not the graph's variables.
ALWAYS_RESUMABLE = ("train.steps", "train.stop_at", "train.early_stopping", "description")
RESUMABLE_WITH_FORCE = ("train.", "schedule.", "data.test_size")
STOPPING_KEYS = ("train.stop_at", "train.early_stopping")


@dataclass(frozen=True)
class ResumePlan:
    """A resume that may go ahead: the run, the config it continues with, what changed, and
    the checkpoint (None: from step 0) it continues from."""

    run: Run
    experiment: Experiment
    changes: list[dict]
    checkpoint: str | None
    step: int


def check_resume(
    run_dir: Path,
    *,
    overrides: Sequence[str] = (),
    config: Path | None = None,
    force: bool = False,
    reclaim: bool = False,
) -> ResumePlan:
    """Every check a resume makes before it changes anything, from the run's files alone.

    Args:
        reclaim: the caller knows the process that last trained the run is gone, though the
            run's record may not show it yet (a sweep retrying a trial whose node died).

    Raises:
        RunError: not a run directory, or a damaged run.json or metrics.csv.
        ResumeError: the run is still alive, is complete, was ended by a rule that still holds,
            or its config would change in a way that is not allowed (naming the keys).
    """
    run = load_run(run_dir)
    read_metrics(run.path / METRICS_FILE)  # a damaged metrics.csv stops here, before any change
    if run.status.claimed and not reclaim:
        raise ResumeError(f"{run_dir}: still running (pid {run.record.pid} on {run.record.host})")
    recorded = run.trained_experiment()
    source = str(run_dir / CONFIG_FILE)
    exp = load_config(config, overrides) if config else apply_to(recorded, overrides, source)
    changes = diff_configs(recorded, exp)
    check_changes(run_dir, changes, force)
    if run.status.ended_by_rule and not any(c["key"].startswith(STOPPING_KEYS) for c in changes):
        raise ResumeError(
            f"{run_dir}: {run.record.stop_reason or run.status}; to train on, change or remove "
            "that rule (--set train.stop_at=null, --set train.early_stopping=null)"
        )
    check_machine(exp, source)
    checkpoint = latest_in(run.path / CHECKPOINT_DIR / LATEST)
    step = step_of(checkpoint) if checkpoint else 0
    if step >= exp.train.steps:
        raise ResumeError(
            f"{run_dir}: already trained {step} of {exp.train.steps} steps; "
            f"extend it with --set train.steps=N (N > {step})"
        )
    return ResumePlan(run, exp, changes, checkpoint, step)


def check_changes(run_dir: Path, changes: list[dict], force: bool) -> None:
    """The resume policy: which config changes a resume accepts.

    Raises:
        ResumeError: listing the keys that may not change (with or without ``force``).
    """
    refused = [c for c in changes if not c["key"].startswith(ALWAYS_RESUMABLE)]
    if not force:
        if refused:
            raise ResumeError(
                f"{run_dir}: the config differs from the run's: {describe_changes(refused)}; "
                "resume with the same config, or --force to accept train/schedule changes"
            )
        return
    breaking = [c for c in refused if not c["key"].startswith(RESUMABLE_WITH_FORCE)]
    if breaking:
        raise ResumeError(
            f"{run_dir}: cannot resume with a different model, optimizer or training data: "
            f"{describe_changes(breaking)}; start a new run instead"
        )


def describe_changes(changes: list[dict]) -> str:
    return ", ".join(f"{c['key']}: {c['old']!r} -> {c['new']!r}" for c in changes)
