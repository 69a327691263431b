"""``mnistctl data import``: a folder of your own pictures as a dataset that trains, evaluates
and serves like MNIST; bad folders refused in one line."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mnistctl.cli import main

from .conftest import CONFIGS, free_port, wait_for


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def draw(folder: Path, digits: np.ndarray, labels: np.ndarray, classes=(0, 1, 2), each: int = 12) -> Path:
    """Pictures as people make them: MNIST digits three times larger, every other one dark ink
    on white paper, PNG and JPEG, in one subfolder per class."""
    for cls in classes:
        (folder / str(cls)).mkdir(parents=True)
        for k, i in enumerate(np.flatnonzero(labels == cls)[:each]):
            image = Image.fromarray(digits[i]).resize((84, 84))
            if k % 2:
                image = Image.fromarray(255 - np.asarray(image))
            image.save(folder / str(cls) / (f"{k}.jpg" if k % 3 == 0 else f"{k}.png"))
    return folder


@pytest.fixture
def pictures(mnist_cache, tmp_path, monkeypatch):
    """A folder of 36 pictures of 0, 1 and 2 and one broken file; the data directory moved
    to tmp_path (MNIST read before), so nothing is imported into the user's own."""
    from mnistctl.dataset import load_dataset

    mnist = load_dataset("mnist")
    folder = draw(tmp_path / "mine", mnist.test_images, mnist.test_labels)
    (folder / "2" / "broken.png").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("not a class")
    monkeypatch.setenv("MNISTCTL_DATA_DIR", str(tmp_path / "data"))
    return folder


@pytest.mark.plumbing
def test_a_folder_of_pictures_trains_evaluates_and_serves(pictures, tmp_path, spawn):
    made = invoke("data", "import", pictures, "--name", "mine", "--test-fraction", "0.25")
    assert made.exit_code == 0, made.output
    assert f"skipped {pictures / '2' / 'broken.png'}: not an image Pillow can read" in made.output
    assert (
        "mine: 36 pictures, 3 classes (0: 12, 1: 12, 2: 12); 27 to train, 9 to test, 1 skipped" in made.output
    )
    record = json.loads((tmp_path / "data" / "mine" / "dataset.json").read_text())
    assert record["classes"] == ["0", "1", "2"] and record["files"]["test_labels"]["count"] == 9

    (info,) = json.loads(invoke("data", "info", "--dataset", "imported", "--json").output)
    assert info["dataset"] == "mine" and {f["status"] for f in info["files"]} == {"verified"}

    from mnistctl.dataset import load_dataset

    data = load_dataset("mine")  # verified against dataset.json's digests, like MNIST
    assert data.train_images.shape == (27, 28, 28) and sorted(set(data.test_labels.tolist())) == [0, 1, 2]
    assert abs(float(data.train_images.mean()) - 33) < 20  # white ink on black, as MNIST's ~33

    runs = tmp_path / "runs"
    trained = invoke("train", CONFIGS / "tiny.yaml", "--runs-dir", runs, "--set", "data.dataset=mine",
                     "--set", "train.steps=60", "--quiet")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    (run,) = runs.iterdir()
    evaluated = invoke("eval", run, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)
    assert report["dataset"] == "mine" and report["count"] == 9 and report["classes"][:3] == ["0", "1", "2"]
    port = free_port()
    server = spawn([sys.executable, "-m", "mnistctl", "serve", str(run), "--port", str(port), "--quiet"])
    wait_for(f"http://127.0.0.1:{port}/healthz", server)
    picture = (pictures / "1" / "1.png").read_bytes()
    ask = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=picture,
                                 headers={"Content-Type": "image/png"})  # fmt: skip
    with urllib.request.urlopen(ask, timeout=30) as answer:
        body = json.loads(answer.read())
    assert 0 <= body["class"] <= 9 and len(body["probabilities"]) == 10


def test_bad_folders_and_names_are_refused_in_one_line(pictures, tmp_path):
    one = tmp_path / "one"
    (one / "7").mkdir(parents=True)
    empty = tmp_path / "empty"
    for cls in ("a", "b"):
        (empty / cls).mkdir(parents=True)
    (empty / "b" / "bad.png").write_bytes(b"junk")
    many = tmp_path / "many"
    for cls in range(11):
        (many / f"c{cls}").mkdir(parents=True)
    per_class = "one subfolder of pictures per class"
    rule = "--name: expected 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
    cases = [
        (tmp_path / "missing", "x", f"{tmp_path / 'missing'}: not a folder (expected {per_class})"),
        (one, "x", f"{one}: 1 class folder (7); a dataset needs at least two: {per_class}"),
        (empty, "x", f"{empty / 'a'}: no usable PNG or JPEG pictures; every class needs some"),
        (many, "x", f"{many}: 11 class folders; at most 10 (the networks have ten outputs)"),
        (pictures, "mnist", f"{rule}; 'mnist' is mnistctl's own, got 'mnist'"),
        (pictures, "a b", f"{rule}, got 'a b'"),
    ]
    for folder, name, message in cases:
        result = invoke("data", "import", folder, "--name", name)
        assert result.exit_code == 2 and result.output.strip() == f"error: {message}", result.output
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing half-made
    assert invoke("data", "import", pictures, "--name", "mine").exit_code == 0
    again = invoke("data", "import", pictures, "--name", "mine")
    assert again.exit_code == 2 and "a dataset 'mine' is there already; --force replaces it" in again.output
    unknown = invoke("validate", CONFIGS / "tiny.yaml", "--set", "data.dataset=mien")
    assert unknown.exit_code == 2 and unknown.output.strip().endswith(
        "data.dataset: unknown dataset 'mien'; expected one of: mnist, fashion, or one made by "
        "`mnistctl data import FOLDER --name NAME` (mine)"
    )
