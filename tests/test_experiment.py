"""run_experiment / resume_experiment on a tiny model and real digits: how runs end, what a
resume forgets and when, one meaning of "best", and old run directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.config import load_config
from mnistctl.run.directory import load_run
from mnistctl.run.recorder import RunRecorder
from mnistctl.run.writers import read_metrics
from mnistctl.status import Status
from mnistctl.train.events import Hook, best_row

from .conftest import CONFIGS
from .test_runs import OLD_RUN

TINY = CONFIGS / "tiny.yaml"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def files_of(run: Path) -> dict[str, bytes]:
    """Every file of a run but its lock (which says who held the run last)."""
    files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != ".lock")
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def validated_run(mnist_cache, tmp_path_factory) -> Path:
    """100 steps with 200 images held out for validation, evaluated every 10 steps."""
    runs = tmp_path_factory.mktemp("validated")
    settings = ["train.steps=100", "train.eval_every=10", "train.checkpoint_every=20", "data.validation=200"]
    result = invoke("train", TINY, "--runs-dir", runs, *[x for s in settings for x in ("--set", s)], "-q")
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    return run


def test_one_best_step_in_run_json_compare_dashboard_and_eval(validated_run):
    from mnistctl.report import plots

    rows = read_metrics(validated_run / "metrics.csv")
    best = best_row(rows, "validation_accuracy")
    record = load_run(validated_run).record
    assert record.selected_by == "validation" and record.best_step == int(best["step"])
    assert record.best_test_accuracy == pytest.approx(best["test_accuracy"])
    assert record.best_validation_accuracy == pytest.approx(best["validation_accuracy"])

    (row,) = json.loads(invoke("compare", validated_run, "--format", "json").output)
    assert row["best_step"] == record.best_step and row["selected_by"] == "validation"
    assert row["best_test_accuracy"] == pytest.approx(record.best_test_accuracy)
    assert row["max_test_accuracy"] == max(r["test_accuracy"] for r in rows)  # the walk-through's measure

    report = json.loads(invoke("eval", validated_run, "--json").output)
    assert report["step"] == record.best_step
    assert report["test_accuracy"] == pytest.approx(record.best_test_accuracy, abs=1e-6)

    figure = plots.dashboard(load_run(validated_run))
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert any(t.startswith("best (by validation)") and t.endswith(f"@ {record.best_step}") for t in legend)


def test_a_failed_restore_leaves_the_files_as_they_were_and_the_status_failed(validated_run, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(validated_run, run)
    (data,) = (run / "checkpoints" / "latest").glob("model-100.data-*")
    data.write_bytes(data.read_bytes()[:100])
    before = files_of(run)
    result = invoke("train", "--resume", run, "--set", "train.steps=120")
    assert result.exit_code == 2 and "damaged checkpoint" in result.output
    record = load_run(run).record
    assert record.status is Status.FAILED and "damaged checkpoint" in record.error
    assert not load_run(run).status.resumable  # reproduce will not retry it on every call
    after = files_of(run)
    assert after.pop("run.json") != before.pop("run.json")
    assert after == before  # metrics, distributions, checkpoints, config: untouched
    assert record.resumes == []


def test_a_hook_that_fails_to_begin_leaves_a_failed_run_not_a_running_one(mnist_cache, tmp_path):
    from mnistctl.run.experiment import RunWriteError, run_experiment

    class Broken(Hook):
        def begin(self, ctx):
            raise OSError(28, "No space left on device", str(ctx.run_dir / "some.file"))

    exp = load_config(TINY, ["train.steps=20"])
    with pytest.raises(RunWriteError, match=r"some.file: cannot write: No space left on device$"):
        run_experiment(exp, runs_dir=tmp_path, extra_hooks=[Broken()])
    (run_dir,) = tmp_path.iterdir()
    run = load_run(run_dir)
    assert run.status is Status.FAILED and "No space left on device" in run.record.error
    assert run.record.ended_at is not None  # the run recorder ended too


def test_the_default_hooks_can_be_replaced(mnist_cache, tmp_path):
    """A sweep trial or a benchmark is run_experiment with other hooks."""
    from mnistctl.run.experiment import run_experiment

    seen = []

    class Report(Hook):
        def after_eval(self, ctx, event):
            seen.append(event.record.step)

    exp = load_config(TINY, ["train.steps=20", "train.eval_every=10"])
    run = run_experiment(exp, runs_dir=tmp_path, build_hooks=lambda run, exp, g: [RunRecorder(run), Report()])
    assert run.record.status is Status.COMPLETED and seen == [10, 20]
    written = sorted(p.name for p in run.path.iterdir() if p.name != "code.patch")  # a changed checkout's
    assert written == [".lock", "config.yaml", "run.json"]


def test_a_run_from_before_the_redesign_evaluates_plots_and_resumes(mnist_cache, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    report = json.loads(invoke("eval", run, "--json").output)
    assert report["step"] == 20 and report["test_accuracy"] == pytest.approx(0.368)
    assert invoke("plot", run, "--out", tmp_path / "old.png").exit_code == 0
    result = invoke("train", "--resume", run, "--set", "train.steps=30", "-q")
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [10, 20, 30]
    record = load_run(run).record
    assert record.status is Status.COMPLETED and [r.from_step for r in record.resumes] == [20]


def test_a_resume_without_a_checkpoint_starts_again_and_says_so(mnist_cache, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    result = invoke("train", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    record = load_run(run).record
    assert [r.from_step for r in record.resumes] == [0] and record.status is Status.COMPLETED
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == [10, 20]


@pytest.mark.plumbing
def test_two_resumes_of_one_run_at_once_one_trains_the_other_is_refused(validated_run, tmp_path):
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    run = tmp_path / "shared"
    shutil.copytree(validated_run, run)
    first = subprocess.Popen(
        [sys.executable, "-m", "mnistctl", "train", "--resume", str(run), "--set", "train.steps=2000", "-q"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while load_run(run).record.status is not Status.RUNNING:  # the first one holds the run
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = invoke("train", "--resume", run, "--set", "train.steps=2000")
        assert second.exit_code == 2
        assert f"{run}: in use by pid {first.pid} on" in second.output
    finally:
        first.terminate()  # SIGTERM: a checkpoint, then status interrupted
        first.communicate(timeout=60)
    steps = [r["step"] for r in read_metrics(run / "metrics.csv")]
    assert steps == sorted(set(steps))  # each evaluation once
    assert load_run(run).record.status is Status.INTERRUPTED


@pytest.mark.parametrize(
    ("flags", "onednn", "says"),
    [
        ({"avx2"}, "1", "neither AVX512_BF16 nor AMX; TensorFlow leaves the graph in float32"),
        ({"avx2", "avx512f"}, "1", "oneDNN emulates bfloat16 with AVX-512"),
        ({"avx2", "avx512f", "avx512_bf16"}, "0", "oneDNN is off (TF_ENABLE_ONEDNN_OPTS=0)"),
        ({"avx2", "amx_bf16"}, "1", None),
    ],
)
def test_bfloat16_where_it_does_not_take_effect_says_what_happens(monkeypatch, flags, onednn, says):
    from mnistctl import machine
    from mnistctl.run import experiment

    said = []
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    monkeypatch.setattr(experiment, "cpu_flags", lambda: flags)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", onednn)
    experiment._check_precision(load_config(TINY, ["train.precision=bfloat16"]), said.append)
    experiment._check_precision(load_config(TINY), said.append)  # float32: nothing to say
    assert said == [] if says is None else (len(said) == 1 and says in said[0])


def test_a_damaged_checkpoint_index_loses_nothing(validated_run, tmp_path):
    """The slots are read from the checkpoint files, not from TensorFlow's little text index."""
    run = tmp_path / "garbled"
    shutil.copytree(validated_run, run)
    for slot in ("latest", "best"):
        (run / "checkpoints" / slot / "checkpoint").write_text("model_checkpoint_path: \x00\x01 garbage\n")
    best = sorted(p.name for p in (run / "checkpoints" / "best").iterdir() if p.name != "checkpoint")
    report = json.loads(invoke("eval", run, "--json").output)
    assert report["step"] == load_run(run).record.best_step
    result = invoke("train", "--resume", run, "--set", "train.steps=120", "-q")
    assert result.exit_code == 0, result.output
    assert load_run(run).record.resumes[-1].from_step == 100  # not 0
    assert [r["step"] for r in read_metrics(run / "metrics.csv")] == list(range(10, 121, 10))
    kept = sorted(p.name for p in (run / "checkpoints" / "best").iterdir() if p.name != "checkpoint")
    assert kept == best or load_run(run).record.best_step > 100  # the best survives unless beaten


def test_checkpoints_keep_their_number_across_resumes_and_leftovers_go(validated_run, tmp_path):
    from mnistctl.run.checkpoints import complete_steps

    run = tmp_path / "often"
    shutil.copytree(validated_run, run)
    latest = run / "checkpoints" / "latest"
    (latest / "model-30.data-00000-of-00001").write_bytes(b"left by a kill")  # data without index
    (latest / "model-110_temp").mkdir()  # a save cut short
    for steps in (120, 140, 160, 180):
        result = invoke("train", "--resume", run, "--set", f"train.steps={steps}", "-q")
        assert result.exit_code == 0, result.output
    assert complete_steps(latest) == [160, 180]
    assert sorted(p.name for p in latest.iterdir()) == sorted(
        ["checkpoint", *(f"model-{s}.index" for s in (160, 180)),
         *(f"model-{s}.data-00000-of-00001" for s in (160, 180))]
    )  # fmt: skip
    assert len(complete_steps(run / "checkpoints" / "best")) == 1
    assert 'model_checkpoint_path: "model-180"' in (latest / "checkpoint").read_text()


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(mnist_cache, small_disk):
    """A 700 KiB tmpfs fills up at the third checkpoint (needs root and mount; else skipped)."""
    disk = small_disk("700k")
    args = ["train", TINY, "--runs-dir", disk / "runs", "--set", "train.steps=200", "--set",
            "train.checkpoint_every=20", "-q"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: ") and line.endswith("No space left on device"), line
    (run,) = (disk / "runs").iterdir()
    record = load_run(run).record
    assert record.status is Status.FAILED and record.error in line
    from mnistctl.run.checkpoints import complete_steps

    assert complete_steps(run / "checkpoints" / "latest")  # the last good ones are kept
    assert not [p for p in (run / "checkpoints").rglob("*temp*")]  # the failed save's leftovers are not
