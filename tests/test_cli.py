"""The CLI end to end on the real MNIST (a subset, a tiny config), and its error handling."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mnistctl.cli import main

from .conftest import CONFIGS


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_writes_a_self_describing_run(trained_run):
    assert trained_run.name.endswith("-tiny")
    meta = json.loads((trained_run / "run.json").read_text())
    assert meta["status"] == "completed"
    assert meta["steps_done"] == 60 and meta["seed"] == 0 and meta["parameters"] == 12770
    assert meta["versions"]["tensorflow"] and meta["versions"]["numpy"] and meta["host"]
    assert meta["dataset_sha256"]["t10k-labels-idx1-ubyte"].startswith("ff7bcfd4")
    assert meta["dataset"] == {"name": "mnist", "train_images": 1000, "test_images": 500}
    rows = list(csv.DictReader((trained_run / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [20, 40, 60]
    for column in (
        "epoch",
        "learning_rate",
        "train_loss",
        "train_accuracy",
        "test_loss",
        "test_accuracy",
        "elapsed_s",
    ):
        assert column in rows[0]
    assert float(rows[-1]["test_accuracy"]) > 0.5  # 60 steps on 1,000 digits already learn something
    assert "steps: 60" in (trained_run / "config.yaml").read_text()  # the resolved config
    assert list((trained_run / "checkpoints" / "best").glob("*.index"))
    assert list((trained_run / "checkpoints" / "latest").glob("model-60.index"))
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))


def strict_json(text: str):
    """json.loads as strict parsers read it: bare NaN or Infinity is an error."""

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_everything_written_or_printed_as_json_is_strict_json(trained_run):
    """The run has no validation images, so its validation metrics are NaN: JSON says null."""
    meta = strict_json((trained_run / "run.json").read_text())
    assert meta["final"]["validation_accuracy"] is None and meta["final"]["test_accuracy"] > 0.5
    for line in (trained_run / "evaluations.jsonl").read_text().splitlines():
        strict_json(line)
    for args in (("eval", trained_run, "--json"), ("compare", trained_run, "--format", "json")):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        strict_json(result.output)


def test_a_run_json_with_bare_nan_from_an_older_version_still_loads(trained_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    meta = json.loads((old / "run.json").read_text())
    (old / "run.json").write_text(json.dumps({**meta, "best_validation_accuracy": float("nan")}))
    assert "NaN" in (old / "run.json").read_text()
    result = invoke("compare", old, "--format", "json")
    assert result.exit_code == 0, result.output
    assert strict_json(result.output)[0]["status"] == "completed"


def test_eval_reports_accuracy_per_class_and_confusion(trained_run):
    result = invoke("eval", trained_run, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    meta = json.loads((trained_run / "run.json").read_text())
    assert report["test_accuracy"] == pytest.approx(meta["best_test_accuracy"])
    assert report["step"] == meta["best_step"]
    confusion = report["confusion"]
    assert len(confusion) == 10 and sum(map(sum, confusion)) == 500
    assert sum(confusion[i][i] for i in range(10)) / 500 == pytest.approx(report["test_accuracy"])
    assert len(report["per_class_accuracy"]) == 10


def test_eval_a_named_checkpoint(trained_run):
    (prefix,) = (trained_run / "checkpoints" / "latest").glob("model-40.index")
    result = invoke("eval", str(prefix).removesuffix(".index"))
    assert result.exit_code == 0, result.output
    assert "(step 40)" in result.output and "confusion matrix" in result.output


def test_compare_shows_results_and_only_differing_keys(trained_run, tmp_path):
    other = tmp_path / "runs"
    result = invoke("train", CONFIGS / "tiny.yaml", "--runs-dir", other, "--name", "wide", "--quiet",
                    "--set", "train.steps=20", "--set", "model.layers[1].units=32")  # fmt: skip
    assert result.exit_code == 0, result.output
    (second,) = other.iterdir()
    result = invoke("compare", trained_run, second, "--format", "json", "--sort", "parameters")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["parameters"] for r in rows] == [12770, 12770 + (784 * 16 + 16 + 16 * 10)]
    assert rows[0]["model.layers[1].units"] == 16 and rows[1]["model.layers[1].units"] == 32
    assert rows[0]["train.steps"] == 60 and rows[1]["train.steps"] == 20
    assert "train.batch_size" not in rows[0]  # equal in both: not shown
    assert rows[0]["status"] == "completed" and rows[0]["steps"] == "60/60"
    for fmt, marker in (
        ("markdown", "| run | status |"),
        ("csv", "run,status,steps"),
        ("table", "best"),
    ):
        result = invoke("compare", trained_run, second, "--format", fmt)
        assert result.exit_code == 0 and marker in result.output, result.output


def nine_runs(trained_run: Path, tmp_path: Path) -> Path:
    """Nine copies of a run, differing in a layer's units, the learning rate and status."""
    runs = tmp_path / "nine"
    for i in range(9):
        copy = runs / f"run-{i}"
        shutil.copytree(trained_run, copy)
        config = copy / "config.yaml"
        text = (
            config.read_text()
            .replace("units: 16", f"units: {16 + i}")
            .replace("lr0: 0.003", f"lr0: 0.00{i + 1}")
        )
        config.write_text(text)
        if i % 3 == 0:
            record = json.loads((copy / "run.json").read_text())
            (copy / "run.json").write_text(json.dumps({**record, "status": "interrupted"}))
    return runs


def test_compare_prints_one_row_per_run_and_fits_the_terminal(trained_run, tmp_path, monkeypatch):
    from mnistctl.cli import app

    runs = nine_runs(trained_run, tmp_path)
    monkeypatch.setattr(app.out, "width", 200)
    wide = invoke("compare", runs)
    assert wide.exit_code == 0, wide.output
    lines = wide.output.strip().splitlines()
    header, body = lines[0].split(), lines[1:10]
    assert header[:3] == ["run", "status", "steps"] and "layers[1]" in header and "lr0" in header
    assert [line.split()[0] for line in body] == [f"run-{i}" for i in range(9)]
    assert "dense 24" in body[8]  # a layer summarised by what differs: dense, 16 + 8 units
    monkeypatch.setattr(app.out, "width", 70)
    narrow = invoke("compare", runs)
    assert all(len(line) <= 70 for line in narrow.output.splitlines() if line.startswith(("run", "run-")))
    assert "columns left out to fit the terminal:" in narrow.output and "--columns chooses" in narrow.output
    chosen = invoke("compare", runs, "--columns", "lr0,schedule.lr0", "--filter", "status=interrupted")
    assert chosen.exit_code == 2 and "--columns: unknown column 'lr0'" in chosen.output
    chosen = invoke("compare", runs, "--columns", "schedule.lr0", "--filter", "status=interrupted")
    assert chosen.exit_code == 0, chosen.output
    rows = [line.split() for line in chosen.output.strip().splitlines()]
    assert rows == [["run", "lr0"], ["run-0", "0.001"], ["run-3", "0.004"], ["run-6", "0.007"]]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["run=run-[12]"], ["run-1", "run-2"]),
        (["schedule.lr0=0.005"], ["run-4"]),
        (["status=completed", "model.layers[1].units=2*"], ["run-4", "run-5", "run-7", "run-8"]),
    ],
)
def test_compare_filters_by_column_or_config_key(trained_run, tmp_path, filters, expected):
    runs = nine_runs(trained_run, tmp_path)
    args = [arg for f in filters for arg in ("--filter", f)]
    result = invoke("compare", runs, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    assert [row["run"] for row in json.loads(result.output)] == expected


def test_compare_filter_mistakes_are_one_line(trained_run, tmp_path):
    runs = nine_runs(trained_run, tmp_path)
    for flag, message in (
        ("status", "--filter status: expected KEY=PATTERN, e.g. status=completed"),
        ("colour=red", "--filter colour=red: no run has a column or config key 'colour'"),
        ("status=diverged", "no runs match --filter status=diverged"),
    ):
        result = invoke("compare", runs, "--filter", flag)
        assert result.exit_code == 2 and result.output.strip() == f"error: {message}", result.output


def test_bad_config_exits_2_with_one_line_and_no_run(tmp_path):
    runs = tmp_path / "runs"
    result = invoke("train", CONFIGS / "tiny.yaml", "--runs-dir", runs, "--set", "model.layers[0].stride=0")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --set model.layers[0].stride=0: model.layers[0].stride: expected an integer >= 1, got 0"
    )
    assert not runs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("eval", "{tmp}"), "neither a run directory nor a checkpoint"),
        (("eval", "{tmp}/missing"), "no such run directory or checkpoint"),
        (("compare", "{tmp}"), "no runs found"),
        (("compare", "{tmp}/missing"), "no such run or runs directory"),
        (("train", "{tmp}/missing.yaml"), "no such config file"),
        (("train", "configs/tiny.yaml", "--name", "a/b"), "--name: expected 1-64 letters"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = invoke(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_unknown_sort_key_lists_columns(trained_run):
    result = invoke("compare", trained_run, "--sort", "acc")
    assert result.exit_code == 2 and "unknown column 'acc'; expected one of: run, status" in result.output


def test_crashed_run_is_not_shown_as_running(trained_run, tmp_path):
    import shutil

    crashed = tmp_path / "crashed"
    shutil.copytree(trained_run, crashed)
    meta = json.loads((crashed / "run.json").read_text())
    meta.update(status="running", pid=2**22 + 12345, heartbeat=0)  # a pid that does not exist
    (crashed / "run.json").write_text(json.dumps(meta))
    rows = json.loads(invoke("compare", crashed, "--format", "json").output)
    assert rows[0]["status"] == "crashed"


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate", "configs/conv_dropout.yaml"],
        ["compare", "{runs}"],
        ["data", "info"],
        ["plot", "{runs}", "--out", "{runs}/../p.png"],
    ],
)
def test_fast_commands_do_not_import_tensorflow(args, trained_run):
    args = [a.format(runs=trained_run.parent) for a in args]
    code = (
        "import sys\nfrom mnistctl.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CONFIGS.parent)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--resume", "{run}"], "{run}: already trained 60 of 60 steps; extend it with"),
        (
            ["train", "--resume", "{run}", "--set", "model.layers[1].units=8"],
            "the config differs from the run's",
        ),
        (["train", "--resume", "{run}", "--force", "--set", "optimizer.beta1=0.5"], "cannot resume with a"),
        (["train", "--resume", "{locked}", "--set", "train.steps=100"], "{locked}: in use by pid"),
        (["train", "--resume", "{tmp}"], "{tmp}: not a run directory"),
        (["export", "{run}", "--out", "{tmp}/taken"], "{tmp}/taken/1: already exists (use --force"),
        (["export", "{run}", "--out", "{run}/checkpoints/best"], "inside the checkpoints of the run"),
        (["eval", "{tmp}/nothing"], "{tmp}/nothing: no such run directory or checkpoint"),
        (["serve", "{run}", "--port", "{port}"], "cannot listen there"),
        (["train", "tiny", "--live", "--port", "{port}"], "cannot listen there"),
    ],
)
def test_refusals_that_need_only_files_come_before_tensorflow_loads(args, says, trained_run, tmp_path):
    import socket

    from mnistctl.run.directory import RunLock

    run, locked = tmp_path / "run", tmp_path / "locked"
    shutil.copytree(trained_run, run)
    shutil.copytree(trained_run, locked)
    (tmp_path / "taken" / "1").mkdir(parents=True)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    names = dict(run=run, locked=locked, tmp=tmp_path, port=taken.getsockname()[1])
    code = (
        "import sys\nfrom mnistctl.cli import main\n"
        f"try:\n    main({[a.format(**names) for a in args]!r})\nexcept SystemExit as e:\n"
        "    assert e.code == 2, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    with taken, RunLock(locked):  # this process trains "locked", as far as the child can tell
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=CONFIGS.parent
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and says.format(**names) in result.stderr, result.stderr


def run_in_a_terminal(args: list[str], timeout: float = 120) -> bytes:
    """Run ``python -m mnistctl ARGS`` with stdout and stderr on a pseudo-terminal; all it wrote."""
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistctl", *args], stdout=follower, stderr=follower, cwd=CONFIGS.parent
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        output += chunk
    process.wait(timeout=timeout)
    os.close(leader)
    return output


@pytest.mark.plumbing
def test_commands_that_load_tensorflow_say_so_on_a_terminal_only(trained_run):
    shown = run_in_a_terminal(["eval", str(trained_run)])
    assert shown.startswith("loading TensorFlow…\r\x1b[K".encode()), shown[:200]
    assert b"test accuracy:" in shown
    piped = subprocess.run(
        [sys.executable, "-m", "mnistctl", "eval", str(trained_run)], capture_output=True, cwd=CONFIGS.parent
    )
    assert piped.returncode == 0 and b"loading" not in piped.stdout + piped.stderr


def test_the_progress_line_names_the_run_as_the_user_named_it():
    from mnistctl.cli.views import run_label

    assert run_label("20261129T150746Z-my-run") == "my-run"  # train --name my-run
    assert run_label("20261129T150746Z-conv_dropout") == "conv_dropout"
    assert run_label("trial-00001") == "trial-00001"  # a sweep's trial keeps its whole name
    assert run_label("plain") == "plain"
