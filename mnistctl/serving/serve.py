"""The HTTP server: TensorFlow Serving's REST predict API, image upload, and a drawing page.

Built on FastAPI (Starlette) and served by uvicorn. The model is loaded once; concurrent
requests are merged into batches, each one ``session.run`` on a worker thread
(:mod:`mnistctl.serving.request_batching`), so slow requests never block the event loop. Every bad request
gets a 4xx JSON ``{"error": ...}`` that names the problem, as TensorFlow Serving does, and the
server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mnistctl.pictures import ImageError, preprocess
from mnistctl.serving.inside import SIGNATURE as INSIDE
from mnistctl.serving.inside import pack_float32
from mnistctl.serving.request_batching import Batcher

MAX_JSON_BYTES = 8 << 20  # ~ 100 instances of 784 numbers written out in full
MAX_IMAGE_BYTES = 2 << 20
MAX_INSTANCES = 256
BODY_TIMEOUT_S = 10.0  # a body that sends nothing for this long is answered 408
# Decoding a picture can briefly take 64 MB (a 4096x4096 RGBA PNG); more decodes at once than
# there are cores would not finish sooner, only hold more memory (docs/BENCHMARKS.md).
DECODE_SLOTS = max(1, min(4, os.cpu_count() or 1))
MODEL_NAME = "mnist"


def _tensor(dtype: str, *dims: int) -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
    }


# The serving signature every mnistctl model has, as TF Serving's metadata answer spells it.
SIGNATURE_DEF = {
    "inputs": {"images": {**_tensor("DT_FLOAT", -1, 28, 28, 1), "name": "images:0"}},
    "outputs": {
        "probabilities": {**_tensor("DT_FLOAT", -1, 10), "name": "probabilities:0"},
        "classes": {**_tensor("DT_INT64", -1), "name": "classes:0"},
    },
    "method_name": "tensorflow/serving/predict",
}


def _inside_signature(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The activations signature as TF Serving's metadata answer spells it."""
    outputs = {
        layer["name"]: {**_tensor("DT_FLOAT", -1, *layer["shape"]), "name": f"{layer['name']}:0"}
        for layer in layers
    }
    return {
        "inputs": SIGNATURE_DEF["inputs"],
        "outputs": outputs | {"probabilities": SIGNATURE_DEF["outputs"]["probabilities"]},
        "method_name": "tensorflow/serving/predict",
    }


IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "application/octet-stream")


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Batching:
    """How ``serve`` merges concurrent requests (see :mod:`mnistctl.serving.request_batching`)."""

    max_batch: int = 64  # images per session.run at most; 1 turns batching off
    max_wait_ms: float = 0.0  # how long a batch that is not full waits for more
    threads: int = max(1, min(4, os.cpu_count() or 1))  # batches in flight at once


class RequestLog:
    """ASGI middleware: one line per request (method, path, status, milliseconds) to ``write``."""

    def __init__(self, app: Any, write: Callable[[str], None]) -> None:
        self.app, self.write = app, write

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 0

        async def sending(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            ms = (time.perf_counter() - started) * 1000
            self.write(f"{scope['method']} {scope['path']} {status or '-'} {ms:.1f} ms")


def create_app(
    predictor: Any,
    body_timeout_s: float = BODY_TIMEOUT_S,
    batching: Batching | None = Batching(),
    log: Callable[[str], None] | None = None,
) -> FastAPI:
    """The ASGI app around a loaded :class:`mnistctl.serving.export.Predictor`.

    Args:
        body_timeout_s: a request body that sends nothing for this long is answered 408 and
            its connection closed, so slow senders cannot hold the server's connections.
        batching: merge concurrent requests into one ``session.run`` (None: one run each).
        log: called with one line per request (None: nothing is logged).
    """
    batcher = None
    if batching is not None and batching.max_batch > 1:
        batcher = Batcher(
            predictor.predict,
            max_batch=batching.max_batch,
            max_wait_s=batching.max_wait_ms / 1000,
            threads=batching.threads,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if batcher is not None:
            batcher.close()

    app = FastAPI(title="mnistctl", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    if log is not None:
        app.add_middleware(RequestLog, write=log)
    counts = {"requests": 0}  # changed only on the event loop's thread
    served_version = str(predictor.info.get("version", 1))

    async def predict(images: np.ndarray) -> np.ndarray:
        if batcher is not None:
            probabilities = await asyncio.wrap_future(batcher.submit(images))
        else:
            probabilities = await run_in_threadpool(predictor.predict, images)
        counts["requests"] += 1
        return probabilities

    page = resources.files("mnistctl").joinpath("static/index.html").read_text(encoding="utf-8")
    decoding = asyncio.Semaphore(DECODE_SLOTS)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404, 405...: the same {"error": ...} shape as every other refusal
        return JSONResponse(
            {"error": f"{request.method} {request.url.path}: {exc.detail}"}, status_code=exc.status_code
        )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "requests": counts["requests"],
            "batches": batcher.batches if batcher is not None else counts["requests"],
        }

    @app.get("/metadata")
    async def metadata() -> dict[str, Any]:
        return predictor.info

    # TensorFlow Serving's REST surface for one model named "mnist" (version: the export's).
    @app.get("/v1/models/mnist")
    @app.get("/v1/models/mnist/versions/{version}")
    async def model_status(version: str | None = None) -> dict[str, Any]:
        _check_version(version)
        status = {"error_code": "OK", "error_message": ""}
        return {"model_version_status": [{"version": served_version, "state": "AVAILABLE", "status": status}]}

    inside = getattr(predictor, "inside", None)  # the layers, when the model can show them
    signatures = ("serving_default", INSIDE) if inside is not None else ("serving_default",)

    @app.get("/v1/models/mnist/metadata")
    @app.get("/v1/models/mnist/versions/{version}/metadata")
    async def model_metadata(version: str | None = None) -> dict[str, Any]:
        _check_version(version)
        signatures = {"serving_default": SIGNATURE_DEF}
        if inside is not None:
            signatures[INSIDE] = _inside_signature(inside.layers)
        return {
            "model_spec": {"name": MODEL_NAME, "signature_name": "", "version": served_version},
            "metadata": {"signature_def": {"signature_def": signatures}},
        }

    @app.post("/v1/models/mnist:predict")
    @app.post("/v1/models/mnist/versions/{version}:predict")
    async def predict_tf_serving(request: Request, version: str | None = None) -> JSONResponse:
        _check_version(version)
        # Any content type: `curl -d @x.json` says form data and `requests.post(data=...)` says
        # nothing, and TF Serving reads both; a body that is not JSON is refused as such.
        body = await _read_body(request, MAX_JSON_BYTES, None, body_timeout_s)
        images, columnar, signature = parse_instances(body, signatures)
        if signature == INSIDE:
            return await _activations_tf_serving(images, columnar)
        probabilities = await predict(images)
        # A JSONResponse of plain floats and ints: FastAPI's encoder would walk it again. TF
        # Serving answers in the request's format: rows ("predictions") for "instances", one
        # list per output ("outputs") for the columnar "inputs".
        if columnar:
            return JSONResponse(
                {
                    "outputs": {
                        "probabilities": [[float(p) for p in row] for row in probabilities],
                        "classes": [int(np.argmax(row)) for row in probabilities],
                    }
                }
            )
        return JSONResponse(
            {
                "predictions": [
                    {"probabilities": [float(p) for p in row], "classes": int(np.argmax(row))}
                    for row in probabilities
                ]
            }
        )

    async def _activations(images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        if inside is None:
            raise BadRequest(predictor.inside_missing, 404)
        answer = await run_in_threadpool(predictor.activations, images)
        counts["requests"] += 1
        return answer

    async def _activations_tf_serving(images: np.ndarray, columnar: bool) -> JSONResponse:
        probabilities, layers = await _activations(images)
        outputs = {layer["name"]: values for layer, values in zip(inside.layers, layers, strict=True)}
        outputs["probabilities"] = probabilities
        if columnar:
            return JSONResponse({"outputs": {name: values.tolist() for name, values in outputs.items()}})
        rows = [{name: values[i].tolist() for name, values in outputs.items()} for i in range(len(images))]
        return JSONResponse({"predictions": rows})

    def _check_version(version: str | None) -> None:
        if version is not None and version != served_version:
            raise BadRequest(
                f"model mnist has no version {version!r}; it serves version {served_version}", 404
            )

    async def read_image(request: Request) -> np.ndarray:
        body = await _read_body(request, MAX_IMAGE_BYTES, IMAGE_TYPES, body_timeout_s)
        try:
            async with decoding:
                return await run_in_threadpool(preprocess, body, "upload")
        except ImageError as err:
            raise BadRequest(str(err)) from None

    @app.post("/predict")
    async def predict_image(request: Request) -> JSONResponse:
        image = await read_image(request)
        probabilities = await predict(image[None])
        (result,) = predictor.labelled(probabilities)
        return JSONResponse({**result, "image": np.round(image, 3).tolist()})

    # Inside the network, for the drawing page: the layers' parameters once, then each drawing's
    # activations (exact float32, so the page's weighted sums add up to the layer's values).
    @app.get("/inside")
    async def inside_parameters() -> JSONResponse:
        if inside is None:
            raise BadRequest(predictor.inside_missing, 404)
        layers = await run_in_threadpool(predictor.parameters)
        return JSONResponse({"layers": layers, "of": predictor.info.get("inside_of")})

    @app.post("/activations")
    async def activations_image(request: Request) -> JSONResponse:
        image = await read_image(request)
        probabilities, layers = await _activations(image[None])
        (result,) = predictor.labelled(probabilities)
        return JSONResponse(
            {**result, "image": pack_float32(image), "layers": [pack_float32(values[0]) for values in layers]}
        )

    return app


async def _read_body(request: Request, limit: int, types: tuple[str, ...] | None, timeout_s: float) -> bytes:
    """The body, within ``limit`` bytes and ``timeout_s`` of silence; of one of ``types``
    (None: any content type - the body itself must then say what it is)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if types is not None and content_type not in types:
        raise BadRequest(
            f"content type {content_type or '(none)'!r} not accepted; send one of: {', '.join(types)}", 415
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body of {int(declared):,} bytes is over the limit of {limit:,}", 413)
    body = b""
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), timeout_s)
        except StopAsyncIteration:
            return body
        except asyncio.TimeoutError:
            raise BadRequest(f"request body stalled: nothing arrived for {timeout_s:g} s", 408) from None
        body += chunk  # counted as it arrives: a lying Content-Length is no way around
        if len(body) > limit:
            raise BadRequest(f"request body is over the limit of {limit:,} bytes", 413)


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number mnistctl accepts")


def parse_instances(
    body: bytes, signatures: tuple[str, ...] = ("serving_default",)
) -> tuple[np.ndarray, bool, str]:
    """TF Serving's row format ``{"instances": [...]}`` (or columnar ``{"inputs": ...}``) ->
    float32 images [N, 28, 28, 1] in [0, 1], whether the request was columnar, and the
    ``signature_name`` asked for (one of ``signatures``; the first when none is named);
    BadRequest naming the first problem."""
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(f"malformed JSON: {err}") from None
    if not isinstance(payload, dict) or not ({"instances", "inputs"} & set(payload)):
        raise BadRequest('expected a JSON object with "instances" (a list of images) or "inputs"')
    signature = payload.get("signature_name") or signatures[0]
    if signature not in signatures:
        raise BadRequest(f"model mnist has no signature {signature!r}; it has {', '.join(signatures)}")
    if "instances" in payload:
        instances = payload["instances"]
        if not isinstance(instances, list):
            raise BadRequest('"instances" must be a list of images')
        instances = [i["images"] if isinstance(i, dict) and "images" in i else i for i in instances]
        where = "instances"
    else:
        inputs = payload["inputs"]
        instances = inputs["images"] if isinstance(inputs, dict) and "images" in inputs else inputs
        if not isinstance(instances, list):
            raise BadRequest('"inputs" must be a list of images')
        where = "inputs"
    if not instances:
        raise BadRequest(f'"{where}" is empty')
    if len(instances) > MAX_INSTANCES:
        raise BadRequest(f"{len(instances)} instances; at most {MAX_INSTANCES} per request", 413)
    images = np.empty((len(instances), 28, 28, 1), dtype=np.float32)
    for i, instance in enumerate(instances):
        try:
            array = np.asarray(instance)
            if array.dtype.kind not in "iuf":  # text, true/false and mixtures are not pixels
                raise TypeError
            array = array.astype(np.float64)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"{where}[{i}]: expected numbers in nested lists of shape [28, 28, 1]") from None
        if array.shape not in ((28, 28, 1), (28, 28), (784,)):
            raise BadRequest(f"{where}[{i}]: expected shape [28, 28, 1], got {list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise BadRequest(f"{where}[{i}]: contains NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise BadRequest(f"{where}[{i}]: pixel values must be in [0, 1], got {low:g}..{high:g}")
        images[i] = array.reshape(28, 28, 1)
    return images, where == "inputs", signature
