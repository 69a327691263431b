"""Several runs -> one prediction: soft voting (the mean of the members' probabilities).

Members are chosen as runs (each at its selected checkpoint, with its moving-average weights when
it has them), checked to agree on what they are tested on, and evaluated one after another, so
that memory holds one member's graph at a time whatever their number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistctl.config import Experiment
from mnistctl.errors import MnistctlError
from mnistctl.run.checkpoints import CheckpointError, resolve
from mnistctl.run.directory import Run, is_run_dir, load_run
from mnistctl.run.listing import find_runs

# What decides the images a member is tested on: members must agree on these.
TEST_SET_KEYS = ("data.dataset", "data.test_size")
VALIDATION_KEYS = ("data.dataset", "data.train_size", "data.validation")
SPLITS = ("test", "validation")


class EnsembleError(MnistctlError):
    """Runs that cannot be averaged together."""


@dataclass(frozen=True)
class Member:
    """One run of an ensemble, at the checkpoint it contributes."""

    run: Run
    checkpoint: str

    @property
    def experiment(self) -> Experiment:
        return self.run.trained_experiment()


def is_ensemble(targets: Sequence[Path]) -> bool:
    """Whether ``eval``/``export`` targets name several runs (or a directory of them)."""
    if len(targets) != 1:
        return True
    (target,) = targets
    return target.is_dir() and not is_run_dir(target) and any(is_run_dir(p) for p in target.iterdir())


def members_of(
    targets: Sequence[Path],
    *,
    split: str = "test",
    top: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> list[Member]:
    """The members named by ``targets``: run directories, checkpoints, or directories of runs (a
    sweep, a runs folder), whose finished runs are all taken (or the ``top`` by selection metric).

    Raises:
        EnsembleError: fewer than two members, or members that do not agree on the ``split``.
        CheckpointError, RunError: a member with no checkpoint, or one that is not finished.
    """
    members: list[Member] = []
    for target in targets:
        if target.is_dir() and not is_run_dir(target) and not _is_checkpoint_dir(target):
            members += _finished_runs_in(target, top, log)
        else:
            run_dir, prefix = resolve(target)
            members.append(Member(_finished(load_run(run_dir)), prefix))
    seen: dict[Path, Path] = {}
    for member in members:  # the same checkpoint however it is spelled (a symlink, "..")
        where = Path(member.checkpoint).resolve()
        if where in seen:
            also = f" (also as {seen[where]})" if seen[where] != member.run.path else ""
            raise EnsembleError(f"{member.run.path}: named twice{also}; each member counts once")
        seen[where] = member.run.path
    if len(members) < 2:
        named = ", ".join(map(str, targets))
        raise EnsembleError(f"{named}: an ensemble needs at least two finished runs, found {len(members)}")
    check_agreement(members, split)
    return members


def _is_checkpoint_dir(path: Path) -> bool:
    return any(p.suffix == ".index" for p in path.iterdir())


def _finished(run: Run) -> Run:
    status = run.status
    if not status.finished:
        hint = " (finish it with mnistctl train --resume)" if status.resumable else ""
        raise EnsembleError(f"{run.path}: the run is {status}, not finished{hint}; leave it out")
    return run


def _finished_runs_in(folder: Path, top: int | None, log: Callable[[str], None]) -> list[Member]:
    runs = find_runs([folder])
    finished = [r for r in runs if r.status.finished]
    if len(finished) < len(runs):
        log(f"{folder}: leaving out {len(runs) - len(finished)} runs that are not finished")
    if top is not None:
        finished = sorted(finished, key=_selection_score, reverse=True)[:top]
    members = []
    for run in finished:
        try:
            members.append(Member(run, resolve(run.path)[1]))
        except CheckpointError:
            log(f"{run.path}: leaving it out: it has no checkpoint")
    return members


def _selection_score(run: Run) -> float:
    """How a run ranks for ``--top``: by validation accuracy when it has a hold-out."""
    record = run.record
    score = record.best_validation_accuracy
    if score is None:
        score = record.best_test_accuracy
    return -math.inf if score is None else score


def check_agreement(members: Sequence[Member], split: str) -> None:
    """Refuse members tested on different images, naming the first key that differs."""
    from mnistctl.config import flatten, to_dict

    keys = VALIDATION_KEYS if split == "validation" else TEST_SET_KEYS
    verb = "validated" if split == "validation" else "tested"
    first = flatten(to_dict(members[0].experiment))
    for member in members[1:]:
        other = flatten(to_dict(member.experiment))
        for key in keys:
            if first.get(key) != other.get(key):
                raise EnsembleError(
                    f"{member.run.path}: {key} is {other.get(key)!r} where {members[0].run.path.name} has "
                    f"{first.get(key)!r}; members must be {verb} on the same images"
                )
    if split == "validation" and first.get("data.validation") is None:
        raise EnsembleError(f"{members[0].run.path}: has no validation hold-out (data.validation)")


def describe_members(members: Sequence[Member]) -> list[dict[str, Any]]:
    """Each member as /metadata and mnistctl.json list it."""
    return [
        {
            "run": str(m.run.path),
            "run_name": m.run.name,
            "checkpoint": m.checkpoint,
            "step": int(m.checkpoint.rsplit("-", 1)[1]),
            "config": m.experiment.name,
            "seed": m.experiment.train.seed,
            "best_test_accuracy": m.run.record.best_test_accuracy,
            "best_validation_accuracy": m.run.record.best_validation_accuracy,
        }
        for m in members
    ]


CHOOSE_BY = ("accuracy", "loss")


def mean_probabilities(member_probabilities: Sequence[np.ndarray]) -> np.ndarray:
    """Soft voting: the mean of the members' class probabilities, float64 for the sum."""
    total = np.zeros_like(member_probabilities[0], dtype=np.float64)
    for p in member_probabilities:
        total += p
    return (total / len(member_probabilities)).astype(np.float32)


def log_loss(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of probabilities (the ensemble has no logits)."""
    picked = probabilities[np.arange(len(labels)), labels].astype(np.float64)
    return float(-np.log(np.maximum(picked, np.finfo(np.float32).tiny)).mean())


def choose_size(
    ranked: Sequence[np.ndarray], labels: np.ndarray, by: str = "accuracy"
) -> tuple[int, list[float], list[float]]:
    """How many of the ranked members to average, judged on held-out images.

    Args:
        ranked: each member's probabilities on the hold-out, best member first.
        by: ``accuracy`` (the most accurate first-n average; among equals, the lowest log loss)
            or ``loss`` (the lowest log loss, a smoother measure than accuracy, which on 5,000
            images moves in steps of 0.0002). Among equals, the fewer members.

    Returns:
        The chosen number, and the accuracy and the log loss of the first n averaged, for every n.
    """
    if by not in CHOOSE_BY:
        raise ValueError(f"by: expected one of {', '.join(CHOOSE_BY)}, got {by!r}")  # a bug
    accuracies, losses = [], []
    total = np.zeros_like(ranked[0], dtype=np.float64)
    for n, p in enumerate(ranked, start=1):
        total += p
        mean = (total / n).astype(np.float32)
        accuracies.append(float(np.mean(mean.argmax(axis=1) == labels)))
        losses.append(log_loss(mean, labels))
    if by == "loss":
        best = min(range(len(ranked)), key=lambda i: losses[i])
    else:
        best = max(range(len(ranked)), key=lambda i: (accuracies[i], -losses[i]))
    return best + 1, accuracies, losses
