"""What a sweep costs and what early stopping saves, measured side by side on this machine.

    python benchmarks/sweeps.py [--runs-dir runs/sweeps/bench]   # about 20 minutes on 2 cores

1. Ray's start-up on this machine (a fresh process: ``start_ray`` then shutdown).
2. Throughput: one conv_dropout run on every core, against two identical 1-core trials side by
   side in a sweep (images/s of the training steps, from each run's own record), and the
   sweep's whole-command time beside the trials' own time (the per-trial overhead).
3. configs/sweeps/conv_dropout_lr_dropout.yaml as written (ASHA, 2 trials at a time, 1 core
   each) against the same 12 trials one by one on 2 cores without early stopping: wall time,
   and the best trial's validation and test accuracy in each.

Prints a summary and writes it to benchmarks/sweeps.json; docs/SWEEPS.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "configs" / "sweeps" / "conv_dropout_lr_dropout.yaml"
CONV_DROPOUT = ROOT / "configs" / "conv_dropout.yaml"
THROUGHPUT = ["--set", "train.steps=1500", "--set", "train.eval_every=1500", "--set", "data.test_size=1000"]


def mnistctl(*args: str, log: Path | None = None) -> float:
    """Run a mnistctl command in a fresh process; its whole wall time in seconds. With ``log``,
    what it printed is kept there."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mnistctl", *args], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"mnistctl {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    if log is not None:
        log.write_text(result.stderr + result.stdout)
    return time.perf_counter() - started


def ray_startup() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from mnistctl.many.engine import start_ray; start_ray(None)\n"
        "print(time.perf_counter() - t)\n"
        "import ray; ray.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def records(sweep_dir: Path) -> list[dict]:
    from mnistctl.run.listing import find_runs

    return [run.record for run in find_runs([sweep_dir])]


def best_trial(sweep_dir: Path) -> dict:
    from mnistctl.many.trials import trial_rows

    best = trial_rows(sweep_dir)[0]
    return {k: best[k] for k in ("trial", "validation_accuracy", "final_test_accuracy", "steps")} | {
        "parameters": {k: v for k, v in best.items() if "." in k}
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "sweeps" / "bench")
    args = parser.parse_args()
    from mnistctl.machine import summary as machine_summary
    from mnistctl.run.listing import find_runs

    stamp = time.strftime("%Y%m%dT%H%M%S")
    runs = args.runs_dir / stamp
    out: dict = {"machine": machine_summary(), "started": stamp}

    out["ray_startup_s"] = [round(ray_startup(), 2) for _ in range(3)]
    print(f"Ray start-up: {out['ray_startup_s']} s", flush=True)

    whole_s = mnistctl("train", str(CONV_DROPOUT), *THROUGHPUT, "--runs-dir", str(runs / "alone"), "-q")
    (alone,) = find_runs([runs / "alone"])
    sweep_s = mnistctl("sweep", str(CONV_DROPOUT), "--grid", "description=a,b", *THROUGHPUT,
                       "--runs-dir", str(runs), "--name", "side-by-side", "-q")  # fmt: skip
    pair = records(runs / "side-by-side")
    out["throughput"] = {
        "one_run_on_2_cores_images_per_s": alone.record.timing.images_per_s,
        "one_run_command_s": round(whole_s, 1),
        "one_run_wall_s": round(alone.record.wall_s, 1),
        "two_trials_on_1_core_each_images_per_s": [r.timing.images_per_s for r in pair],
        "two_trials_total_images_per_s": round(sum(r.timing.images_per_s for r in pair), 1),
        "sweep_command_s": round(sweep_s, 1),
        "trials_wall_s": [round(r.wall_s, 1) for r in pair],
    }
    print(json.dumps(out["throughput"], indent=2), flush=True)

    asha_s = mnistctl("sweep", str(SWEEP), "--runs-dir", str(runs), "--name", "asha", log=runs / "asha.log")
    spec = yaml.safe_load(SWEEP.read_text())
    spec.update(
        scheduler=None, resources={"cpus_per_trial": 2}, max_concurrent=1, base=str(ROOT / spec["base"])
    )
    sequential_file = runs / "sequential.yaml"
    sequential_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    sequential_s = mnistctl(
        "sweep", str(sequential_file), "--runs-dir", str(runs), "--name", "sequential", "-q"
    )
    out["lr_dropout_sweep"] = {
        "asha_2_at_a_time_s": round(asha_s, 1),
        "asha_trials_stopped_early": sum(r.status.value == "stopped" for r in records(runs / "asha")),
        "asha_steps_trained": sum(r.steps_done for r in records(runs / "asha")),
        "asha_best": best_trial(runs / "asha"),
        "one_by_one_without_early_stopping_s": round(sequential_s, 1),
        "one_by_one_steps_trained": sum(r.steps_done for r in records(runs / "sequential")),
        "one_by_one_best": best_trial(runs / "sequential"),
        "speed_up": round(sequential_s / asha_s, 2),
    }
    print(json.dumps(out["lr_dropout_sweep"], indent=2), flush=True)
    mnistctl("plot", str(runs / "asha"), "--out", str(ROOT / "docs" / "sweep_conv_dropout.png"))
    (ROOT / "benchmarks" / "sweeps.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote benchmarks/sweeps.json and docs/sweep_conv_dropout.png (runs in {runs})")


if __name__ == "__main__":
    main()
