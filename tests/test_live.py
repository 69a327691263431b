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

from .conftest import CONFIGS, free_port, headless_chromium, live_page, wait_for
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
    record = load_run(trained_run).record
    assert summary["best"] == {"step": best[0], "value": best[1], "test": best[1], "by": "test"}
    assert summary["best"]["step"] == record.best_step and best[1] == record.best_test_accuracy  # as compare


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
    with headless_chromium() as browser:  # and the page itself shows the end
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(url + "/")
        page.wait_for_function("Number(document.body.dataset.drawn || 0) >= 1", timeout=20000)
        status, figures = page.locator("#status").text_content(), page.locator("#figures").text_content()
    assert status.startswith("completed, test accuracy ") and figures.startswith("step 400 of 400 · ")
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
        page.wait_for_function("document.querySelectorAll('section:not([hidden]) canvas').length === 6")
        titles = page.evaluate(
            "[...document.querySelectorAll('section:not([hidden]) h2')].map(h => h.firstChild.textContent)"
        )
        test_title = page.locator("section[data-key='4'] h2").text_content()
        inked = page.evaluate(
            "[...document.querySelectorAll('section:not([hidden]) canvas')].map(c => c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 === 3 && v > 0))"
        )
        figures = page.locator("#figures").text_content()
        page.goto(f"{url}/")
        page.wait_for_selector("tr.run")
        rows = page.locator("tr.run").count()
    # The talk's visualiser's order: digits on the left, curves in the middle, weights on the right.
    assert titles == [
        "training digits",
        "accuracy",
        "weights",
        "test digits",
        "cross-entropy loss",
        "biases",
    ]
    assert test_title.startswith("test digits: ") and "of 500 wrong at step 60, shown first" in test_title
    assert inked == [True] * 6  # every panel drew something
    assert figures.startswith("step 60 of 60 · learning rate ") and "images/s" in figures
    assert rows == 2


VISIBLE = "[...document.querySelectorAll('section')].filter(s => !s.hidden).map(s => s.dataset.key).join('')"


@pytest.mark.parametrize("width,height", [(1920, 1080), (1366, 768), (1280, 720)])
def test_the_run_fills_a_classroom_screen_without_scrolling(watching, trained_run, width, height):
    url, _ = watching
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(f"{url}/#run={trained_run.name}")
        page.wait_for_function("Number(document.body.dataset.drawn || 0) >= 1", timeout=20000)
        size = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        boxes = [page.locator(f"section[data-key='{k}']").bounding_box() for k in "123456"]
        cell = int(page.locator("section[data-key='4'] canvas").get_attribute("data-cell"))
        font = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    assert size[0] <= width and size[1] <= height  # nothing to scroll
    assert all(b["x"] + b["width"] <= width and b["y"] + b["height"] <= height for b in boxes)
    assert len({round(b["y"]) for b in boxes}) == 2 and len({round(b["x"]) for b in boxes}) == 3  # 2 x 3
    assert all(b["height"] > height / 3 for b in boxes)  # the panels share the window's height
    assert cell >= (24 if width == 1920 else 18)  # each test digit's size in pixels
    assert font >= (19 if width == 1920 else 14)  # text grows with the window


def test_the_talks_keys_and_a_click_on_a_title_change_the_layout(watching, trained_run):
    url, _ = watching
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url) if "/api/" in r.url else None)
        page.goto(f"{url}/#run={trained_run.name}")
        page.wait_for_function("Number(document.body.dataset.drawn || 0) >= 1", timeout=20000)
        seen = {}
        for key in ["2", "5", "7", "8", "9", "0", "1", "Escape"]:
            page.keyboard.press(key)
            seen[key] = page.evaluate(VISIBLE)
        alone = page.locator("section[data-key='2']").bounding_box()
        page.locator("section[data-key='5'] h2").click()
        seen["click"] = page.evaluate(VISIBLE)
        page.locator("section[data-key='5'] h2").click()
        seen["click again"] = page.evaluate(VISIBLE)
        page.keyboard.press("Space")
        paused = page.locator("#paused").is_visible()
        asked = len(requests)
        page.wait_for_timeout(5600)  # a finished run is asked about every 5 s
        asked_while_paused = len(requests) - asked
        page.keyboard.press("Space")
        page.wait_for_timeout(500)
        resumed = not page.locator("#paused").is_visible() and len(requests) > asked
    assert seen == {"2": "2", "5": "5", "7": "25", "8": "36", "9": "14", "0": "123456", "1": "1",
                    "Escape": "123456", "click": "5", "click again": "123456"}  # fmt: skip
    assert alone is not None
    assert paused and asked_while_paused == 0 and resumed


def test_a_single_evaluation_is_drawn_as_a_point(trained_run, tmp_path, spawn):
    run = tmp_path / "runs" / trained_run.name
    shutil.copytree(trained_run, run)
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(lines[:2]) + "\n")  # the first evaluation only
    with live_page(spawn, run) as page:
        # Pixels of the test curve's red (#d62728) in the accuracy panel: the one point's dot.
        red = page.evaluate(
            "(() => { const c = document.querySelector(\"section[data-key='2'] canvas\");"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4) if (d[i] > 190 && d[i + 1] < 70 && d[i + 2] < 70) n++;"
            "return n; })()"
        )
        ticks = page.evaluate("document.body.innerText")
    assert red > 10, red
    assert "step 20 of 60" in ticks


def test_a_folder_names_a_line_on_hover_and_groups_a_sweeps_trials(trained_run, tmp_path, spawn):
    folder = tmp_path / "runs"
    shutil.copytree(OLD_RUN, folder / "old")
    for trial in ("trial-00000", "trial-00001"):
        shutil.copytree(trained_run, folder / "sweep-x" / trial)
    noted = CliRunner().invoke(main, ["note", str(folder / "old"), "the baseline from last week"])
    assert noted.exit_code == 0, noted.output
    with live_page(spawn, folder) as page:
        group = page.locator("tr.group").all_text_contents()
        names = page.locator("tr.run").evaluate_all("rows => rows.map(r => r.dataset.name)")
        legend = page.locator(".runs-legend span[data-name]").all_text_contents()
        x, y = page.evaluate("window.pointOf('old')")
        page.mouse.move(x, y)
        page.wait_for_selector("#tip:not([hidden])")
        tip = page.locator("#tip").text_content()
        hot = page.locator("tr.run.hot").evaluate_all("rows => rows.map(r => r.dataset.name)")
        page.mouse.move(2, 2)
        page.locator("tr.run[data-name='sweep-x/trial-00001']").hover()
        legend_hot = page.locator(".runs-legend span.hot").all_text_contents()
        headers = page.locator("tr:first-child th").all_text_contents()
        note = page.locator("tr.run[data-name='old'] td").nth(headers.index("notes")).text_content()
        chosen = page.locator("tr.run[data-name='old'] td").nth(headers.index("chosen by")).text_content()
    assert group == ["sweep-x/ — 2 runs, best " + group[0].split("best ")[1]] and "(trial-0000" in group[0]
    assert names == ["old", "sweep-x/trial-00000", "sweep-x/trial-00001"] or names[0] == "old"
    assert sorted(names) == ["old", "sweep-x/trial-00000", "sweep-x/trial-00001"]
    assert sorted(legend) == sorted(names)  # a colour for every run
    assert tip.startswith("old: ") and " at step " in tip and hot == ["old"]
    assert legend_hot == ["sweep-x/trial-00001"]  # a row lights its line's key (and the line)
    assert headers[4:7] == ["best test", "at step", "chosen by"]  # best as compare has it
    # The old run's best was chosen by validation: the cell says by what value (why the row is where it is).
    assert chosen.startswith("validation 0.") and len(chosen) == len("validation 0.1234")
    assert note == "the baseline from last week"


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


def test_the_kernels_view_gets_the_first_layers_weights_and_feature_maps_as_trained(trained_run):
    """What the page receives for its kernels view equals the graph's: the first layer's
    kernels in the last checkpoint, and that layer's output for the first test image."""
    import tensorflow as tf

    from mnistctl.run.writers import unpack
    from mnistctl.serving.live import kernel_state

    run = load_run(trained_run)
    data = load_experiment_data(run.experiment())
    state = kernel_state(run, -1, data)
    assert [e["step"] for e in state["entries"]] == [20, 40, 60] and state["layer"].startswith("conv 3x3x4")
    assert [e["step"] for e in kernel_state(run, 40, data)["entries"]] == [60]  # only what is new
    last = state["entries"][-1]
    checkpoint = tf.train.load_checkpoint(str(trained_run / "checkpoints" / "latest" / "model-60"))
    kernels, biases = (
        checkpoint.get_tensor("layer0_conv/weights"),
        checkpoint.get_tensor("layer0_conv/biases"),
    )
    sent = unpack(last["kernels"])
    spread = (kernels.max(axis=(0, 1, 2)) - kernels.min(axis=(0, 1, 2))) / 255
    assert sent.shape == (3, 3, 1, 4) and (np.abs(sent - kernels) <= spread / 2 + 1e-7).all()
    # The convolution written out: stride 2, "same" padding (28 -> 14: one row and column of
    # zeros after the image, as TensorFlow pads), then the bias and the ReLU.
    image = np.pad(data.test_images[0].astype(np.float64) / 255.0, ((0, 1), (0, 1)))
    patches = np.stack([image[a : a + 28 : 2, b : b + 28 : 2] for a in range(3) for b in range(3)], axis=-1)
    maps = np.maximum(patches @ kernels.reshape(9, 4) + biases, 0.0)
    got = unpack(last["maps"])
    assert got.shape == (14, 14, 4)
    assert np.abs(got - maps).max() <= (maps.max() - maps.min()) / 255 + 1e-4


def test_k_shows_inside_the_network_and_again_the_six_panels(trained_run, tmp_path, spawn):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    with live_page(spawn, run) as page:
        page.keyboard.press("k")
        page.wait_for_function(
            "document.querySelector(\"section[data-key='k'] h2\").textContent.includes('evaluation 3 of 3')"
        )
        inside = page.evaluate(VISIBLE)
        title = page.locator("section[data-key='k'] h2").text_content()
        inked = page.evaluate(
            "(() => { const c = document.querySelector(\"section[data-key='k'] canvas\");"
            "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            "return d.some((v, i) => i % 4 === 3 && v > 0); })()"
        )
        page.keyboard.press("k")
        back = page.evaluate(VISIBLE)
    assert inside == "k" and back == "123456" and inked
    assert title == "inside the network: conv 3x3x4 stride 2 same relu, step 60 (evaluation 3 of 3)"


# The live page with one more route that computes for a minute: a stand-in for the listing of a
# folder of thousands of runs, cold, which a signal may find in flight.
_SLOW_PAGE = """
import sys, time
from mnistctl.cli import main
from mnistctl.serving import live

made = live.create_live_app

def with_a_slow_route(*args, **kwargs):
    app = made(*args, **kwargs)
    app.get("/slow")(lambda: time.sleep(60))
    return app

live.create_live_app = with_a_slow_route
main(sys.argv[1:])
"""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_one_signal_stops_the_page_within_seconds_while_a_request_computes(tmp_path, spawn, stop):
    import threading

    shutil.copytree(OLD_RUN, tmp_path / "run")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = spawn([sys.executable, "-c", _SLOW_PAGE, "watch", str(tmp_path / "run"), "--port", str(port)])
    wait_for(url + "/api/runs", process)
    answered: list[int] = []

    def ask() -> None:
        try:
            answered.append(urllib.request.urlopen(url + "/slow", timeout=90).status)
        except urllib.error.HTTPError as error:
            answered.append(error.code)
        except OSError:
            answered.append(0)

    threading.Thread(target=ask, daemon=True).start()
    time.sleep(1)
    started = time.monotonic()
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=30)  # it used to wait for the request: 60 s
    assert time.monotonic() - started < 10, stderr
    assert process.returncode == (130 if stop == signal.SIGINT else -stop), stderr
    assert "Traceback" not in stderr and "ERROR" not in stderr, stderr  # a stop asked for, not an error
    assert answered != [200]  # it was cut short, not answered
