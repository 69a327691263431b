"""Listing many runs: ``mnistctl compare`` (and with ``--live`` the live page's folder view,
``/api/runs``) on folders of N copies of a small run, each with its own seed, cold (no index
yet, nothing parsed) and warm (listed again, nothing changed).

    python benchmarks/many_runs.py [--runs 1000 10000] [--old] [--live] [--folder /tmp/many-runs]

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


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--old", action="store_true", help="Runs without the config digest.")
    parser.add_argument("--live", action="store_true", help="Also the live page's /api/runs.")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/many-runs"))
    args = parser.parse_args()
    from mnistctl.machine import summary
    from mnistctl.run.listing import INDEX_FILE

    print(summary())
    for runs in args.runs:
        folder = args.folder / (f"{runs}-old" if args.old else str(runs))
        make(folder, runs, args.old)
        what = "without" if args.old else "with"
        # compare, a new process each time, as a user runs it: the table a terminal shows
        command = [sys.executable, "-m", "mnistctl", "compare", str(folder)]
        (folder / INDEX_FILE).unlink(missing_ok=True)
        cold = timed(command)
        warm = [timed(command) for _ in range(3)]
        print(f"{runs:,} runs ({what} the config digest): compare cold {cold:.2f} s, "
              f"warm {', '.join(f'{w:.2f}' for w in warm)} s")  # fmt: skip
        if args.live:
            from mnistctl.serving.live import create_live_app

            app = create_live_app(folder)
            (listing,) = [r.endpoint for r in app.routes if getattr(r, "path", "") == "/api/runs"]
            for poll in ("cold", "warm", "warm"):
                started = time.perf_counter()
                assert len(listing()["runs"]) == runs
                print(f"  live page /api/runs, {poll}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
