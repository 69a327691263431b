"""Listing many runs: the live page's folder view (``/api/runs``) and ``mnistctl compare`` on a
folder of N copies of a small run, cold (a new process, nothing parsed yet) and warm (the page's
next poll, nothing changed).

    python benchmarks/many_runs.py [--runs 2000] [--old] [--folder /tmp/many-runs]

The copies are of ``tests/data/run-before-redesign`` (20 steps, 3 evaluations); with ``--old``
they keep its run.json as written by an earlier version (no digest of config.yaml, so each
config is read by the guarded pure-Python YAML loader), else each gets the digest that lets
mnistctl read its own config.yaml with libyaml. Prints one line per measurement and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "data" / "run-before-redesign"


def make(folder: Path, runs: int, old: bool) -> None:
    from mnistctl.run.directory import config_digest

    made = sorted(folder.glob("run-*")) if folder.exists() else []
    if len(made) == runs and "seed: 1," in (folder / "run-00001" / "config.yaml").read_text():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(runs):
        run = folder / f"run-{i:05d}"
        shutil.copytree(SOURCE, run)
        # Each copy its own config (its seed), as a sweep's trials have: nothing parsed once
        # serves two runs.
        config = (run / "config.yaml").read_text().replace("seed: 0,", f"seed: {i},")
        (run / "config.yaml").write_text(config)
        if not old:
            record = json.loads((run / "run.json").read_text())
            record["config_sha256"] = config_digest(config)
            (run / "run.json").write_text(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--old", action="store_true", help="Runs without the config digest.")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/many-runs"))
    args = parser.parse_args()
    folder = args.folder / (f"{args.runs}-old" if args.old else str(args.runs))
    make(folder, args.runs, args.old)

    from mnistctl.machine import summary
    from mnistctl.serving.live import create_live_app

    print(f"{args.runs:,} runs ({'without' if args.old else 'with'} the config digest), {summary()}")
    app = create_live_app(folder)
    (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
    for poll in ("cold", "warm", "warm"):
        started = time.perf_counter()
        assert len(listing()["runs"]) == args.runs
        print(f"live page /api/runs, {poll}: {time.perf_counter() - started:.2f} s")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mnistctl", "compare", str(folder), "--format", "csv"],
                   check=True, capture_output=True)  # fmt: skip
    print(f"mnistctl compare (a new process, cold): {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
