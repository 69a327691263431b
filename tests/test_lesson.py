"""The lesson: the walk-through's models in the talk's order, each an ordinary run trained by
the one driver; interrupted and continued by the same command; shown on the live page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistctl.cli import lesson as lesson_cli
from mnistctl.cli import main
from mnistctl.config import flatten, to_dict
from mnistctl.config.shipped import PUBLISHED
from mnistctl.many.lesson import STEPS, lesson_summary, plan
from mnistctl.run.directory import load_run

from .conftest import live_page

# Each step made small: a few hundred digits, ten steps, an evaluation every five.
SMALL = ("data.train_size=500", "data.test_size=200", "train.steps=10", "train.eval_every=5",
         "train.checkpoint_every=5", "train.eval_batch_size=200")  # fmt: skip
NAMES = [f"{n}-{step.config}" for n, step in enumerate(STEPS, start=1)]


class StopDuring:
    """Stands in for the Ctrl-C guard: asks the training to stop (as a first Ctrl-C does) once
    ``after`` steps have been asked about in all."""

    def __init__(self, after: int) -> None:
        self.after, self.asked = after, 0

    def __enter__(self) -> StopDuring:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self) -> bool:
        self.asked += 1
        return self.asked > self.after

    exit_code = 130


def lesson(runs: Path, *args: str):
    sets = [f"--set={s}" for s in SMALL]
    return CliRunner().invoke(main, ["lesson", "--quick", "--no-live", "--runs-dir", str(runs), *sets, *args])


@pytest.fixture(scope="module")
def taught(mnist_cache, tmp_path_factory):
    """A small quick lesson, interrupted during its second step, then continued to the end.
    Returns the runs directory and what each call printed."""
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lesson_cli, "StopOnSignal", lambda: StopDuring(10 + 4))  # step 1's ten, then 4 of step 2
        first = lesson(runs)
    step1 = (runs / "lesson-quick" / NAMES[0] / "run.json").read_bytes()
    second = lesson(runs)
    return runs, first, second, step1


def test_the_lesson_trains_the_talks_models_in_its_order_each_an_ordinary_run(taught):
    runs, _, second, _ = taught
    assert second.exit_code == 0, second.output
    folder = runs / "lesson-quick"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(NAMES)
    for name in NAMES:
        record = load_run(folder / name).record
        assert record.status == "completed" and record.steps_done == 10, name
    # Each step's heading: what changed and the talk's figure, in the talk's order.
    headings = re.findall(r"step (\d) of 8: ([^─\n]+)", second.output)
    assert [(int(n), title.strip()) for n, title in headings] == [
        (n, s.title) for n, s in enumerate(STEPS, 1)
    ][1:]
    assert "sigmoid → ReLU  (the talk: 0.9825; 10 steps here)" in second.output
    # The table of results grows a row a step, the talk's figure beside this run's.
    final_table = second.output[second.output.rindex("the lesson so far") :]
    for n, step in enumerate(STEPS, start=1):
        assert f"{PUBLISHED[step.config][0]:.4g}" in final_table and step.short in final_table
        assert f"│ {n}    │" in final_table
    assert "lesson finished: 8 steps" in second.output


def test_each_steps_heading_says_what_its_config_changes(mnist_cache):
    """The line that heads each step is true of the configs: ReLU differs from sigmoid only in
    its activations, the decaying rate only in its schedule, dropout only in its dropout."""
    planned = plan(quick=True)
    flat = [flatten(to_dict(p.job.experiment)) for p in planned]

    def changed(a: dict, b: dict) -> set[str]:
        return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in ("name", "description")}

    assert changed(flat[1], flat[2]) == {f"model.layers[{i}].activation" for i in range(4)}
    assert changed(flat[2], flat[3]) and all(k.startswith("schedule.") for k in changed(flat[2], flat[3]))
    assert changed(flat[3], flat[4]) == {f"model.layers[{i}].dropout" for i in range(4)}
    assert any("batch_norm" in k for k in changed(flat[6], flat[7]))
    assert [p.steps for p in planned] == [s.quick_steps for s in STEPS]
    assert [p.full_steps for p in planned] == [2000] + [10000] * 7
    assert [p.steps for p in plan()] == [2000] + [10000] * 7  # without --quick: the talk's


def test_an_interrupted_lesson_says_so_and_the_same_command_continues_it(taught):
    runs, first, second, step1 = taught
    folder = runs / "lesson-quick"
    assert first.exit_code == 130, first.output
    assert "lesson interrupted at step" in first.output and NAMES[1] in first.output
    assert "continue with: mnistctl lesson --quick --set=data.train_size=500" in first.output
    assert (folder / NAMES[0] / "run.json").read_bytes() == step1  # step 1 finished: left as it was
    resumed = load_run(folder / NAMES[1]).record
    assert len(resumed.resumes) == 1 and 0 < resumed.resumes[0].from_step < 10  # step 2 continued in place
    assert "step 1 of 8" not in second.output  # nothing retrained


def test_from_a_step_and_a_step_that_is_not_there(taught):
    runs, *_ = taught
    again = lesson(runs, "--from", "conv_dropout")
    assert again.exit_code == 0, again.output
    assert "step 7 of 8" not in again.output and "│ 7    │" in again.output and "│ 6    │" not in again.output
    wrong = lesson(runs, "--from", "9")
    assert wrong.exit_code == 2
    assert wrong.output.strip().startswith(
        "error: --from: no step '9'; the lesson's steps are 1 (softmax), 2 "
    )


def test_the_page_reads_the_lesson_from_its_files(taught):
    runs, *_ = taught
    summary = lesson_summary(runs / "lesson-quick")
    assert summary["quick"] is True and summary["current"] == 8
    assert [s["run"] for s in summary["steps"]] == NAMES
    relu = summary["steps"][2]
    assert relu["change"] == "sigmoid → ReLU" and relu["talk"] == 0.9825 and relu["status"] == "completed"
    record = load_run(runs / "lesson-quick" / NAMES[2]).record
    assert relu["best"] == record.best_test_accuracy and relu["best_step"] == record.best_step


def test_the_lesson_on_the_page_in_a_real_browser(taught, spawn):
    runs, *_ = taught
    with live_page(spawn, runs / "lesson-quick") as page:
        chips = page.locator(".chip").all_text_contents()
        heading = page.locator("#lesson-what").text_content()
        page.locator(".chip").nth(2).click()
        page.wait_for_function("document.querySelector('#lesson-what').textContent.startsWith('Step 3')")
        page.wait_for_function("Number(document.body.dataset.drawn || 0) >= 2", timeout=30000)
        relu = page.locator("#lesson-what").text_content()
        score = page.locator("#lesson-score").text_content()
        scrolls = page.evaluate("document.documentElement.scrollHeight > innerHeight")
    assert len(chips) == 8 and chips[0].startswith("1 softmax") and "talk 0.92" in chips[0]
    assert heading.startswith("Step 8 of 8: batch normalisation")
    assert relu == "Step 3 of 8: five dense layers, ReLU — sigmoid → ReLU"
    assert score.startswith("the talk: 0.9825 · this run: ") and "quick: 10 steps (the talk: 10,000)" in score
    assert not scrolls
    assert json.loads((runs / "lesson-quick" / "lesson.json").read_text())["current"] == 8


def test_pause_waits_before_the_next_step_and_the_page_says_so(mnist_cache, tmp_path, monkeypatch):
    """--pause: after a step, lesson.json says what the lesson waits for (the page shows it);
    a Ctrl-C while it waits ends the lesson there, the next step not begun."""
    import signal

    seen = {}

    def ctrl_c_while_waiting(stop) -> bool:
        seen.update(json.loads((tmp_path / "lesson-quick" / "lesson.json").read_text()))
        stop.signum = signal.SIGINT
        return False

    monkeypatch.setattr(lesson_cli, "_wait_for_enter", ctrl_c_while_waiting)
    result = lesson(tmp_path, "--from", "7", "--pause")
    assert result.exit_code == 130, result.output
    assert (
        seen["waiting"] == "paused before step 8: press Enter in the terminal" and seen["waiting_step"] == 8
    )
    assert "next: step 8, batch normalisation on every layer" in result.output
    assert "lesson interrupted; continue with: mnistctl lesson --quick" in result.output
    assert load_run(tmp_path / "lesson-quick" / NAMES[6]).record.status == "completed"
    assert not (tmp_path / "lesson-quick" / NAMES[7]).exists()
