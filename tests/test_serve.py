"""From checkpoint to production: export (checked by saved_model_cli), predict, and the server."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mnistctl.cli import main
from mnistctl.dataset import load_dataset
from mnistctl.pictures import ImageError, preprocess

from .conftest import CONFIGS, free_port, headless_chromium, rewrite_config, serving_in_thread, wait_for


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def as_png(array: np.ndarray, invert: bool = True, scale: int = 4) -> bytes:
    """An MNIST digit as a user would draw it: dark ink on white, larger, as PNG."""
    image = Image.fromarray(255 - array if invert else array).resize((28 * scale, 28 * scale), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory) -> Path:
    """The export's base folder (``models/mnist``), as TF Serving's --model_base_path takes it."""
    base = tmp_path_factory.mktemp("export") / "mnist"
    result = invoke("export", trained_run, "--out", base)
    assert result.exit_code == 0, result.output
    assert f"to {base / '1'} (version 1)" in result.output
    return base


@pytest.fixture(scope="module")
def test_digits(mnist_cache):
    mnist = load_dataset("mnist")
    return mnist.test_images[:500], mnist.test_labels[:500]


def test_saved_model_cli_agrees_with_eval(trained_run, exported, test_digits, tmp_path):
    from mnistctl.report.evaluate import evaluate_checkpoint

    images, _ = test_digits
    np.save(tmp_path / "x.npy", (images.astype(np.float32) / np.float32(255.0))[..., None])
    cli = Path(sys.executable).with_name("saved_model_cli")
    command = [
        str(cli),
        "run",
        "--dir",
        str(exported / "1"),
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
    ]
    command += ["--inputs", f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    classes = np.load(tmp_path / "out" / "classes.npy")
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    report = evaluate_checkpoint(trained_run)
    assert classes.shape == (500,) and probabilities.shape == (500, 10)
    assert np.array_equal(classes, report.predictions)
    info = json.loads((exported / "1" / "mnistctl.json").read_text())
    assert info["step"] == report.step and info["input"]["shape"] == [None, 28, 28, 1]


def test_export_refuses_to_overwrite_without_force(trained_run, exported):
    result = invoke("export", trained_run, "--out", exported)
    assert result.exit_code == 2 and "already exists (use --force to replace it)" in result.output
    assert invoke("export", trained_run, "--out", exported, "--force").exit_code == 0


def test_preprocessing_matches_mnist_conventions(test_digits):
    images, _ = test_digits
    digit = preprocess(as_png(images[0]))
    assert digit.shape == (28, 28) and digit.dtype == np.float32
    assert digit.min() >= 0.0 and digit.max() <= 1.0
    rows, cols = np.nonzero(digit > 0.2)
    assert rows.max() - rows.min() < 21 and cols.max() - cols.min() < 21  # fits the 20x20 box
    cy, cx = (np.indices(digit.shape) * digit).sum(axis=(1, 2)) / digit.sum()
    assert abs(cy - 14) < 1 and abs(cx - 14) < 1  # centred by mass
    # white on black, drawn on a transparent canvas or as dark ink on paper: the same digit
    light = preprocess(as_png(images[0], invert=False))
    assert np.abs(light - digit).mean() < 0.02


def test_predict_on_pictures_agrees_with_the_model_on_the_originals(trained_run, test_digits, tmp_path):
    from mnistctl.serving.export import Predictor

    images, _ = test_digits
    files = []
    for i in range(20):
        files.append(tmp_path / f"digit{i}.png")
        files[-1].write_bytes(as_png(images[i]))
    result = invoke("predict", trained_run, *files, "--json")
    assert result.exit_code == 0, result.output
    predicted = [r["class"] for r in json.loads(result.output)]
    originals = Predictor(trained_run).predict(images[:20].astype(np.float32) / 255.0).argmax(axis=1)
    assert sum(int(a == b) for a, b in zip(predicted, originals, strict=True)) >= 16


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"not an image at all", "not an image Pillow can read"),
        (None, "no digit found (the image is blank)"),
        ("huge", "too large"),
    ],
)
def test_bad_pictures(tmp_path, data, message):
    if data is None:
        buffer = io.BytesIO()
        Image.new("L", (50, 50), 255).save(buffer, format="PNG")
        data = buffer.getvalue()
    elif data == "huge":
        buffer = io.BytesIO()
        Image.new("1", (5000, 5000)).save(buffer, format="PNG")
        data = buffer.getvalue()
    with pytest.raises(ImageError, match=re.escape(message)):
        preprocess(data, "x.png")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    result = invoke("predict", tmp_path / "nowhere", path)  # the image is checked before the model
    assert result.exit_code == 2 and message in result.output


# -- the server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(exported):
    from mnistctl.serving.export import Predictor
    from mnistctl.serving.serve import create_app

    predictor = Predictor(exported)
    with serving_in_thread(create_app(predictor, body_timeout_s=2), headers_timeout_s=2) as url:
        yield url, predictor


def request(url: str, body: bytes | None = None, content_type: str = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if body is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers), timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_tf_serving_rest_format(server, test_digits):
    url, predictor = server
    images, _ = test_digits
    batch = (images[:5].astype(np.float32) / 255.0)[..., None]
    status, body = request(
        f"{url}/v1/models/mnist:predict", json.dumps({"instances": batch.tolist()}).encode()
    )
    assert status == 200
    expected = predictor.predict(batch)
    assert [p["classes"] for p in body["predictions"]] == list(expected.argmax(axis=1))
    assert np.allclose([p["probabilities"] for p in body["predictions"]], expected, atol=1e-6)
    named = {"instances": [{"images": batch[0].tolist()}]}  # TF Serving's named-input rows
    status, body = request(f"{url}/v1/models/mnist:predict", json.dumps(named).encode())
    assert status == 200 and body["predictions"][0]["classes"] == int(expected[0].argmax())


def test_a_columnar_request_is_answered_in_columns_as_tf_serving_does(server, test_digits):
    url, predictor = server
    images, _ = test_digits
    batch = (images[:3].astype(np.float32) / 255.0)[..., None]
    expected = predictor.predict(batch)
    for inputs in (batch.tolist(), {"images": batch.tolist()}):
        status, body = request(f"{url}/v1/models/mnist:predict", json.dumps({"inputs": inputs}).encode())
        assert status == 200 and set(body) == {"outputs"}, body
        assert body["outputs"]["classes"] == list(expected.argmax(axis=1))
        assert np.allclose(body["outputs"]["probabilities"], expected, atol=1e-6)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "", "text/plain"])
def test_a_json_body_is_read_whatever_its_content_type_says(server, test_digits, content_type):
    """`curl -d @x.json` sends a form type, `requests.post(data=...)` none: TF Serving reads both."""
    url, _ = server
    body = json.dumps({"instances": [(test_digits[0][0] / 255.0)[..., None].tolist()]}).encode()
    connection = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=30)
    connection.request(
        "POST", "/v1/models/mnist:predict", body, {"Content-Type": content_type} if content_type else {}
    )
    response = connection.getresponse()
    assert response.status == 200 and "predictions" in json.loads(response.read())
    connection.close()


def test_tf_serving_model_status_and_metadata(server):
    url, _ = server
    status, body = request(f"{url}/v1/models/mnist")
    assert status == 200 and body == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    status, body = request(f"{url}/v1/models/mnist/metadata")
    assert status == 200 and body["model_spec"] == {"name": "mnist", "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in signature["inputs"]["images"]["tensor_shape"]["dim"]]
    assert dims == [-1, 28, 28, 1] and signature["outputs"]["classes"]["dtype"] == "DT_INT64"
    assert request(f"{url}/v1/models/mnist/versions/1/metadata")[0] == 200
    status, body = request(f"{url}/v1/models/mnist/versions/7")
    assert status == 404 and body["error"] == "model mnist has no version '7'; it serves version 1"


def test_serve_and_predict_take_the_base_path_and_its_highest_version(trained_run, exported, tmp_path):
    from mnistctl.serving.export import Predictor, saved_model_path

    base = tmp_path / "mnist"
    shutil.copytree(exported, base)
    result = invoke("export", trained_run, "--out", base, "--version", "3")
    assert result.exit_code == 0 and (base / "3" / "saved_model.pb").is_file()
    assert saved_model_path(base) == base / "3" and saved_model_path(base / "1") == base / "1"
    assert saved_model_path(tmp_path) is None
    predictor = Predictor(base)
    assert predictor.info["version"] == 3 and predictor.info["source"] == "saved_model"
    predictor.close()


def test_image_upload_health_and_metadata(server, test_digits):
    url, _ = server
    images, _ = test_digits
    status, body = request(f"{url}/predict", as_png(images[0]), "image/png")
    assert status == 200 and 0 <= body["class"] <= 9 and len(body["probabilities"]) == 10
    assert np.array(body["image"]).shape == (28, 28)
    assert request(f"{url}/healthz")[1]["status"] == "ok"
    meta = request(f"{url}/metadata")[1]
    assert meta["input"]["shape"] == [None, 28, 28, 1] and meta["source"] == "saved_model"
    with urllib.request.urlopen(f"{url}/", timeout=10) as page:
        assert b"<canvas" in page.read()


BAD = [
    (b"{not json", "application/json", 400, "malformed JSON"),
    (b'{"instances": [NaN]}', "application/json", 400, "NaN is not a number"),
    (
        b'{"instances": [[1, 2]]}',
        "application/json",
        400,
        "instances[0]: expected shape [28, 28, 1], got [2]",
    ),
    (b'{"instances": [["a"]]}', "application/json", 400, "instances[0]: expected numbers"),
    (json.dumps({"instances": [[[[2.0]] * 28] * 28]}).encode(), "application/json", 400, "must be in [0, 1]"),
    (json.dumps({"instances": [[[[0.0]] * 28] * 28] * 300}).encode(), "application/json", 413, "at most 256"),
    (b'{"instances": []}', "application/json", 400, '"instances" is empty'),
    (b'{"images": []}', "application/json", 400, 'expected a JSON object with "instances"'),
    (b"{not json", "application/x-www-form-urlencoded", 400, "malformed JSON"),
    (json.dumps({"instances": [[["0.5"]] * 28] * 28}).encode(), "application/json", 400, "expected numbers"),
    (json.dumps({"instances": [[[True]] * 28] * 28}).encode(), "application/json", 400, "expected numbers"),
    (b'{"instances": ' + b"[" * 100000 + b"]" * 100000 + b"}", "application/json", 400, "nested too deeply"),
    (b'{"instances": ' + b"[" * 5000, "application/json", 400, "malformed JSON"),
    (b'{"instances": [' + b"9" * 400 + b"]}", "application/json", 400, "expected numbers"),
]


@pytest.mark.parametrize(("body", "content_type", "status", "message"), BAD, ids=[b[3][:30] for b in BAD])
def test_bad_requests_get_a_4xx_json_error_and_the_server_keeps_serving(
    server, body, content_type, status, message
):
    url, _ = server
    got, answer = request(f"{url}/v1/models/mnist:predict", body, content_type)
    assert got == status and message in answer["error"]
    assert request(f"{url}/healthz")[0] == 200


def test_unknown_paths_and_methods_get_the_same_json_error(server):
    url, _ = server
    assert request(f"{url}/nowhere") == (404, {"error": "GET /nowhere: Not Found"})
    status, body = request(f"{url}/healthz", b"{}")
    assert status == 405 and body == {"error": "POST /healthz: Method Not Allowed"}


def test_serve_on_a_taken_port_is_one_line_before_the_banner(trained_run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = invoke("serve", trained_run, "--port", port)
        assert result.exit_code == 2 and "serving" not in result.output
        assert (
            result.output.strip() == f"error: 127.0.0.1:{port}: cannot listen there (Address already in use)"
        )


def start_post(url: str, declared_length: int):
    """A JSON POST to the predict route whose headers are sent and whose body is not (yet)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=15)
    connection.putrequest("POST", "/v1/models/mnist:predict")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(declared_length))
    connection.endheaders()
    return connection


def test_a_body_that_stalls_is_answered_408_and_the_server_keeps_serving(server):
    url, _ = server
    connection = start_post(url, declared_length=100_000)
    connection.send(b'{"instances": ')  # 14 of 100,000 bytes, then nothing
    started = time.monotonic()
    response = connection.getresponse()
    assert response.status == 408 and "stalled" in json.loads(response.read())["error"]
    assert time.monotonic() - started < 10  # the fixture's timeout is 2 s
    connection.close()
    assert request(f"{url}/healthz")[0] == 200


def test_many_slow_senders_are_all_timed_out_while_the_server_keeps_serving(server):
    """200 connections that stall in their body, 100 that send half their headers, 100 that send
    nothing: all are closed within the fixture's 2 s deadlines, and /healthz answers meanwhile."""
    url, _ = server
    host, port = url.removeprefix("http://").split(":")
    bodies = [start_post(url, declared_length=100_000) for _ in range(200)]
    for connection in bodies:
        connection.send(b'{"instances": ')
    half_headers, silent = [], []
    for _ in range(100):
        half_headers.append(socket.create_connection((host, int(port)), timeout=15))
        half_headers[-1].sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
        silent.append(socket.create_connection((host, int(port)), timeout=15))
    started = time.monotonic()
    status, _ = request(f"{url}/healthz")
    assert status == 200 and time.monotonic() - started < 2  # not queued behind the slow ones
    statuses = []
    for connection in bodies:
        response = connection.getresponse()
        statuses.append(response.status)
        connection.close()
    assert statuses == [408] * 200
    for sock in half_headers + silent:
        assert sock.recv(1024) == b""  # closed by the server, with nothing to say
        sock.close()
    assert time.monotonic() - started < 10
    assert request(f"{url}/healthz")[0] == 200


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_both_http_parsers_close_connections_whose_headers_never_come(exported, parser):
    """The headers deadline works on either of uvicorn's parsers (h11 where httptools is missing)."""
    import uvicorn

    from mnistctl.serving.export import Predictor
    from mnistctl.serving.listen import _headers_deadline_protocol, uvicorn_config
    from mnistctl.serving.serve import create_app

    port = free_port()
    config = uvicorn_config(create_app(Predictor(exported)), headers_timeout_s=1, host="127.0.0.1", port=port)
    config.http = _headers_deadline_protocol(1, parser)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        started = time.monotonic()
        assert half.recv(1024) == b"" and silent.recv(1024) == b""
        assert time.monotonic() - started < 5
        assert request(f"http://127.0.0.1:{port}/healthz")[0] == 200  # whole requests still served
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)  # keep-alive: a second request
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert kept.recv(4096).startswith(b"HTTP/1.1 200")
        for sock in (half, silent, kept):
            sock.close()
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def test_oversized_body_is_refused_before_it_is_read(server):
    url, _ = server
    connection = start_post(url, declared_length=9 << 20)  # the 9 MiB body is never sent
    response = connection.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    connection.close()
    assert request(f"{url}/healthz")[0] == 200


def test_corrupt_image_upload(server):
    url, _ = server
    status, body = request(f"{url}/predict", b"\x89PNG\r\n\x1a\n broken", "image/png")
    assert status == 400 and "upload:" in body["error"]


def test_concurrent_requests(server, test_digits):
    url, _ = server
    images, _ = test_digits
    body = json.dumps({"instances": [(images[0].astype(np.float32) / 255)[..., None].tolist()]}).encode()
    results = []

    def client():
        for _ in range(10):
            results.append(request(f"{url}/v1/models/mnist:predict", body)[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80


def test_concurrent_distinct_requests_each_get_their_own_answer(server, test_digits):
    """32 clients at once, each with its own digits: merged into batches, answered apart."""
    url, predictor = server
    images = test_digits[0][:64].astype(np.float32) / 255
    expected = predictor.predict(images)
    results = {}
    before = request(f"{url}/healthz")[1]

    def client(i):
        for j in (i, i + 32):
            body = json.dumps({"instances": [images[j][..., None].tolist()]}).encode()
            status, answer = request(f"{url}/v1/models/mnist:predict", body)
            results[j] = (status, answer["predictions"][0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(64))
    for j, (status, prediction) in results.items():
        assert status == 200 and prediction["classes"] == int(expected[j].argmax())
        assert np.allclose(prediction["probabilities"], expected[j], atol=1e-5)
    after = request(f"{url}/healthz")[1]
    assert after["requests"] - before["requests"] == 64
    assert after["batches"] - before["batches"] < 64  # some requests shared a model run


def big_picture(digit: np.ndarray, side: int = 4096, format: str = "PNG") -> bytes:
    """``digit`` drawn as dark ink in the middle of a large white RGBA canvas."""
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    ink = Image.fromarray(255 - digit).resize((side // 4, side // 4), Image.BICUBIC).convert("RGBA")
    canvas.paste(ink, (side // 3, side // 3))
    buffer = io.BytesIO()
    canvas.convert("RGB" if format == "JPEG" else "RGBA").save(buffer, format=format)
    return buffer.getvalue()


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_large_picture_is_decoded_small_and_reads_as_the_small_one_does(test_digits, format):
    from mnistctl.pictures import WORKING_SIDE, load_image

    images, _ = test_digits
    data = big_picture(images[0], format=format)
    assert max(load_image(data).size) <= WORKING_SIDE
    small = preprocess(as_png(images[0], scale=8))
    assert np.abs(preprocess(data) - small).mean() < 0.03


def resident_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads memory from /proc")
def test_many_large_uploads_at_once_are_decoded_a_few_at_a_time_and_memory_returns(
    server, test_digits, monkeypatch
):
    """32 uploads of a 4096x4096 RGBA PNG (64 MB each decoded), 32 at a time, to a real server."""
    from mnistctl.serving import serve

    url, _ = server
    body = big_picture(test_digits[0][0])
    decoding, most = [0], [0]
    lock = threading.Lock()

    def counting(data, name):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        try:
            return preprocess(data, name)
        finally:
            with lock:
                decoding[0] -= 1

    monkeypatch.setattr(serve, "preprocess", counting)
    request(f"{url}/predict", body, "image/png")  # warm-up: first-use allocations are not growth
    idle = resident_mb()
    results = []

    def upload():
        results.append(request(f"{url}/predict", body, "image/png"))

    threads = [threading.Thread(target=upload) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200] * 32
    assert {answer["class"] for _, answer in results} == {int(test_digits[1][0])}
    assert 1 <= most[0] <= serve.DECODE_SLOTS
    # Before the fix: decodes all at once, 320 MB of float arrays each, and kept (+2 GB here).
    assert resident_mb() - idle < 300


def test_drawing_page_in_a_real_browser(server):
    """Draw in headless Chromium at phone width: no blank request when a stroke begins, a tap
    leaves no error, nothing moves when the prediction appears, and a prediction does appear."""
    url, _ = server
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 375, "height": 740})
        sent = []
        page.on(
            "request", lambda r: sent.append(r.url) if r.url.endswith(("/predict", "/activations")) else None
        )
        page.goto(url + "/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # no sideways scrolling
        box = page.locator("#pad").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375
        bars_before = page.locator("#bars").bounding_box()

        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 20)
        page.mouse.down()
        page.wait_for_timeout(300)
        assert sent == []  # the stroke has begun: nothing sent yet
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=8)
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 20, steps=8)  # a 1
        page.mouse.up()
        page.wait_for_function("document.querySelector('#digit').textContent.length > 0", timeout=20000)
        shown = page.locator("#digit").text_content()
        assert sent and all(url.endswith("/activations") for url in sent)  # the layers come with it
        assert page.locator("#bars").bounding_box() == bars_before  # no layout jump
        widths = page.evaluate("[...document.querySelectorAll('.fill')].map(f => f.style.width)")

        page.click("#clear")
        page.mouse.click(box["x"] + 60, box["y"] + 60)  # a tap
        page.wait_for_timeout(1500)
        tapped_error = page.locator("#error").text_content()
    assert shown in [str(d) for d in range(10)] and len(widths) == 10 and all(w.endswith("%") for w in widths)
    assert tapped_error == ""


def test_a_weight_averaged_run_is_evaluated_and_exported_with_its_averages(mnist_cache, tmp_path):
    """With model.ema_decay the metrics, ``eval`` and the export all use the averages, which
    predict differently from the trained weights in the same checkpoint."""
    from mnistctl.report.evaluate import evaluate_checkpoint
    from mnistctl.run.writers import read_metrics
    from mnistctl.serving.export import Predictor

    runs = tmp_path / "runs"
    result = invoke("train", CONFIGS / "tiny.yaml", "--runs-dir", runs, "--set", "model.ema_decay=0.9", "-q")
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    best = max(read_metrics(run / "metrics.csv"), key=lambda r: r["test_accuracy"])
    report = evaluate_checkpoint(run)
    assert report.step == best["step"] and report.test_accuracy == best["test_accuracy"]
    assert report.test_loss == pytest.approx(best["test_loss"], rel=1e-5)

    out = tmp_path / "model"
    assert invoke("export", run, "--out", out).exit_code == 0
    images = (report.images.astype(np.float32) / np.float32(255.0))[..., None]
    predictor = Predictor(out)
    probabilities = predictor.predict(images)
    predictor.close()
    assert np.array_equal(probabilities.argmax(axis=1), report.predictions)

    # The same checkpoint read without the averages: another model.
    raw = tmp_path / "raw"
    shutil.copytree(run, raw)
    rewrite_config(raw, lambda text: re.sub(r"\n\s*ema_decay: 0.9", "", text))
    assert "ema_decay" not in (raw / "config.yaml").read_text()
    assert evaluate_checkpoint(raw).test_loss != pytest.approx(report.test_loss, rel=1e-4)


@pytest.mark.parametrize(
    "command", [["predict", "{missing}", "{image}"], ["serve", "{missing}", "--port", "1"]]
)
def test_a_model_that_is_not_there_is_one_line_before_tensorflow_loads(tmp_path, command):
    image = tmp_path / "x.png"
    stroke = np.zeros((28, 28), np.uint8)
    stroke[5:23, 13:16] = 255  # a 1
    image.write_bytes(as_png(stroke))
    args = [a.format(missing=tmp_path / "missing", image=image) for a in command]
    code = (
        "import sys\nfrom mnistctl.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert e.code == 2, e.code\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'}: no such run directory or checkpoint"


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def test_workers_serve_side_by_side_and_stop_together(exported, server, test_digits):
    _, predictor = server
    images, _ = test_digits
    port = free_port()
    command = [sys.executable, "-m", "mnistctl", "serve", str(exported), "--port", str(port), "--workers"]
    process = subprocess.Popen([*command, "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/healthz", process)
        workers = children_of(process.pid)
        assert len(workers) == 2
        batch = (images[:24].astype(np.float32) / 255.0)[..., None]
        expected = predictor.predict(batch).argmax(axis=1)
        answers: dict[int, int] = {}

        def ask(i: int) -> None:  # a connection of its own each: the kernel spreads them
            body = json.dumps({"instances": [batch[i].tolist()]}).encode()
            status, reply = request(f"{url}/v1/models/mnist:predict", body)
            assert status == 200
            answers[i] = reply["predictions"][0]["classes"]

        def ask_all() -> None:
            answers.clear()
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(batch))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [answers.get(i) for i in range(len(batch))] == list(expected)  # each its own answer

        ask_all()
        os.kill(workers[0], signal.SIGKILL)  # one worker dies: the other serves, and it is replaced
        ask_all()
        deadline = time.monotonic() + 60
        while (now := children_of(process.pid)) == [workers[1]] or len(now) < 2:
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        replacement = (set(now) - set(workers)).pop()
        wait_for(url + "/healthz", process)
        ask_all()
    finally:
        process.terminate()  # SIGTERM to the parent reaches every worker
        out, errors = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, errors  # as one server ends on SIGTERM
    assert "from 2 processes" in out
    assert f"serving process {workers[0]} exited with -9; starting another" in errors
    for worker in (workers[1], replacement):
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)


def test_a_worker_that_cannot_load_the_model_stops_the_server_with_its_reason(exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported / "1", broken)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    command = [sys.executable, "-m", "mnistctl", "serve", str(broken), "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error: serving process" in result.stderr
    assert "error: serving stopped: 3 serving processes in a row exited within 10 s" in result.stderr


def test_predict_answers_every_readable_picture_and_names_each_bad_one(trained_run, test_digits, tmp_path):
    images, _ = test_digits
    good, bad, other = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "other.png"
    good.write_bytes(as_png(images[0]))
    bad.write_bytes(b"not an image at all")
    other.write_bytes(as_png(images[1]))
    result = invoke("predict", trained_run, good, bad, other, "--json")
    assert result.exit_code == 2  # not every picture was answered
    report = json.loads(result.stdout)
    assert [r["file"] for r in report] == [str(good), str(bad), str(other)]
    assert "error" not in report[0] and "error" not in report[2]
    assert report[1]["error"].startswith(f"{bad}: not an image Pillow can read")
    from mnistctl.pictures import read_image_file
    from mnistctl.serving.export import Predictor

    exact = Predictor(trained_run).predict(np.stack([read_image_file(good), read_image_file(other)]))[0]
    assert report[0]["probabilities"] == [float(p) for p in exact]  # as computed, not rounded
    result = invoke("predict", trained_run, good, bad)
    assert result.exit_code == 2
    assert f"{good}: " in result.stdout and f"error: {bad}: not an image" in result.stderr


def test_the_request_log_has_one_line_per_request_with_its_status(server):
    import asyncio

    from mnistctl.serving.serve import create_app

    _, predictor = server
    lines: list[str] = []
    app = create_app(predictor, batching=None, log=lines.append)

    async def call(method: str, path: str, body: bytes = b"") -> None:
        scope = {
            "type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
            "headers": [(b"content-type", b"application/json")], "query_string": b"",
            "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
        }  # fmt: skip

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            pass

        await app(scope, receive, send)

    asyncio.run(call("GET", "/healthz"))
    asyncio.run(call("POST", "/v1/models/mnist:predict", b"{not json"))
    assert [line.rsplit(" ", 2)[0] for line in lines] == [
        "GET /healthz 200",
        "POST /v1/models/mnist:predict 400",
    ]
    assert all(line.endswith(" ms") for line in lines)
