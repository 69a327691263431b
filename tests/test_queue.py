"""A queue of runs: entries added while it runs are picked up, an interrupted queue resumes, and
each entry is an ordinary run trained by the one driver."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.many.queue import entries, pending
from mnistctl.run.directory import load_run
from mnistctl.run.writers import read_metrics
from mnistctl.status import Status

from .conftest import CONFIGS, ROOT

TINY = str(CONFIGS / "tiny.yaml")
SLOW = ["--set", "train.steps=400", "--set", "train.eval_every=50", "--set", "train.checkpoint_every=50"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def wait_for_rows(run_dir, rows, process, timeout=120):
    deadline = time.monotonic() + timeout
    while not (run_dir / "metrics.csv").exists() or len(read_metrics(run_dir / "metrics.csv")) < rows:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def test_a_queue_picks_up_what_is_added_while_it_runs_and_resumes_after_an_interruption(
    mnist_cache, tmp_path, spawn
):
    runs = tmp_path / "runs"
    assert invoke("queue", "add", TINY, *SLOW, "--name", "first", "--runs-dir", runs).exit_code == 0
    bad = invoke("queue", "add", TINY, "--set", "train.steps=-1", "--runs-dir", runs)
    assert (
        bad.exit_code == 2 and "train.steps" in bad.output and len(entries(runs)) == 1
    )  # checked when added
    command = [sys.executable, "-m", "mnistctl", "queue", "run", "--runs-dir", str(runs), "-q"]
    process = spawn(command, cwd=ROOT)
    wait_for_rows(runs / "first", 2, process)
    for name, settings in (("second", ["--set", "train.steps=40"]), ("third", SLOW)):  # added while it runs
        assert invoke("queue", "add", TINY, *settings, "--name", name, "--runs-dir", runs).exit_code == 0
    wait_for_rows(runs / "third", 2, process)  # the same runner went on to them
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "continue with: mnistctl queue run" in stderr.replace("\n", "")
    assert [load_run(runs / n).record.status for n in ("first", "second")] == [Status.COMPLETED] * 2
    assert load_run(runs / "third").record.status is Status.INTERRUPTED and [
        e.name for e in pending(runs)
    ] == ["third"]

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    third = load_run(runs / "third")
    assert (
        third.record.status is Status.COMPLETED and len(third.record.resumes) == 1
    )  # continued, not restarted
    assert "1 run(s) finished: third" in again.stdout
    listed = invoke("queue", "ls", "--runs-dir", runs)
    assert listed.exit_code == 0 and listed.output.count("completed") == 3 and not pending(runs)
