"""Does watching slow the training? images/s with and without the live page open.

    python benchmarks/live_overhead.py [--steps 1500] [--repeats 2]   # about 3 minutes on 2 cores

The same conv_dropout run (1,500 steps, evaluations every 100) trained plainly and with
``--live``, a client asking the page's API for the run's state every second as the page does
(rows, bands and, at each new evaluation, the digit panels). Runs alternate; the images/s of
the training steps come from each run's own record. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistctl.machine import summary as machine_summary  # noqa: E402

CONFIG = ROOT / "configs" / "conv_dropout.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_client(port: int, stop: threading.Event, polls: list[int]) -> None:
    """Ask as the page does: every second, what changed since the last answer."""
    rows, step, name = 0, -1, None
    while not stop.is_set():
        try:
            if name is None:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=5) as r:
                    name = json.loads(r.read())["runs"][0]["name"]
            url = f"http://127.0.0.1:{port}/api/runs/{name}?rows={rows}&step={step}"
            with urllib.request.urlopen(url, timeout=5) as r:
                state = json.loads(r.read())
            rows = state["from_row"] + len(state["rows"])
            step = state["digits"]["step"] if state["digits"] else step
            polls.append(rows)
        except OSError:
            pass  # the page is not up yet, or has gone with the training
        stop.wait(1.0)


def train(runs: Path, steps: int, live: bool) -> tuple[float, int]:
    command = [sys.executable, "-m", "mnistctl", "train", str(CONFIG), "--runs-dir", str(runs), "--quiet",
               "--set", f"train.steps={steps}"]  # fmt: skip
    polls: list[int] = []
    stop = threading.Event()
    client = None
    if live:
        port = free_port()
        command += ["--live", "--port", str(port)]
        client = threading.Thread(target=page_client, args=(port, stop, polls))
        client.start()
    before = set(runs.iterdir()) if runs.exists() else set()
    subprocess.run(command, check=True, capture_output=True)
    stop.set()
    if client is not None:
        client.join()
    (run,) = set(runs.iterdir()) - before
    record = json.loads((run / "run.json").read_text())
    return record["timing"]["images_per_s"], len(polls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "live_overhead.json")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"plain": [], "live": []}
    polls = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for _ in range(args.repeats):
            rates["plain"].append(train(runs, args.steps, live=False)[0])
            rate, count = train(runs, args.steps, live=True)
            rates["live"].append(rate)
            polls.append(count)
    result = {
        "steps": args.steps,
        "images_per_s": rates,
        "median_images_per_s": {k: round(statistics.median(v)) for k, v in rates.items()},
        "live_over_plain": round(statistics.median(rates["live"]) / statistics.median(rates["plain"]), 3),
        "page_polls_per_live_run": polls,
        "machine": machine_summary(),
        "measured": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
