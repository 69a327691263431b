"""The live page's pictures in docs/: `mnistctl watch PATH` opened in headless Chromium.

    python docs/screenshots.py RUN_DIR --out docs/live_1920.png                  # a run (training or not)
    python docs/screenshots.py RUN_DIR --out docs/live_720.png --size 1280x720   # a smaller screen
    python docs/screenshots.py FOLDER --out docs/live_folder.png                 # a sweep or a folder of runs
    python docs/screenshots.py runs/lesson-quick --out docs/live_lesson.png      # a lesson
    python docs/screenshots.py RUN_DIR --out docs/live_weights.png --keys 8      # the talk's keys first
    python docs/screenshots.py --url http://127.0.0.1:8502 --out shot.png        # a page already served
    python docs/screenshots.py --serve RUN_DIR --draw 4 --click 2:7 --out docs/draw_inside.png
        # serve's drawing page: a 4 drawn with the mouse, then layer 2's feature map 7 clicked

Needs Debian's chromium and Playwright (what `make check` installs for the browser tests). The
page is served on 127.0.0.1 by a `watch` (or `serve`) process of its own, closed with the picture.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60, probe: str = "/api/runs") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"mnistctl exited with {process.returncode}")
        try:
            urllib.request.urlopen(url + probe, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def opened(url: str, width: int, height: int, ready: str) -> Iterator[Any]:
    """The page at ``url`` in headless Chromium, once the JavaScript ``ready`` is true."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url + "/")
            page.wait_for_function(ready, timeout=60000)
            yield page
        finally:
            browser.close()


def shoot(url: str, out: Path, width: int, height: int, keys: str = "", hover: str | None = None) -> None:
    """A screenshot of the page at ``url`` once it has drawn twice (every panel has its data)."""
    with opened(url, width, height, "Number(document.body.dataset.drawn || 0) >= 2") as page:
        for key in keys:
            page.keyboard.press("Space" if key == " " else key)
        if hover:  # a folder view: the mouse over the named run's line
            x, y = page.evaluate(f"window.pointOf({hover!r})")
            page.mouse.move(x, y)
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))


# Pen strokes of a few digits on the 280x280 drawing pad, as someone would draw them.
STROKES = {
    "2": [[(80, 95), (100, 62), (140, 50), (180, 62), (195, 98), (182, 135), (148, 172), (102, 214),
           (82, 236), (140, 233), (212, 232)]],
    "3": [[(80, 72), (130, 50), (180, 66), (186, 106), (140, 136)],
          [(140, 136), (192, 160), (192, 206), (142, 236), (80, 222)]],
    "4": [[(168, 48), (84, 172), (214, 172)], [(168, 48), (168, 240)]],
    "7": [[(70, 62), (210, 62), (172, 130), (142, 190), (124, 242)]],
}  # fmt: skip


DRAWING_READY = "document.body.dataset.ready === '1'"  # serve's page has its model's layers


def draw(page: Any, digit: str, steps: int = 6) -> None:
    """Draw ``digit`` on serve's pad with the mouse, stroke by stroke."""
    box = page.locator("#pad").bounding_box()
    scale = box["width"] / 280
    for stroke in STROKES[digit]:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=steps)
        page.mouse.up()


def shoot_drawing(url: str, out: Path, width: int, height: int, digit: str, click: str | None) -> None:
    """A screenshot of serve's drawing page with ``digit`` drawn and, with ``click`` ("LAYER:MAP",
    counted from 1 as the page shows them), one feature map explained."""
    with opened(url, width, height, DRAWING_READY) as page:
        draw(page, digit)
        time.sleep(1.0)  # the last answer in
        if click:
            layer, channel = (int(v) - 1 for v in click.split(":"))
            page.locator(f'.layer[data-layer="{layer}"] .cell').nth(channel).click()
        time.sleep(0.5)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, nargs="?", help="a run, a lesson, a sweep or a folder of runs")
    parser.add_argument("--url", help="a page already served (then no PATH)")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--size", default="1920x1080", help="the window, WIDTHxHEIGHT (default 1920x1080)")
    parser.add_argument("--keys", default="", help="keys to press first, e.g. 7 (accuracy and loss alone)")
    parser.add_argument("--hover", metavar="RUN", help="a folder view: hover over this run's line")
    parser.add_argument(
        "--serve", metavar="SOURCE", type=Path, help="serve's drawing page of SOURCE (then no PATH)"
    )
    parser.add_argument(
        "--draw", default="4", choices=sorted(STROKES), help="with --serve: the digit to draw"
    )
    parser.add_argument(
        "--click", metavar="LAYER:MAP", help="with --serve: the feature map to explain, e.g. 2:7"
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.serve:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "mnistctl", "serve", str(args.serve), "--port", str(port), "-q"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_until_up(url, process, probe="/metadata")
            shoot_drawing(url, args.out, width, height, args.draw, args.click)
        finally:
            process.terminate()
            process.wait(timeout=10)
        print(f"wrote {args.out}")
        return
    if args.url:
        shoot(args.url.rstrip("/"), args.out, width, height, args.keys, args.hover)
        print(f"wrote {args.out}")
        return
    if args.path is None:
        parser.error("give a PATH to watch, or --url")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistctl", "watch", str(args.path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until_up(url, process)
        shoot(url, args.out, width, height, args.keys, args.hover)
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
