"""Inside the network: the drawing page's activations are the graph's own tensors, an export's
`activations` signature says the same as its run directory, and the page's written-out
arithmetic adds up to each layer's value."""

from __future__ import annotations

import io
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image, ImageDraw

from mnistctl.cli import main
from mnistctl.dataset import load_dataset
from mnistctl.serving.inside import unpack_float32

from .conftest import CONFIGS, headless_chromium, serving_in_thread

# Every kind of step the page explains: a batch-normalised convolution, a max-pool with
# "same" padding, a strided "valid" convolution with another activation, dense layers.
LAYERS = [
    {"type": "conv", "filters": 4, "kernel": 3, "stride": 1, "padding": "same", "activation": "relu",
     "batch_norm": True},
    {"type": "maxpool", "size": 2, "padding": "same"},
    {"type": "conv", "filters": 6, "kernel": 4, "stride": 2, "padding": "valid", "activation": "tanh"},
    {"type": "dense", "units": 12, "activation": "relu", "dropout": 0.25},
    {"type": "dense", "units": 10, "activation": "softmax"},
]  # fmt: skip


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inside_run(mnist_cache, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inside")
    config = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    config["model"]["layers"] = LAYERS
    config["train"]["steps"] = 30
    (folder / "layers.yaml").write_text(yaml.safe_dump(config))
    result = invoke("train", folder / "layers.yaml", "--runs-dir", folder / "runs", "-q")
    assert result.exit_code == 0, result.output
    (run,) = (folder / "runs").iterdir()
    return run


@pytest.fixture(scope="module")
def inside_export(inside_run, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("inside_export") / "mnist"
    assert invoke("export", inside_run, "--out", base).exit_code == 0
    return base


@pytest.fixture(scope="module")
def digits(mnist_cache) -> np.ndarray:
    return load_dataset("mnist").test_images[:8]


def test_the_activations_are_the_training_graphs_own_tensors(inside_run, digits):
    """What the page receives, layer by layer, against the hidden layers and logits of the
    graph that trained (rebuilt, its checkpoint restored), for the same eight test digits."""
    from mnistctl.model import build_graph, make_session
    from mnistctl.run.checkpoints import resolve, restore
    from mnistctl.run.directory import load_run
    from mnistctl.serving.export import Predictor

    run_dir, prefix = resolve(inside_run)
    g = build_graph(load_run(run_dir).trained_experiment())
    with make_session(g) as session:
        restore(session, g, prefix)
        expected = session.run([*g.hidden, g.logits, g.probabilities], {g.images: digits})
    predictor = Predictor(inside_run)
    probabilities, layers = predictor.activations(digits.astype(np.float32)[..., None] / np.float32(255))
    assert [layer.shape[1:] for layer in layers] == [(28, 28, 4), (14, 14, 4), (6, 6, 6), (12,), (10,)]
    for got, want in zip([*layers, probabilities], expected, strict=True):
        assert got.shape == want.shape
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), np.abs(got - want).max()


def test_the_exports_activations_signature_agrees_with_the_run_directory(inside_run, inside_export, digits):
    from mnistctl.serving.export import Predictor

    x = digits.astype(np.float32)[..., None] / np.float32(255)
    run, export = Predictor(inside_run), Predictor(inside_export)
    assert run.info["signatures"] == export.info["signatures"] == ["serving_default", "activations"]
    (p_run, l_run), (p_export, l_export) = run.activations(x), export.activations(x)
    assert np.allclose(p_run, p_export, atol=1e-6)
    for a, b in zip(l_run, l_export, strict=True):
        assert np.allclose(a, b, atol=1e-6)
    # The parameters the page shows are the same weights, read from the checkpoint or the export.
    for a, b in zip(run.parameters(), export.parameters(), strict=True):
        assert a.keys() == b.keys() and a["parameters"].keys() == b["parameters"].keys()
        for name in a["parameters"]:
            assert np.array_equal(
                unpack_float32(a["parameters"][name]), unpack_float32(b["parameters"][name])
            )
    assert set(run.parameters()[0]["parameters"]) == {"weights", "offset", "moving_mean", "moving_variance"}
    # The default signature is untouched: TF Serving's clients see what they always saw.
    assert np.allclose(export.predict(x), p_export, atol=1e-6)


def serving(predictor):
    """The app around ``predictor``, served on loopback: its URL."""
    from mnistctl.serving.serve import create_app

    return serving_in_thread(create_app(predictor))


@pytest.fixture(scope="module")
def served(inside_export):
    from mnistctl.serving.export import Predictor

    with serving(Predictor(inside_export)) as url:
        yield url


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def drawn_four() -> bytes:
    image = Image.new("RGBA", (280, 280), "black")
    pen = ImageDraw.Draw(image)
    pen.line([(168, 48), (84, 172), (214, 172)], fill="white", width=20)
    pen.line([(168, 48), (168, 240)], fill="white", width=20)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_page_and_tf_servings_activations_signature_answer_the_same(served):
    """/activations (a PNG, for the page) and TF Serving's predict with signature_name
    "activations" (the picture it prepared, as numbers) give the same layers; the metadata
    lists the second signature."""
    status, page = post(f"{served}/activations", drawn_four(), "image/png")
    assert status == 200 and len(page["layers"]) == len(LAYERS)
    image = unpack_float32(page["image"]).reshape(28, 28, 1)
    body = json.dumps({"signature_name": "activations", "instances": [image.tolist()]}).encode()
    status, tf_serving = post(f"{served}/v1/models/mnist:predict", body, "application/json")
    assert status == 200
    (row,) = tf_serving["predictions"]
    names = [f"layer{i}_{layer['type']}" for i, layer in enumerate(LAYERS)]
    assert list(row) == [*names, "probabilities"]
    for name, packed in zip(names, page["layers"], strict=True):
        assert np.allclose(np.asarray(row[name]), unpack_float32(packed), atol=1e-6)
    assert np.allclose(row["probabilities"], page["probabilities"], atol=1e-6)

    signatures = get(f"{served}/v1/models/mnist/metadata")[1]["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "activations"}
    dims = [
        int(d["size"]) for d in signatures["activations"]["outputs"]["layer2_conv"]["tensor_shape"]["dim"]
    ]
    assert dims == [-1, 6, 6, 6]
    assert get(f"{served}/metadata")[1]["signatures"] == ["serving_default", "activations"]
    status, body = post(f"{served}/v1/models/mnist:predict", b'{"signature_name": "x", "instances": [0]}', "")
    assert status == 400 and "has no signature 'x'" in body["error"]


def test_an_export_without_the_signature_still_serves_and_says_why_it_cannot_show_inside(
    inside_export, tmp_path, digits
):
    """An export made before the activations signature (here: its description stripped of
    the layers) predicts as before; the page's /inside names the reason in one line."""
    from mnistctl.serving.export import Predictor

    old = tmp_path / "old"
    shutil.copytree(inside_export, old)
    info = json.loads((old / "1" / "mnistctl.json").read_text())
    del info["layers"]
    (old / "1" / "mnistctl.json").write_text(json.dumps(info))
    predictor = Predictor(old)
    assert predictor.inside is None and predictor.info["signatures"] == ["serving_default"]
    with serving(predictor) as url:
        status, body = get(f"{url}/inside")
        assert status == 404
        assert "no 'activations' signature" in body["error"] and "export the run again" in body["error"]
        x = (digits[:1].astype(np.float32) / 255)[..., None]
        request = json.dumps({"instances": x.tolist()}).encode()
        assert post(f"{url}/v1/models/mnist:predict", request, "application/json")[0] == 200
        status, body = post(f"{url}/activations", drawn_four(), "image/png")
        assert status == 404 and "no 'activations' signature" in body["error"]


def test_the_drawing_page_shows_every_layer_and_its_arithmetic_adds_up(served):
    """Draw a 4 in headless Chromium: every layer is drawn (feature maps and bars), the first
    layer's kernels are shown, and for every feature map of every layer with maps, the sum the
    page writes out (patch x kernel + bias, batch norm, activation; or a max-pool's maximum)
    equals the value the network computed there."""
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(served + "/")
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=30000)
        box = page.locator("#pad").bounding_box()
        for stroke in ([(168, 48), (84, 172), (214, 172)], [(168, 48), (168, 240)]):
            page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x, box["y"] + y, steps=6)
            page.mouse.up()
        page.wait_for_function("Number(document.body.dataset.answers || 0) >= 1", timeout=20000)
        page.wait_for_timeout(800)  # the last stroke's answer
        counts = page.evaluate(
            "[...document.querySelectorAll('.layer')].map(l => l.querySelectorAll('.cell').length)"
        )
        assert counts == [4, 4, 6, 0, 0]
        assert page.locator(".layer[data-layer='0'] canvas.kernel").count() == 4
        assert page.locator("canvas.strip").count() == 2
        results = page.evaluate(
            "[0, 1, 2].flatMap(li => [...Array(model.layers[li].shape[2]).keys()]"
            ".map(k => window.explainMap(li, k)))"
        )
        assert len(results) == 14
        for r in results:
            assert abs(r["computed"] - r["value"]) <= 1e-4 * max(1, abs(r["value"])), results
        page.locator(".layer[data-layer='2'] .cell").nth(3).click()
        text = page.locator("#detail").inner_text()
    assert "feature map 4 of 6" in text and "tanh(" in text and "✓ the same" in text
