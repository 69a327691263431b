"""mnistctl installed as a user installs it: the built wheel, not the checkout, used from elsewhere.

The wheel goes into a fresh virtual environment that reuses the dependencies already installed
beside the test run (a ``.pth`` line naming their folder, so nothing is downloaded), and every
command runs from a directory outside the checkout: the configs must come from the package.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.install


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory, mnist_cache) -> tuple[Path, dict]:
    """A venv with the wheel installed, and an environment that uses it; (its bin, env)."""
    where = tmp_path_factory.mktemp("install")
    # Built from a clean copy: setuptools builds in the source tree, and a build/ folder left
    # from an earlier build would put modules that are gone into the wheel.
    junk = shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
    )
    source = where / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=junk)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    _run([*build, "-w", str(where / "dist"), str(source)], cwd=where, env=os.environ.copy())
    (wheel,) = (where / "dist").glob("mnistctl-*.whl")
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=where, env=os.environ.copy())
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    # The dependencies, from the test run's own environment; its editable mnistctl is not used,
    # since a plain path in a .pth file does not run that folder's own .pth hooks.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    _run([*pip, "install", "--no-deps", "-q", str(wheel)], cwd=where, env=os.environ.copy())
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": ""}
    return venv / "bin", env


def test_the_wheel_trains_reproduces_and_serves_a_shipped_config_by_name(installed, tmp_path):
    bin_dir, env = installed
    mnistctl = str(bin_dir / "mnistctl")
    located = _run(
        [str(bin_dir / "python"), "-c", "import mnistctl; print(mnistctl.__file__)"], tmp_path, env
    )
    assert Path(located.stdout.strip()).is_relative_to(bin_dir.parent), located.stdout  # not the checkout
    listed = _run([mnistctl, "configs"], tmp_path, env)
    assert "conv_dropout" in listed.stdout and "walkthrough_tuning" in listed.stdout

    budget = ["--set", "train.steps=40", "--set", "train.eval_every=20", "--set", "data.train_size=1000"]
    trained = _run(
        [mnistctl, "train", "conv_dropout", "-q", *budget, "--set", "data.test_size=500"], tmp_path, env
    )
    assert "final test accuracy:" in trained.stdout
    (run,) = (tmp_path / "runs").glob("*-conv_dropout")
    assert json.loads((run / "run.json").read_text())["status"] == "completed"

    reproduced = _run([mnistctl, "reproduce", "tiny", "--seeds", "1", "-q", *budget], tmp_path, env)
    assert (tmp_path / "runs" / "reproduce" / "RESULTS.md").is_file(), reproduced.stdout

    with socket.socket() as probe:  # a free port on loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [mnistctl, "serve", str(run), "--port", str(port), "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models/mnist", timeout=2) as answer:
                    status = json.loads(answer.read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the server did not answer in 120 s"
                time.sleep(0.5)
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        assert "<canvas" in page  # the drawing page ships in the wheel too
    finally:
        server.terminate()
        server.communicate(timeout=30)
