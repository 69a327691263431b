"""The walk-through as one lesson: the talk's models in the talk's order, each an ordinary run
trained by the one driver (``mnistctl.many.driver.run_jobs``), in a folder of its own that the
live page shows as the lesson.

The folder holds one run directory per step (``3-five_layers_relu``) and ``lesson.json``: the
plan (each step's config, what changed from the step before, the talk's figure) and where the
lesson is (the step training now, or the one it waits to start). Everything else the page shows
comes from the runs' own files, so an interrupted lesson is continued by the same command: the
driver leaves finished steps as they are and resumes the unfinished one in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mnistctl.config import load_config
from mnistctl.config.shipped import PUBLISHED, shipped_configs
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_json, to_json, write_atomic
from mnistctl.many.jobs import Job
from mnistctl.run.directory import RunError, is_run_dir, load_run
from mnistctl.train.events import Hook, TrainContext

LESSON_FILE = "lesson.json"


@dataclass(frozen=True)
class Step:
    """One step of the walk-through."""

    config: str  # the shipped config it trains
    title: str  # what the model is, in a few words
    short: str  # the same, shorter, for the page's row of steps
    change: str  # what changed from the step before, in a line
    quick_steps: int  # training steps under --quick (the config's own otherwise)


# The talk's order. The quick lengths (a fifth to a third of the talk's 10,000 steps; softmax's
# own 2,000) make the lesson 11 minutes on two slow cores (README "The lesson", measured)
# while each model still shows its character: softmax levels off, sigmoid starts slowly, the
# decaying rate calms the curves, dropout parts them, the convolutions pass 98.5%.
STEPS: tuple[Step, ...] = (
    Step("softmax", "one softmax layer", "softmax",
         "784 pixels → 10 classes: one weighted sum and a softmax", 2000),
    Step("five_layers_sigmoid", "five dense layers, sigmoid", "5 layers, sigmoid",
         "one layer → five (200-100-60-30-10) with sigmoid; gradient descent → Adam", 3000),
    Step("five_layers_relu", "five dense layers, ReLU", "ReLU", "sigmoid → ReLU", 3000),
    Step("five_layers_relu_lrdecay", "ReLU, decaying learning rate", "decaying rate",
         "a fixed learning rate 0.003 → 0.0001 + 0.003·e^(−step/2000)", 3000),
    Step("five_layers_relu_lrdecay_dropout", "ReLU, decaying rate, dropout", "dropout",
         "no dropout → dropout 0.25 after each hidden layer", 3000),
    Step("conv", "a convolutional network", "convolutional",
         "dense layers → three convolutional layers (5×5×4, 4×4×8 and 4×4×12, strides 1, 2, 2) "
         "and a dense 200", 3000),
    Step("conv_dropout", "a bigger convolutional network with dropout", "bigger + dropout",
         "4, 8, 12 filters → 6, 12, 24 (kernels 6, 5, 4); dropout 0.25 on the dense layer", 3000),
    Step("batchnorm_conv", "batch normalisation", "batch norm",
         "batch normalisation on every layer; 24, 48, 64 filters; learning rate 0.02 → 0.0001", 2000),
)  # fmt: skip


class LessonError(MnistctlError):
    """A lesson that cannot be planned or continued as asked."""


@dataclass(frozen=True)
class PlannedStep:
    """A step of this lesson: its number, its run directory's name and the run it trains."""

    n: int
    step: Step
    job: Job
    steps: int  # training steps this lesson gives it
    full_steps: int  # the talk's (the config's own)


def plan(quick: bool = False, overrides: Sequence[str] = ()) -> list[PlannedStep]:
    """The lesson's steps, each with the job the driver trains.

    Args:
        quick: train each model for its ``quick_steps`` (the configs' own otherwise).
        overrides: ``--set`` for every step's config, after ``quick``'s (so they win).
    """
    shipped = shipped_configs()
    planned = []
    for n, step in enumerate(STEPS, start=1):
        full = load_config(shipped[step.config])
        full_steps = full.train.steps
        short = [f"train.steps={min(step.quick_steps, full_steps)}"] if quick else []
        exp = load_config(shipped[step.config], [*short, *overrides]) if short or overrides else full
        planned.append(PlannedStep(n, step, Job(f"{n}-{step.config}", exp), exp.train.steps, full_steps))
    return planned


def find_step(planned: Sequence[PlannedStep], wanted: str) -> PlannedStep:
    """A step by its number (``3``) or its config's name (``five_layers_relu``)."""
    for p in planned:
        if wanted in (str(p.n), p.step.config):
            return p
    known = ", ".join(f"{p.n} ({p.step.config})" for p in planned)
    raise LessonError(f"--from: no step {wanted!r}; the lesson's steps are {known}")


def write_state(folder: Path, planned: Sequence[PlannedStep], *, quick: bool, current: int | None,
                waiting: str | None = None, waiting_step: int | None = None) -> None:  # fmt: skip
    """``lesson.json``: the plan, and where the lesson is now (for the page)."""
    state = {
        "quick": quick,
        "current": current,
        "waiting": waiting,  # what the lesson waits for before a step, in words (--pause)
        "waiting_step": waiting_step,
        "steps": [
            {**asdict(p.step), "n": p.n, "run": p.job.name, "steps": p.steps, "full_steps": p.full_steps}
            for p in planned
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / LESSON_FILE, to_json(state, indent=1))


def is_lesson(folder: Path) -> bool:
    return (folder / LESSON_FILE).is_file()


def lesson_summary(folder: Path) -> dict[str, Any]:
    """What the page shows of a lesson: its plan and state, and each step's run as far as it
    got (from run.json alone: the page asks every two seconds)."""
    state = read_json(folder / LESSON_FILE, what="lesson file")
    steps = state.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        raise DamagedFileError(f"{folder / LESSON_FILE}: expected a list of steps")
    shown = []
    for s in steps:
        figure, text = PUBLISHED.get(str(s.get("config")), (None, "?"))
        short = f"{figure:.4g}" if figure else "?"
        step: dict[str, Any] = {**s, "talk": figure, "talk_text": text, "talk_text_short": short}
        run_dir = folder / str(s.get("run", ""))
        step.update(run_exists=False, status=None, best=None, best_step=None)
        if "/" not in str(s.get("run", "/")) and is_run_dir(run_dir):
            try:
                record = load_run(run_dir).record
            except RunError:
                step["status"] = "damaged"
            else:
                step.update(run_exists=True, status=str(record.status), best_step=record.best_step)
                by_validation = record.selected_by == "validation"
                step["best"] = record.best_validation_accuracy if by_validation else record.best_test_accuracy
        shown.append(step)
    return {**state, "steps": shown}


class LessonProgress(Hook):
    """Keeps ``lesson.json``'s current step as the driver starts each step's run."""

    def __init__(self, folder: Path, planned: Sequence[PlannedStep], quick: bool) -> None:
        self.folder, self.planned, self.quick = folder, planned, quick

    def begin(self, ctx: TrainContext) -> None:
        name = ctx.run_dir.name if ctx.run_dir else ""
        for p in self.planned:
            if p.job.name == name:
                write_state(self.folder, self.planned, quick=self.quick, current=p.n)
