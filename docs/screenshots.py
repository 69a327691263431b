"""The live page's pictures in docs/: `mnistctl watch PATH` opened in headless Chromium.

    python docs/screenshots.py RUN_DIR --out docs/live_conv_dropout.png   # a run (training or not)
    python docs/screenshots.py SWEEP_DIR --out docs/live_sweep.png        # a sweep or a folder of runs

Needs Debian's chromium and Playwright (what `make check` installs for the browser tests). The
page is served on 127.0.0.1 by a `watch` process of its own, and closed with the picture.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"mnistctl watch exited with {process.returncode}")
        try:
            urllib.request.urlopen(url + "/api/runs", timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer within {timeout:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("path", type=Path, help="a run directory, a sweep directory or a folder of runs")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--full-page", action="store_true", help="the whole page, not only the window")
    args = parser.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("Chromium is not installed (apt-get install chromium)")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "mnistctl", "watch", str(args.path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_until_up(url, process)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url + "/")
            if (args.path / "run.json").is_file():  # one run: its six panels
                page.wait_for_function("document.querySelectorAll('canvas').length === 6", timeout=30000)
            else:  # a folder: every run's curve and the table of runs
                page.wait_for_selector("tr.run", timeout=30000)
            time.sleep(1.5)  # one more poll, so every panel has its latest data
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=args.full_page)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
