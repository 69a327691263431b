"""``train.stop_at`` and ``train.early_stopping``: on the fake loop, then on a tiny real run."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.status import Status
from mnistctl.train.events import EvalRecord
from mnistctl.train.loop import fit
from mnistctl.train.stopping import StoppingRules

from .conftest import CONFIGS
from .test_loop import FakeSession, context, fake_graph, tiny_data

STOP_AT = "{metric: validation_accuracy, value: 0.9}"
PATIENCE_2 = "{metric: validation_accuracy, patience: 2}"


def train(accuracies, steps=30, start=0, history=(), **settings):
    session = FakeSession(fake_graph(), accuracies)
    ctx = context(session, steps=steps, start=start, **settings)
    ctx.history = list(history)
    status = fit(ctx, tiny_data(), [StoppingRules(ctx.experiment.train)])
    return status, ctx, session


def record(step, accuracy):
    nan = math.nan
    return EvalRecord(step, 0, 0, 0, 0, 0, accuracy, 0, accuracy, 0, 0, nan)


def test_stop_at_ends_after_the_evaluation_that_reaches_the_target():
    status, ctx, session = train([0.5, 0.9, 0.95], **{"train.stop_at": STOP_AT})
    assert status is Status.TARGET_REACHED and session.steps == 10
    assert ctx.stop_reason == "train.stop_at: validation_accuracy 0.9000 reached 0.9 at step 10"


def test_early_stopping_waits_its_patience_and_ties_do_not_count_as_improvement():
    status, ctx, session = train([0.5, 0.8, 0.7, 0.8, 0.9], **{"train.early_stopping": PATIENCE_2})
    assert status is Status.EARLY_STOPPED and session.steps == 20  # 0.7 and 0.8 after the best 0.8
    assert ctx.stop_reason == (
        "train.early_stopping: validation_accuracy did not improve on 0.8000 (step 10) for 2 evaluations"
    )


def test_min_delta_asks_for_a_real_improvement():
    settings = {"train.early_stopping": "{metric: test_accuracy, patience: 1, min_delta: 0.05}"}
    status, _, session = train([0.5, 0.52, 0.6, 0.62], **settings)
    assert status is Status.EARLY_STOPPED and session.steps == 10  # 0.52 is not 0.05 better


def test_a_resumed_run_counts_the_evaluations_before_its_checkpoint():
    history = [record(5, 0.5), record(10, 0.8), record(15, 0.7)]  # one evaluation waited already
    status, _, session = train([0.75], start=15, history=history, **{"train.early_stopping": PATIENCE_2})
    assert status is Status.EARLY_STOPPED and session.steps == 5  # stops at step 20, not 25


def test_the_last_step_completes_the_run_whatever_the_rules_say():
    status, _, _ = train([0.5, 0.95], steps=10, **{"train.stop_at": STOP_AT})
    assert status is Status.COMPLETED


def test_a_real_run_stops_records_why_and_resumes_only_when_the_rule_changes(mnist_cache, tmp_path):
    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    runs = tmp_path / "runs"
    args = ["train", CONFIGS / "tiny.yaml", "--runs-dir", runs, "--quiet", "--set", "train.eval_every=10"]
    result = invoke(*args, "--set", "train.stop_at={metric: test_accuracy, value: 0.05}")
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "target_reached" and record["steps_done"] == 10
    assert record["stop_reason"].startswith("train.stop_at: test_accuracy ")
    assert record["stop_reason"].endswith(" reached 0.05 at step 10")
    assert "target_reached" in result.output  # said at the end of training
    compared = invoke("compare", run, "--format", "json")
    assert json.loads(compared.output)[0]["status"] == "target_reached"

    again = invoke("train", "--resume", run)
    assert again.exit_code == 2
    assert again.output.strip() == (
        f"error: {run}: {record['stop_reason']}; to train on, change or remove that rule "
        "(--set train.stop_at=null, --set train.early_stopping=null)"
    )
    onward = invoke("train", "--resume", run, "--set", "train.stop_at=null", "--quiet")
    assert onward.exit_code == 0, onward.output
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["steps_done"] == 40 and record["stop_reason"] is None
