"""Shared fixtures: the real MNIST (fetched once into the user's cache) and tiny configs."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


@pytest.fixture(autouse=True)
def signal_handlers_kept():
    """Each test leaves Ctrl-C and SIGTERM as it found them. A command run in-process may ignore
    Ctrl-C on its way out (a stopping sweep does); left so, every process a later test starts
    would inherit SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""
    import signal

    kept = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in kept.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def mnist_cache() -> Path:
    """The verified MNIST cache, fetched through the normal sources if it is not there yet."""
    from mnistctl.data import DataError, ensure_dataset

    try:
        return ensure_dataset("mnist")
    except DataError as err:  # only where neither the cache nor any source is reachable
        pytest.skip(f"real MNIST unavailable here: {err}")


@pytest.fixture(scope="session")
def fashion_cache() -> Path:
    """Fashion-MNIST, from Debian's dataset-fashion-mnist (make check installs it) or a mirror."""
    from mnistctl.data import DataError, ensure_dataset

    try:
        return ensure_dataset("fashion")
    except DataError as err:
        pytest.skip(f"Fashion-MNIST unavailable here: {err}")


@pytest.fixture
def write_config(tmp_path: Path):
    """Write YAML text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "exp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def trained_run(mnist_cache, tmp_path_factory) -> Path:
    """One tiny run trained through the CLI (60 steps on 1,000 real digits), shared by tests
    that only read it; tests that change a run copy it first."""
    from click.testing import CliRunner

    from mnistctl.cli import main

    runs = tmp_path_factory.mktemp("runs")
    args = ["train", str(CONFIGS / "tiny.yaml"), "--runs-dir", str(runs), "--set", "train.steps=60"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "final test accuracy:" in result.output
    (run,) = runs.iterdir()
    return run


@contextlib.contextmanager
def headless_chromium():
    """Debian's Chromium driven by Playwright (skips the test where either is missing)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (make check installs Debian's chromium where it can)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
        )  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def live_page(spawn, path: Path, width: int = 1280, height: int = 720):
    """The live page of ``path`` (`mnistctl watch`, started with ``spawn``) in headless
    Chromium, once it has drawn its first answer."""
    import sys

    port = free_port()
    process = spawn([sys.executable, "-m", "mnistctl", "watch", str(path), "--port", str(port)])
    wait_for(f"http://127.0.0.1:{port}/api/runs", process)
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function("Number(document.body.dataset.drawn || 0) >= 1", timeout=30000)
        yield page


@contextlib.contextmanager
def serving_in_thread(app, **config):
    """``app`` served by uvicorn on loopback in a thread of this process (``config``: more of
    ``uvicorn_config``'s options): its URL; stopped at the end, whatever happened."""
    import threading

    import uvicorn

    from mnistctl.serving.listen import uvicorn_config

    port = free_port()
    instance = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=port, **config))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    """A port nothing listens on now, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    """Until ``url`` answers, failing with the process's errors if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else "exited"
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


# Modules whose tests build graphs or train without the data fixtures.
TENSORFLOW_MODULES = {"test_model", "test_loop", "test_experiment", "test_resume", "test_stopping"}
# Modules whose tests train only to have a run to serve, watch or sweep: what they check is the
# plumbing around a run (HTTP, the live page, Ray), not its numbers, so one pass is enough (a
# test elsewhere says the same with @pytest.mark.plumbing).
PLUMBING_MODULES = {
    "test_serve",
    "test_live",
    "test_sweep",
    "test_sweep_life",
    "test_install",
    "test_safe_reading",
    "test_jobs",
    "test_manage",
    "test_queue",
    "test_provenance",
    "test_lesson",
    "test_inside",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests whose assertions rest on what TensorFlow computes: `make test-onednn-off`
    runs them a second time with oneDNN off (other kernels, other rounding: the nearest
    stand-in for another CPU on one machine), so none can depend on one CPU's last digits."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        uses_data = {"mnist_cache", "fashion_cache"} & set(item.fixturenames)
        plumbing = module in PLUMBING_MODULES or item.get_closest_marker("plumbing")
        if (uses_data or module in TENSORFLOW_MODULES) and not plumbing:
            item.add_marker(pytest.mark.tensorflow)


def rewrite_config(run: Path, edit) -> None:
    """Change a run's config.yaml as if it had been trained with the new one (run.json's digest
    of it too): how a test gets a checkpoint that another model's graph must refuse."""
    import json

    from mnistctl.run.directory import config_digest

    config = run / "config.yaml"
    config.write_text(text := edit(config.read_text()))
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**record, "config_sha256": config_digest(text)}))


@pytest.fixture
def spawn():
    """``subprocess.Popen`` for a test, in a process group of its own that is killed at the end
    of the test, passed or failed: a training, a page or a sweep driver never outlives its test."""
    import os
    import signal
    import subprocess

    started: list[subprocess.Popen] = []

    def start(command, **options) -> subprocess.Popen:
        options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **options}
        process = subprocess.Popen(command, start_new_session=True, **options)
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            process.communicate(timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk("700k")``: a tmpfs of that size, to fill up (needs root and mount; the test
    is skipped otherwise), unmounted at the end of the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk-{len(mounted)}"
        disk.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it (remove it to make room)."""
    import errno

    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC, err
    return filler
