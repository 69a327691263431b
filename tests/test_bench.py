"""The benchmark script's measuring process (the full benchmark is a script, not a test)."""

from __future__ import annotations

import pytest


@pytest.mark.plumbing
def test_benchmark_worker_runs_a_variant(mnist_cache):
    """The benchmark's measuring process works (the full benchmark is a script, not a test)."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench.py"),
        "--worker",
        "mnistctl",
        "five_layers_relu",
    ]
    result = subprocess.run(
        [*command, "--steps", "5", "--warmup", "2"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["images_per_s"] > 0 and measured["peak_rss_mb"] > 0
