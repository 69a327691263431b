"""The live page: what its API gives for a run and a folder of runs, `watch` as a real server,
`train --live`, and the page itself in a real browser."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.dataset import load_experiment_data
from mnistctl.run.directory import load_run
from mnistctl.serving.live import create_live_app, run_state, run_summary

from .conftest import CONFIGS, free_port, headless_chromium, wait_for
from .test_runs import OLD_RUN


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        body, status = err.read().decode(), err.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_the_state_of_a_run_holds_its_rows_bands_and_latest_digits(trained_run):
    run = load_run(trained_run)
    data = load_experiment_data(run.experiment())
    state = run_state(run, 0, -1, data)
    assert [r["step"] for r in state["rows"]] == [20, 40, 60] and state["status"] == "completed"
    assert set(state["bands"]) == {"weights", "biases"} and len(state["bands"]["weights"]) == 3
    digits = state["digits"]
    assert digits["step"] == 60 and digits["test_count"] == 500
    test = digits["test"]
    labels, predicted = np.array(test["labels"]), np.array(test["predicted"])
    wrong = min(digits["test_wrong"], 100)
    assert (labels[:wrong] != predicted[:wrong]).all() and (labels[wrong:] == predicted[wrong:]).all()
    pixels = np.frombuffer(base64.b64decode(test["pixels"]), np.uint8).reshape(-1, 28, 28)
    assert len(pixels) == len(labels) == 100 and pixels.max() > 0
    assert len(digits["batch"]["labels"]) == 50  # the tiny config's batch
    # What the page already has is not sent again.
    later = run_state(run, 2, 60, data)
    assert [r["step"] for r in later["rows"]] == [60] and later["digits"] is None


def test_a_run_from_before_the_evaluation_log_still_shows_its_end(tmp_path):
    run = load_run(OLD_RUN)
    state = run_state(run, 0, -1, load_experiment_data(run.experiment()))
    assert state["rows"] and state["digits"] is not None
    assert state["digits"]["step"] == state["rows"][-1]["step"]  # from predictions.npz


def test_a_folder_lists_every_runs_curve_and_its_best(trained_run):
    summary = run_summary(load_run(trained_run))
    assert summary["metric"] == "test_accuracy" and [p[0] for p in summary["curve"]] == [20, 40, 60]
    best = max(summary["curve"], key=lambda p: p[1])
    assert summary["best"] == {"step": best[0], "value": best[1]}


def test_a_folder_shows_what_sets_its_runs_apart(trained_run, tmp_path):
    folder = tmp_path / "sweep"
    for name, lr0, filters in (("trial-a", 0.003, 4), ("trial-b", 0.01, 8)):
        shutil.copytree(trained_run, folder / name)
        config = folder / name / "config.yaml"
        raw = yaml.safe_load(config.read_text())
        raw["name"], raw["schedule"]["lr0"], raw["model"]["layers"][0]["filters"] = name, lr0, filters
        config.write_text(yaml.safe_dump(raw))
    app = create_live_app(folder)
    index = next(route for route in app.routes if route.path == "/api/runs").endpoint()
    assert index["settings"] == ["layers[0]", "schedule.lr0"]  # not the names: the settings
    by_name = {r["name"]: r["settings"] for r in index["runs"]}
    assert by_name == {
        "trial-a": {"layers[0]": "conv 3x3x4", "schedule.lr0": 0.003},
        "trial-b": {"layers[0]": "conv 3x3x8", "schedule.lr0": 0.01},
    }


@pytest.fixture
def watching(trained_run, tmp_path):
    """`mnistctl watch` on a folder holding the trained run and a copy of an old one."""
    folder = tmp_path / "runs"
    shutil.copytree(trained_run, folder / trained_run.name)
    shutil.copytree(OLD_RUN, folder / "old")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistctl", "watch", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/api/runs", process)
    yield url, folder
    process.terminate()
    process.wait(timeout=10)


def test_watch_serves_the_page_and_its_api_from_the_files(watching, trained_run):
    url, _ = watching
    status, page = get(url + "/")
    assert status == 200 and "<canvas" not in page and "showRun" in page  # canvases are made by the script
    status, index = get(url + "/api/runs")
    assert status == 200 and not index["single"]
    assert sorted(r["name"] for r in index["runs"]) == sorted(["old", trained_run.name])
    status, state = get(f"{url}/api/runs/{trained_run.name}?rows=1&step=-1")
    assert status == 200 and [r["step"] for r in state["rows"]] == [40, 60] and state["digits"]["step"] == 60
    assert get(url + "/api/runs/nope") == (404, {"error": "no run 'nope' here"})
    assert get(url + "/api/runs/..%2F..%2Fetc")[0] == 404


def test_watch_of_a_path_that_is_not_there_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["watch", str(tmp_path / "missing")])
    assert (
        result.exit_code == 2
        and result.output.strip() == f"error: {tmp_path / 'missing'}: no such run or runs directory"
    )


def test_train_live_serves_the_run_while_it_trains_and_after_until_ctrl_c(mnist_cache, tmp_path, spawn):
    port = free_port()
    command = [sys.executable, "-m", "mnistctl", "train", str(CONFIGS / "tiny.yaml"), "--live", "--port",
               str(port), "--runs-dir", str(tmp_path), "--quiet", "--set", "train.steps=400"]  # fmt: skip
    process = spawn(command)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/api/runs", process)
    seen = []
    deadline = time.monotonic() + 180
    while not seen or seen[-1][0] != "completed":  # the page goes on after the training ends
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        status, index = get(url + "/api/runs")
        if status == 200:
            (run,) = index["runs"]
            seen.append((run["status"], run["steps"]))
        time.sleep(0.3)
    assert any(status == "running" and 0 < steps < 400 for status, steps in seen), seen  # live, mid-run
    assert seen[-1] == ("completed", 400)  # the last evaluation and "completed" arrived
    time.sleep(1)
    assert process.poll() is None and get(url + "/api/runs")[0] == 200  # still serving, finished
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"live page: http://127.0.0.1:{port}/" in err and "the live page still shows it" in err
    with pytest.raises(OSError):  # Ctrl-C stopped the page too
        urllib.request.urlopen(url + "/api/runs", timeout=2)


def test_the_page_of_a_killed_training_goes_with_it_and_a_port_held_by_a_page_says_so(
    mnist_cache, tmp_path, spawn
):
    port = free_port()
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "mnistctl", "train", str(CONFIGS / "tiny.yaml"), "--live", "--port",
               str(port), "--runs-dir", str(runs), "--quiet", "--set", "train.steps=100000"]  # fmt: skip
    process = spawn(command)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/api/runs", process)
    second = subprocess.run(
        [*command[:-2], "--set", "train.steps=10"], capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 2, second.stderr
    assert "mnistctl's live page of " + str(runs) in second.stderr  # whose page holds the port
    process.kill()  # SIGKILL: nothing of the training runs again, the page must notice alone
    process.communicate(timeout=30)
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=1)
        except OSError:
            break  # gone: the port is free for the next train --live
        assert time.monotonic() < deadline, "the page outlived its training"
        time.sleep(0.2)


def test_the_page_draws_the_six_panels_in_a_real_browser(watching, trained_run):
    url, _ = watching
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"{url}/#run={trained_run.name}")
        page.wait_for_function(
            "document.querySelector('#status').textContent.startsWith('completed')", timeout=20000
        )
        page.wait_for_function("document.querySelectorAll('canvas').length === 6")
        titles = page.locator("section h2").all_text_contents()
        inked = page.evaluate(
            "[...document.querySelectorAll('canvas')].map(c => c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0))"
        )
        note = page.locator(".note").text_content()
        page.goto(f"{url}/")
        page.wait_for_selector("tr.run")
        rows = page.locator("tr.run").count()
    assert [t.split(":")[0] for t in titles] == [
        "accuracy",
        "loss",
        "training digits",
        "test digits",
        "weights",
        "biases",
    ]
    assert inked == [True] * 6  # every panel drew something
    assert note.startswith("step 60: ") and "of 500 test digits misrecognised" in note
    assert rows == 2


def test_watch_redraws_off_the_training_thread_and_folds_redraws_together(trained_run, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from mnistctl.cli.views import RedrawView
    from mnistctl.report import plots
    from mnistctl.status import Status
    from mnistctl.train.events import TrainContext

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)

    def slow_dashboard(run):
        time.sleep(0.5)  # as long as a real redraw takes
        return Figure(figsize=(1, 1))

    monkeypatch.setattr(plots, "dashboard", slow_dashboard)
    view = RedrawView(every=1)
    ctx = TrainContext(None, None, None, total_steps=10, run_dir=run_dir)
    view.begin(ctx)
    started = time.perf_counter()
    for _ in range(5):  # five evaluations in quick succession
        view.after_eval(ctx, None)
    assert time.perf_counter() - started < 0.1  # the training did not wait for any drawing
    view.end(ctx, Status.COMPLETED)
    assert 1 <= view.drawn <= 2 and view.error is None  # folded: not one redraw per evaluation
    assert (run_dir / "dashboard.png").is_file()


@pytest.mark.parametrize("flag", ["--redraw", "--watch"])  # --watch: the old name, kept hidden
def test_train_redraw_draws_the_dashboard_with_the_latest_digits(mnist_cache, tmp_path, flag):
    result = CliRunner().invoke(
        main, ["train", str(CONFIGS / "tiny.yaml"), "--runs-dir", str(tmp_path), flag, "1", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.iterdir()
    assert (run / "dashboard.png").stat().st_size > 10_000
