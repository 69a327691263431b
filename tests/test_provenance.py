"""Where a run's code came from: the commit, a dirty flag and the uncommitted change itself, the
command as it can be run again, and the run a rerun was taken from."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

from click.testing import CliRunner

from mnistctl import provenance
from mnistctl.cli import main
from mnistctl.config import load_config
from mnistctl.provenance import code_state, command_line
from mnistctl.run.directory import create_run, load_run

from .conftest import CONFIGS


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_a_dirty_working_tree_is_recorded_with_its_patch(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    git(checkout, "init", "-q")
    (checkout / "model.py").write_text("ACTIVATION = 'relu'\n")
    git(checkout, "add", "model.py")
    git(checkout, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "first")
    clean = code_state(checkout)
    assert (
        clean.commit
        and re.fullmatch(r"[0-9a-f]{40}", clean.commit)
        and clean.dirty is False
        and not clean.patch
    )

    (checkout / "model.py").write_text("ACTIVATION = 'sigmoid'\n")
    monkeypatch.setattr(provenance, "CHECKOUT", checkout)
    run = create_run(tmp_path / "runs", load_config(CONFIGS / "tiny.yaml"), "dirty")
    record = load_run(run.path).record
    assert record.git_commit == clean.commit and record.git_dirty is True
    patch = (run.path / "code.patch").read_text()
    assert "-ACTIVATION = 'relu'" in patch and "+ACTIVATION = 'sigmoid'" in patch
    assert (
        subprocess.run(
            ["git", "-C", str(checkout), "apply", "--check", "-R", str(run.path / "code.patch")]
        ).returncode
        == 0
    )

    monkeypatch.setattr(provenance, "CHECKOUT", tmp_path / "not-a-checkout")
    outside = create_run(tmp_path / "runs", load_config(CONFIGS / "tiny.yaml"), "outside")
    assert load_run(outside.path).record.git_commit is None and not (outside.path / "code.patch").exists()


def test_the_recorded_command_runs_as_written():
    module = command_line(["/x/mnistctl/__main__.py", "train", "my config.yaml", "--set", "a=1"])
    assert shlex.split(module)[1:] == ["-m", "mnistctl", "train", "my config.yaml", "--set", "a=1"]
    assert command_line(["/venv/bin/mnistctl", "compare", "runs/"]) == "mnistctl compare runs/"


def test_version_shows_the_commit_of_the_checkout():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    commit = code_state(with_patch=False).commit
    if commit:  # a checkout (CI's fresh clone is one)
        assert re.fullmatch(
            rf"mnistctl, version \S+ \(commit {commit[:12]}(, with uncommitted changes)?\)\n", result.output
        )


def test_a_rerun_from_a_runs_config_records_what_it_reran(trained_run, tmp_path):
    result = CliRunner().invoke(main, ["train", str(trained_run / "config.yaml"), "--runs-dir", str(tmp_path),
                                       "--set", "train.steps=20", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (rerun,) = tmp_path.iterdir()
    record = json.loads((rerun / "run.json").read_text())
    assert record["rerun_of"] == str(trained_run.resolve())
    listed = CliRunner().invoke(
        main, ["compare", str(tmp_path), "--format", "csv", "--columns", "run,commit"]
    )
    commit = code_state(with_patch=False)
    if commit.commit:
        assert listed.output.splitlines()[1] == f"{rerun.name},{commit.short}"
