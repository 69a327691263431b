"""Ensembles: several tiny runs evaluated and exported as one model that averages them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mnistctl.cli import main

from .conftest import CONFIGS, rewrite_config

SMALL = ["--set", "data.validation=200", "--set", "train.steps=40"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(mnist_cache, tmp_path_factory) -> Path:
    """Three tiny runs with a validation hold-out: seeds 0 and 1, and seed 2 with moving-average
    weights (so a member is evaluated with its averages, as it would be alone)."""
    folder = tmp_path_factory.mktemp("ensemble") / "runs"
    for seed, extra in ((0, []), (1, []), (2, ["--set", "model.ema_decay=0.9"])):
        args = ["train", CONFIGS / "tiny.yaml", "--runs-dir", folder, "--name", f"seed{seed}", "--quiet"]
        result = invoke(*args, *SMALL, "--set", f"train.seed={seed}", *extra)
        assert result.exit_code == 0, result.output
    return folder


def members(runs: Path) -> list[Path]:
    """The three runs, seed 0 first (their names start with the time they were made)."""
    return sorted(p for p in runs.iterdir() if p.is_dir())


def test_the_ensemble_is_the_mean_of_the_members_probabilities(runs):
    from mnistctl.dataset import load_dataset
    from mnistctl.serving.export import Predictor

    result = invoke("eval", *members(runs), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # By hand: each member alone, as `predict` loads it, then the average.
    test = load_dataset("mnist").subset(1000, 500, 200)
    images = test.test_images.astype(np.float32) / 255.0
    alone = [Predictor(path).predict(images) for path in members(runs)]
    mean = np.mean(alone, axis=0)
    labels = test.test_labels
    for one, member in zip(alone, report["members"], strict=True):
        assert member["test_accuracy"] == pytest.approx(np.mean(one.argmax(axis=1) == labels))
    ensemble = report["ensemble"]
    assert ensemble["test_accuracy"] == pytest.approx(np.mean(mean.argmax(axis=1) == labels))
    picked = mean[np.arange(len(labels)), labels]
    assert ensemble["test_loss"] == pytest.approx(float(-np.log(picked).mean()), rel=1e-4)
    assert ensemble["count"] == 500 and ensemble["split"] == "test"
    assert np.array(ensemble["confusion"]).sum() == 500
    # Averaging helps or at least does not fall below the weakest member.
    assert ensemble["test_accuracy"] >= min(m["test_accuracy"] for m in report["members"])


def test_members_are_evaluated_one_at_a_time(runs, monkeypatch):
    """Memory holds one member's graph: each session is closed before the next is made."""
    from mnistctl.many.ensemble import members_of
    from mnistctl.report import evaluate

    open_sessions, most, made = [0], [0], [0]
    make_session = evaluate.make_session

    class Counted:
        def __init__(self, g):
            self.session = make_session(g)

        def __enter__(self):
            open_sessions[0] += 1
            made[0] += 1
            most[0] = max(most[0], open_sessions[0])
            return self.session.__enter__()

        def __exit__(self, *exc):
            open_sessions[0] -= 1
            return self.session.__exit__(*exc)

    monkeypatch.setattr(evaluate, "make_session", Counted)
    report = evaluate.evaluate_ensemble(members_of(members(runs)))
    assert made[0] == 3 and most[0] == 1 and len(report.members) == 3


def test_a_directory_of_runs_is_an_ensemble_and_top_keeps_the_best_by_validation(runs):
    from mnistctl.run.directory import load_run

    result = invoke("eval", runs, "--top", "2", "--json", "--split", "validation")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    by_validation = sorted(members(runs), key=lambda p: load_run(p).record.best_validation_accuracy)
    assert {Path(m["run"]).name for m in report["members"]} == {p.name for p in by_validation[1:]}
    assert report["ensemble"]["split"] == "validation" and report["ensemble"]["count"] == 200


def test_the_ensemble_export_predicts_as_eval_does(runs, tmp_path):
    from mnistctl.dataset import load_dataset
    from mnistctl.many.ensemble import members_of
    from mnistctl.report.evaluate import evaluate_ensemble
    from mnistctl.serving.export import Predictor

    out = tmp_path / "model"
    result = invoke("export", *members(runs), "--out", out)
    assert result.exit_code == 0, result.output
    assert "exported an ensemble of 3 runs" in result.output
    info = json.loads((out / "1" / "mnistctl.json").read_text())
    assert [m["run_name"] for m in info["members"]] == [p.name for p in members(runs)]
    predictor = Predictor(out)
    assert predictor.info["members"] == info["members"]  # what /metadata shows
    images = load_dataset("mnist").test_images[:500].astype(np.float32) / 255.0
    exported = predictor.predict(images)
    report = evaluate_ensemble(members_of(members(runs)))
    assert np.array_equal(exported.argmax(axis=1), report.ensemble.predictions)
    assert np.allclose(exported.max(axis=1), report.ensemble.confidence, atol=1e-5)

    again = invoke("export", *members(runs), "--out", out)  # exists, no --force: refused
    assert again.exit_code == 2 and f"{out / '1'}: already exists (use --force to replace it)" in again.output


def _copy(runs: Path, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(members(runs)[0], copy)
    return copy


def _crashed(copy: Path) -> None:
    record = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**record, "status": "running", "pid": 2**22 + 7}))


def _no_checkpoint(copy: Path) -> None:
    shutil.rmtree(copy / "checkpoints")


def _other_test_set(copy: Path) -> None:
    rewrite_config(copy, lambda text: text.replace("test_size: 500", "test_size: 400"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            _crashed,
            "{copy}: the run is crashed, not finished (finish it with mnistctl train --resume); leave it out",
        ),
        (_no_checkpoint, "{copy}: the run has no checkpoint yet"),
        (
            _other_test_set,
            "{copy}: data.test_size is 400 where {first} has 500; members must be tested on the same images",
        ),
    ],
)
def test_members_that_cannot_be_averaged_are_refused_and_nothing_is_written(runs, tmp_path, damage, message):
    copy = _copy(runs, tmp_path, "member")
    damage(copy)
    for command in (["eval"], ["export", "--out", tmp_path / "model"]):
        result = invoke(command[0], members(runs)[0], copy, *command[1:])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"error: {message.format(copy=copy, first=members(runs)[0].name)}"
    assert not (tmp_path / "model").exists()


def test_an_ensemble_needs_two_runs(runs, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copytree(members(runs)[0], lonely / "seed0")
    shutil.copytree(members(runs)[0], lonely / "stub")
    _no_checkpoint(lonely / "stub")
    result = invoke("eval", lonely)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"{lonely / 'stub'}: leaving it out: it has no checkpoint",
        f"error: {lonely}: an ensemble needs at least two finished runs, found 1",
    ]
    twice = invoke("eval", members(runs)[0], members(runs)[0])
    assert twice.exit_code == 2 and "named twice; each member counts once" in twice.output
    first = members(runs)[0]
    (tmp_path / "alias").symlink_to(first)
    spelled = first.parent / ".." / first.parent.name / first.name
    for other in (tmp_path / "alias", spelled):  # the same run, spelled otherwise: still once
        again = invoke("eval", first, other, members(runs)[1])
        assert again.exit_code == 2 and "named twice" in again.output, again.output
        exported = invoke("export", first, other, members(runs)[1], "--out", tmp_path / "model")
        assert exported.exit_code == 2 and "named twice" in exported.output, exported.output
    assert not (tmp_path / "model").exists()


def test_validation_needs_a_hold_out(trained_run):
    result = invoke("eval", trained_run, "--split", "validation")
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {trained_run}: the run has no validation hold-out (data.validation); use --split test"
    )


def test_choose_size_takes_the_most_accurate_prefix_and_breaks_ties_by_loss():
    from mnistctl.many.ensemble import choose_size

    labels = np.array([0, 1, 2, 0])

    def probs(*rows):
        return np.array(rows, dtype=np.float32)

    a = probs([0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.0, 0.4], [0.9, 0.05, 0.05])  # 3 of 4
    b = probs([0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.1, 0.9, 0.0])  # 3 of 4
    c = probs([0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])  # 0 of 4
    size, curve, losses = choose_size([a, b, c], labels)
    # a alone 3/4; a+b: image 2 becomes right (0.3 vs 0.65) and image 3 stays (0.5 vs 0.475): 4/4
    assert curve == [0.75, 1.0, 0.5] and size == 2  # c then outvotes them on images 2 and 3
    size, curve, _ = choose_size([a, a], labels)  # equal accuracy and loss: the fewer members
    assert curve == [0.75, 0.75] and size == 1
    # The losses by hand: -mean(log p(true label)) of each first-n average
    by_hand = [
        -np.mean(np.log([0.9, 0.8, 0.4, 0.9])),
        -np.mean(np.log([0.85, 0.85, 0.65, 0.5])),
        -np.mean(np.log([0.85 * 2 / 3, (0.85 * 2) / 3, 0.65 * 2 / 3, 0.5 * 2 / 3])),
    ]
    assert np.allclose(losses, by_hand, atol=1e-6)


def test_choose_size_by_loss_follows_the_loss_where_accuracy_would_follow_one_image():
    from mnistctl.many.ensemble import choose_size

    labels = np.array([0, 0, 0])
    hesitant = np.array([[0.51, 0.49]] * 3, dtype=np.float32)  # all right, barely
    sure = np.array([[0.99, 0.01], [0.99, 0.01], [0.3, 0.7]], dtype=np.float32)  # one wrong
    # together: (0.75, 0.75, 0.405) on the true class - one image wrong, a much lower loss
    size, curve, losses = choose_size([hesitant, sure], labels, by="loss")
    assert size == 2 and np.allclose(curve, [1.0, 2 / 3])
    assert np.allclose(losses, [-np.log(0.51), -np.mean(np.log([0.75, 0.75, 0.405]))], atol=1e-6)
    assert choose_size([hesitant, sure], labels, by="accuracy")[0] == 1


def test_the_record_script_chooses_on_validation_and_writes_the_results_section(runs, tmp_path):
    import importlib.util

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "ensemble_record", ROOT / "benchmarks" / "ensemble_record.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    result = script.record(runs)
    assert len(result["members"]) == 3 and 1 <= result["chosen_size"] <= 3
    validation = [m["validation_accuracy"] for m in result["members"]]
    assert validation == sorted(validation, reverse=True)  # ranked on validation only
    assert result["ensemble_validation_accuracy"] == max(result["validation_accuracy_by_size"])
    chosen = [m["run"] for m in result["members"] if m["chosen"]]
    from mnistctl.many.ensemble import members_of
    from mnistctl.report.evaluate import evaluate_ensemble

    if len(chosen) > 1:  # the test accuracy is that of the chosen members, averaged
        test = evaluate_ensemble(members_of([runs / name for name in chosen])).ensemble.test_accuracy
        assert result["ensemble_test_accuracy"] == round(test, 4)

    by_loss = script.record([runs], name="by-loss", by="loss")  # the other rule, same members
    losses = [m["validation_loss"] for m in by_loss["members"]]
    assert losses == sorted(losses) and by_loss["sweep"] == "by-loss" and by_loss["choose_by"] == "loss"
    curve = by_loss["validation_loss_by_size"]
    assert curve[by_loss["chosen_size"] - 1] == min(curve)  # (rounded to 4 places)

    from mnistctl.many.results import ENSEMBLES, _ensembles_markdown

    (tmp_path / ENSEMBLES).write_text(json.dumps({result["sweep"]: result}))
    text = "\n".join(_ensembles_markdown({result["sweep"]: result}))
    assert f"**{result['ensemble_test_accuracy']:.4f}**" in text and "## Ensembles" in text


def test_the_single_model_row_is_the_config_with_the_better_mean_validation_accuracy():
    import importlib.util

    from mnistctl.many.results import _single_models_markdown

    from .conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "ensemble_record", ROOT / "benchmarks" / "ensemble_record.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [  # b: better on validation, worse on test - validation chooses
        {"config": "a", "validation_accuracy": 0.9960, "test_accuracy": 0.9970},
        {"config": "b", "validation_accuracy": 0.9966, "test_accuracy": 0.9950},
        {"config": "a", "validation_accuracy": 0.9962, "test_accuracy": 0.9968},
        {"config": "b", "validation_accuracy": 0.9964, "test_accuracy": 0.9954},
    ]
    configs = script._single_models(rows)
    assert [(c["config"], c["chosen"], c["members"]) for c in configs] == [("a", False, 2), ("b", True, 2)]
    assert configs[1]["validation_accuracy_mean"] == 0.9965 and configs[1]["test_accuracy_mean"] == 0.9952
    text = " ".join(_single_models_markdown({"single_models": configs, "train_images": 55000}))
    assert "config chosen on validation: `b`, mean validation accuracy 0.9965 ± 0.0001 over 2 seeds" in text
    assert "`a` 0.9961 (test 0.9969)" in text and "**test accuracy: 0.9952 ± 0.0003**" in text
    assert _single_models_markdown({"single_models": configs[:1], "train_images": 55000}) == []
