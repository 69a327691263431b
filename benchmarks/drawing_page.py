"""How fast the drawing page answers: `/predict` against `/activations` (every layer's output),
measured over HTTP on loopback, and the page's own time from a stroke's picture to drawn layers.

    python benchmarks/drawing_page.py RUN_DIR [--requests 300] [--page-answers 100] [--json OUT]

Starts `mnistctl serve RUN_DIR` on 127.0.0.1 (a free port), then:
1. sends ``--requests`` PNG drawings (280x280, as the page sends them: four hand-drawn digits at
   growing stages of a stroke) one after another to /predict and to /activations, interleaved,
   and reports each one's p50/p99 in milliseconds (the whole answer as the browser receives it:
   decoding the PNG, preparing the picture, the model, the JSON);
2. with Chromium installed, draws digits on the page with the mouse and reads the page's own
   time per answer (from the canvas's PNG to the layers drawn), ``--page-answers`` of them.
"""

from __future__ import annotations

import argparse
import http.client
import io
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
from screenshots import DRAWING_READY, STROKES, draw, free_port, opened, wait_until_up  # noqa: E402


def drawings() -> list[bytes]:
    """PNGs of the page's pad at each stage of drawing each digit (as a drawing in progress sends)."""
    pngs = []
    for strokes in STROKES.values():
        image = Image.new("L", (280, 280), 0)
        pen = ImageDraw.Draw(image)
        for stroke in strokes:
            for a, b in itertools.pairwise(stroke):
                pen.line([a, b], fill=255, width=20, joint="curve")
                buffer = io.BytesIO()
                image.convert("RGBA").save(buffer, "PNG")
                pngs.append(buffer.getvalue())
    return pngs


def percentiles(ms: list[float]) -> dict[str, float]:
    values = np.asarray(ms)
    p50, p99 = (round(float(np.percentile(values, q)), 1) for q in (50, 99))
    return {"p50": p50, "p99": p99, "n": len(ms)}


def time_http(port: int, requests: int) -> dict[str, dict[str, float]]:
    pngs = drawings()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times: dict[str, list[float]] = {"/predict": [], "/activations": []}
    for i in range(requests + 20):  # the first 20 of each warm up
        for path in times:
            started = time.perf_counter()
            connection.request("POST", path, pngs[i % len(pngs)], {"Content-Type": "image/png"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status} {body[:200]!r}")
            if i >= 20:
                times[path].append((time.perf_counter() - started) * 1000)
    return {path: percentiles(ms) for path, ms in times.items()}


def time_page(port: int, answers: int) -> dict[str, float] | None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        print("no Chromium: the page's own time is not measured")
        return None
    with opened(f"http://127.0.0.1:{port}", 1366, 900, DRAWING_READY) as page:
        page.evaluate("""() => { window.times = [];
            new MutationObserver(() => window.times.push(Number(document.body.dataset.answerMs)))
              .observe(document.body, {attributes: true, attributeFilter: ["data-answer-ms"]}); }""")
        digits = list(STROKES)
        while page.evaluate("window.times.length") < answers:
            draw(page, digits[page.evaluate("window.times.length") % len(digits)], steps=8)
            time.sleep(0.3)
            page.click("#clear")
        times = page.evaluate("window.times")
    return percentiles(times[:answers])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="a run directory or an export")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--page-answers", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    from mnistctl.machine import summary

    port = free_port()
    command = [sys.executable, "-m", "mnistctl", "serve", str(args.source), "--port", str(port), "-q"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server, timeout=120, probe="/metadata")
        result = {
            "source": str(args.source),
            "machine": summary(),
            "http_ms": time_http(port, args.requests),
            "page_ms": time_page(port, args.page_answers) if args.page_answers else None,
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
