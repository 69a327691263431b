"""What a sweep costs beyond its trials: 4, 12 and 40 short trials (configs/tiny.yaml, 300 steps
each, a grid over the seed, two at a time on the 2 cores), the whole `mnistctl sweep` command's
wall time against the sum of its trials' own training time (run.json's wall_s) divided by the
concurrency.

    python benchmarks/sweep_overhead.py [--trials 4 12 40] [--code DIR] [--json OUT]

``--code DIR`` runs the sweeps with the mnistctl package of another checkout (DIR/mnistctl), for
a before-and-after on one machine: ``git worktree add /tmp/before <commit>`` then
``--code /tmp/before``. Loopback only; each sweep in a fresh runs folder under /tmp.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONCURRENT = 2


def sweep_file(folder: Path, trials: int) -> Path:
    path = folder / f"seeds{trials}.yaml"
    path.write_text(
        f"base: {ROOT / 'configs' / 'tiny.yaml'}\n"
        "set: {train.steps: 300, train.eval_every: 100, data.validation: 200}\n"
        f"space:\n  train.seed: {{grid: {list(range(trials))}}}\n"
        "search: grid\nmetric: validation_accuracy\nresources: {cpus_per_trial: 1}\n"
    )
    return path


def measure(trials: int, code: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ)
        if code is not None:
            env["PYTHONPATH"] = str(code)
        command = [sys.executable, "-m", "mnistctl", "sweep", str(sweep_file(folder, trials)),
                   "--runs-dir", str(folder / "runs"), "--max-concurrent", str(CONCURRENT), "-q"]  # fmt: skip
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"sweep of {trials} failed:\n{result.stderr[-3000:]}")
        trained = [json.loads(p.read_text())["wall_s"] for p in (folder / "runs").glob("*/trial-*/run.json")]
    assert len(trained) == trials
    ideal = sum(trained) / CONCURRENT
    return {"trials": trials, "wall_s": round(wall, 1), "trials_s": round(sum(trained), 1),
            "trials_per_concurrency_s": round(ideal, 1), "overhead_s": round(wall - ideal, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, nargs="+", default=[4, 12, 40])
    parser.add_argument("--code", type=Path, help="a checkout whose mnistctl package runs the sweeps")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from mnistctl.machine import summary

    print(summary(), f"({'code of ' + str(args.code) if args.code else 'this checkout'})")
    rows = []
    for trials in args.trials:
        row = measure(trials, args.code)
        rows.append(row)
        ideal, beyond = row["trials_per_concurrency_s"], row["overhead_s"]
        print(f"{trials:3d} trials: sweep {row['wall_s']:6.1f} s; trials {row['trials_s']:6.1f} s, "
              f"/ {CONCURRENT} = {ideal:5.1f} s; beyond the trials {beyond:5.1f} s")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps({"machine": summary(), "code": str(args.code or "."), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
