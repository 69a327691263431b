"""Load test of `mnistctl serve` on loopback: N concurrent clients for T seconds.

Starts the server on 127.0.0.1 (a free port) for a run directory or an export, sends
single-image TF-Serving-format requests from N client threads with keep-alive connections for T
seconds, and reports requests/s, latency percentiles and errors. Loopback only, bounded in time.

    python benchmarks/load_test.py RUN_DIR|EXPORT_DIR [--clients 32] [--seconds 20] [--json]
    python benchmarks/load_test.py EXPORT_DIR --generator wrk   # wrk (apt-get install wrk) as the client
    python benchmarks/load_test.py EXPORT_DIR --code /tmp/old   # serve with an older checkout's package

The Python clients (threads, one keep-alive connection each) cost the two cores about as much
as the server does; wrk, one C thread on epoll, costs a fraction, so the server's own speed
shows. Compare only numbers taken with the same generator.

With ``--big-uploads N`` it measures memory instead: N uploads of a 4096x4096 RGBA PNG (a digit
drawn small in a large white canvas, about 80 KB compressed and 64 MB decoded) POSTed to
/predict, ``--clients`` at a time, and the server's resident memory when idle, at its peak and
after the uploads.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not become healthy")


def client(port: int, body: bytes, stop_at: float, latencies: list, errors: list) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        try:
            connection.request("POST", "/v1/models/mnist:predict", body, headers)
            response = connection.getresponse()
            payload = response.read()
            ok = response.status == 200 and b"predictions" in payload
        except (OSError, http.client.HTTPException):
            ok = False
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        (latencies if ok else errors).append(time.perf_counter() - started)
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--big-uploads", type=int, default=0, metavar="N")
    parser.add_argument("--max-batch", type=int, help="serve's --max-batch (1: no batching)")
    parser.add_argument("--batch-wait-ms", type=float, help="serve's --batch-wait-ms (default: serve's)")
    parser.add_argument("--generator", choices=["python", "wrk"], default="python")
    parser.add_argument("--workers", type=int, help="serve's --workers (processes)")
    parser.add_argument("--code", type=Path, help="a checkout whose mnistctl package serves (before/after)")
    args = parser.parse_args()
    if not 1 <= args.clients <= 256 or not 0 < args.seconds <= 300:
        parser.error("--clients must be 1-256 and --seconds 0-300")

    port = free_port()
    command = [sys.executable, "-m", "mnistctl", "serve", str(args.source.resolve()), "--port", str(port)]
    if args.max_batch is not None:
        command += ["--max-batch", str(args.max_batch)]
    if args.batch_wait_ms is not None:
        command += ["--batch-wait-ms", str(args.batch_wait_ms)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    # `python -m` puts its working directory first on the path, before the installed package.
    code = (args.code or ROOT).resolve()
    env = {**os.environ, "PYTHONPATH": str(code)}
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=code
    )
    try:
        wait_healthy(port, server)
        if args.big_uploads:
            report(big_uploads(port, server.pid, args.big_uploads, args.clients), args.json)
            return
        rng = np.random.default_rng(0)
        image = rng.random((28, 28, 1)).round(3).tolist()
        body = json.dumps({"instances": [image]}).encode()
        client(port, body, time.monotonic() + 2, [], [])  # warm-up
        if args.generator == "wrk":
            run_wrk(port, body, args.clients, 3)  # every process warmed up at every batch size
            result = run_wrk(port, body, args.clients, args.seconds)
            result.update(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, workers=args.workers)
            result["code"] = str(args.code or ROOT)
            report_load(result, args.json)
            return
        latencies: list[float] = []
        errors: list[float] = []
        stop_at = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=client, args=(port, body, stop_at, latencies, errors))
            for _ in range(args.clients)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    result = {
        "clients": args.clients,
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p90_ms": round(float(np.percentile(ms, 90)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    report_load(result, args.json)


def report_load(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['clients']} clients for {result['seconds']} s: {result['requests']} requests "
        f"({result['requests_per_s']}/s), {result['errors']} errors; latency p50 {result['p50_ms']} ms, "
        f"p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
"""


def run_wrk(port: int, body: bytes, connections: int, seconds: float) -> dict:
    """wrk, one thread, ``connections`` keep-alive connections; its latency distribution."""
    import re
    import shutil
    import tempfile

    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk), or use --generator python")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT % body.decode())
        script.flush()
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
                   "-s", script.name, f"http://127.0.0.1:{port}/v1/models/mnist:predict"]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout

    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
        return round(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit], 2)

    percentiles = {int(p): ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)$", out, re.M)}
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(map(int, socket_errors.groups())) if socket_errors else 0
    return {
        "generator": "wrk",
        "clients": connections,
        "seconds": seconds,
        "requests": requests,
        "errors": errors,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": percentiles[50],
        "p90_ms": percentiles[90],
        "p99_ms": percentiles[99],
        "max_ms": ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def big_png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (4096, 4096), (255, 255, 255, 255))
    ImageDraw.Draw(image).line([(2000, 1800), (2100, 2300)], fill=(0, 0, 0, 255), width=40)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def big_uploads(port: int, pid: int, count: int, concurrency: int) -> dict:
    """POST ``count`` large PNGs, ``concurrency`` at a time, sampling the server's memory."""
    body = big_png()
    time.sleep(1.0)
    idle = rss_mb(pid)
    peak = [idle]
    statuses: list[int] = []
    sending = threading.Event()
    sending.set()

    def sample() -> None:
        while sending.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.05)

    def upload() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        connection.request("POST", "/predict", body, {"Content-Type": "image/png"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
        connection.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    for first in range(0, count, concurrency):
        wave = [threading.Thread(target=upload) for _ in range(min(concurrency, count - first))]
        for t in wave:
            t.start()
        for t in wave:
            t.join()
    elapsed = time.monotonic() - started
    sending.clear()
    sampler.join()
    time.sleep(1.0)
    after = rss_mb(pid)
    return {
        "uploads": count,
        "concurrency": concurrency,
        "png_kb": round(len(body) / 1024),
        "statuses": sorted(set(statuses)),
        "seconds": round(elapsed, 1),
        "idle_mb": round(idle),
        "peak_mb": round(max(peak)),
        "after_mb": round(after),
        "after_over_idle": round(after / idle, 2),
        "peak_over_idle": round(max(peak) / idle, 2),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def report(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        r = result
        print(
            f"{r['uploads']} uploads of a {r['png_kb']} KB 4096x4096 PNG, {r['concurrency']} at a time, "
            f"in {r['seconds']} s (HTTP {r['statuses']}): memory idle {r['idle_mb']} MB, "
            f"peak {r['peak_mb']} MB ({r['peak_over_idle']}x), "
            f"after {r['after_mb']} MB ({r['after_over_idle']}x)"
        )


if __name__ == "__main__":
    main()
