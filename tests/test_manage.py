"""Living with many runs: show one, diff two, tag and note them (no TensorFlow)."""

from __future__ import annotations

import shutil
import threading

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.config import load_config
from mnistctl.run.directory import load_run
from mnistctl.run.labels import read_labels

from .conftest import CONFIGS, rewrite_config
from .test_runs import OLD_RUN


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for name in ("a", "b", "c"):
        shutil.copytree(OLD_RUN, root / name)
    rewrite_config(root / "b", lambda text: text.replace("lr0: 0.003", "lr0: 0.004"))
    return root


def test_tags_are_added_removed_shown_and_filtered(runs):
    assert invoke("tag", runs / "a", runs / "b", "+baseline", "+v1").exit_code == 0
    assert invoke("tag", runs / "b", "-v1", "+best").exit_code == 0
    assert read_labels(runs / "a").tags == ("baseline", "v1") and read_labels(runs / "b").tags == (
        "baseline",
        "best",
    )
    table = invoke("compare", runs, "--format", "csv", "--columns", "run,tags")
    assert table.output.splitlines()[1:] == ['a,"baseline,v1"', 'b,"baseline,best"', "c,"]
    best = invoke("compare", runs, "--filter", "tag=best", "--format", "csv", "--columns", "run")
    assert best.output.split()[1:] == ["b"]
    both = invoke("compare", runs, "--filter", "tag=base*", "--format", "csv", "--columns", "run")
    assert both.output.split()[1:] == ["a", "b"]
    from mnistctl.serving.live import create_live_app

    app = create_live_app(runs)
    (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
    assert {r["name"]: r["tags"] for r in listing()["runs"]} == {
        "a": ["baseline", "v1"],
        "b": ["baseline", "best"],
        "c": [],
    }


@pytest.mark.parametrize("args", [["+bad tag"], ["+"], []])
def test_bad_tags_are_one_line_and_change_nothing(runs, args):
    result = invoke("tag", runs / "a", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (runs / "a" / "labels.json").exists()


def test_a_tag_on_a_missing_run_changes_no_run(runs):
    result = invoke("tag", runs / "a", runs / "missing", "+x")
    assert result.exit_code == 2 and "no such run directory" in result.output
    assert not (runs / "a" / "labels.json").exists()  # every run is checked before any is changed


def test_notes_are_kept_beside_a_training_that_rewrites_run_json(runs):
    run = load_run(runs / "a")
    stop = threading.Event()

    def training() -> None:  # a recorder rewriting run.json as fast as it can
        while not stop.is_set():
            run.update(steps_done=run.record.steps_done)

    writer = threading.Thread(target=training)
    writer.start()
    try:
        for i in range(20):
            assert invoke("note", runs / "a", f"note {i}: lr 0.003 looks slow").exit_code == 0
            assert invoke("tag", runs / "a", f"+t{i}").exit_code == 0
    finally:
        stop.set()
        writer.join()
    labels = read_labels(runs / "a")
    assert [n.text for n in labels.notes] == [f"note {i}: lr 0.003 looks slow" for i in range(20)]
    assert labels.tags == tuple(f"t{i}" for i in range(20))
    shown = invoke("show", runs / "a").output
    assert "note 19: lr 0.003 looks slow" in shown and "t19" in shown


def test_show_says_what_differs_from_the_shipped_config_and_how_to_train_it_again(runs):
    result = invoke("show", runs / "b")
    assert result.exit_code == 0, result.output
    assert "what differs from" in result.output and "tiny.yaml" in result.output
    assert "schedule.lr0" in result.output and "0.004" in result.output
    assert "1c785721846013fbca667b535dc3abd8cd0f36d1" in result.output  # the commit it was trained at
    assert f"mnistctl train {runs / 'b' / 'config.yaml'}" in result.output
    everything = invoke("show", runs / "b", "--all").output
    assert "model.layers[0].filters" in everything or "model.layers" in everything


def test_diff_shows_the_keys_that_differ_and_the_results_side_by_side(runs):
    result = invoke("diff", runs / "a", runs / "b")
    assert result.exit_code == 0, result.output
    config = result.output.split("results")[0]
    assert "schedule.lr0" in config and "0.003" in config and "0.004" in config
    assert "train.steps" not in config  # only what differs
    assert "best (test accuracy)" in result.output
    missing = invoke("diff", runs / "a", runs / "nope")
    assert missing.exit_code == 2 and "no such run directory" in missing.output


def test_a_description_is_text_whatever_it_looks_like():
    exp = load_config(CONFIGS / "tiny.yaml", ["description=my note: baseline, lr [0.003]"])
    assert exp.description == "my note: baseline, lr [0.003]"
    result = invoke(
        "compare", OLD_RUN, "--filter", "description=*tiny*", "--format", "csv", "--columns", "run"
    )
    assert result.exit_code == 0 and result.output.split()[1:] == [OLD_RUN.name]


def digests(root):
    import hashlib

    return {
        p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_rm_moves_to_the_trash_and_restore_brings_a_run_back_byte_for_byte(runs):
    before = digests(runs / "a")
    result = invoke("rm", runs / "a")
    assert result.exit_code == 0 and "moved, nothing deleted" in result.output
    assert not (runs / "a").exists()
    listing = invoke("restore", "--from", runs)
    (entry,) = [line.split()[0] for line in listing.output.splitlines()]
    assert entry.endswith("-a") and invoke("compare", runs, "--format", "csv").output.count("\n") == 3  # b, c
    back = invoke("restore", "--from", runs, entry)
    assert back.exit_code == 0 and digests(runs / "a") == before


def test_rm_refuses_a_run_being_trained_and_moves_nothing(runs):
    from mnistctl.run.directory import RunLock

    with RunLock(runs / "b"):  # as a training process holds it
        result = invoke("rm", runs / "a", runs / "b")
    assert result.exit_code == 2 and f"{runs / 'b'}: in use by pid" in result.output
    assert (runs / "a").is_dir() and (runs / "b").is_dir() and not (runs / ".trash").exists()


def test_rm_by_filter_and_gc_of_what_is_older(runs):
    result = invoke("rm", runs, "--filter", "schedule.lr0=0.004")
    left = sorted(p.name for p in runs.iterdir() if p.name != ".mnistctl-index.json")  # compare's index
    assert result.exit_code == 0 and left == [".trash", "a", "c"]
    kept = invoke("gc", runs, "--older-than", "1")  # trashed a moment ago: kept
    assert "nothing to do" in kept.output and len(list((runs / ".trash").iterdir())) == 1
    dry = invoke("gc", runs, "--dry-run")
    assert "would be deleted" in dry.output and len(list((runs / ".trash").iterdir())) == 1
    done = invoke("gc", runs)
    assert "freed" in done.output and not list((runs / ".trash").iterdir())


def test_gc_checkpoints_keeps_best_and_latest_and_the_run_still_evaluates_and_resumes(trained_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_run, runs / "run")
    latest = runs / "run" / "checkpoints" / "latest"
    assert len(list(latest.glob("*.index"))) == 2  # two kept by training
    best = sorted(p.name for p in (runs / "run" / "checkpoints" / "best").iterdir())
    result = invoke("gc", runs, "--checkpoints")
    assert result.exit_code == 0 and "trimmed" in result.output and "freed" in result.output
    assert [p.name for p in latest.glob("*.index")] == ["model-60.index"]
    assert sorted(p.name for p in (runs / "run" / "checkpoints" / "best").iterdir()) == best
    assert invoke("eval", runs / "run").exit_code == 0
    resumed = invoke("train", "--resume", runs / "run", "--set", "train.steps=80", "-q")
    assert resumed.exit_code == 0, resumed.output


def compare_at(width: int, *args) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": str(width)}
    result = subprocess.run([sys.executable, "-m", "mnistctl", "compare", *map(str, args)], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _settings(lr: float, batch: int, every: int):
    def edit(text: str) -> str:
        text = text.replace("lr0: 0.003", f"lr0: {lr}").replace("batch_size: 50", f"batch_size: {batch}")
        return text.replace("eval_every: 10", f"eval_every: {every}")

    return edit


def test_compare_keeps_what_differs_at_80_columns_and_every_column_asked_for(tmp_path):
    runs = tmp_path / "runs"
    settings = [(0.003, 50, 10), (0.004, 50, 10), (0.003, 100, 10), (0.003, 50, 5), (0.005, 100, 5)]
    for i, values in enumerate(settings):  # five runs that differ in three keys
        shutil.copytree(OLD_RUN, runs / f"run-{i}")
        rewrite_config(runs / f"run-{i}", _settings(*values))
    table = compare_at(80, runs)
    header = table.splitlines()[0].split()
    assert {"lr0", "batch_size", "eval_every"} <= set(header), table
    assert max(len(line) for line in table.splitlines()) <= 80
    assert len(header) == len(set(header))  # no two columns headed alike
    asked = ["run", "status", "steps", "best_test_accuracy", "best_step", "max_test_accuracy",
             "final_test_accuracy", "wall_s", "parameters", "schedule.lr0"]  # fmt: skip
    wide = compare_at(60, runs, "--columns", ",".join(asked))  # wider than 60: all of them, wrapped
    assert wide.splitlines()[0].split() == ["run", "status", "steps", "best", "at", "step", "max", "test",
                                            "final", "test", "wall", "s", "parameters", "lr0"]  # fmt: skip
    assert compare_at(80, runs, "--sort", "best", "--reverse").splitlines()[1].startswith("run-")
