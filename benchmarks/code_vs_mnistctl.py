"""The script `mnistctl code` writes against mnistctl itself: the same config, steps and seeds,
final test accuracy side by side (docs/CODE.md).

    python benchmarks/code_vs_mnistctl.py [--config configs/tiny.yaml] [--steps 600] [--seeds 5]

Both train on the same batches (the script draws them as mnistctl does); they differ in their
random draws (initial weights, dropout masks), so the table shows how far apart that puts them
beside how far apart mnistctl's own seeds are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    mnistctl = [sys.executable, "-m", "mnistctl"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            sets = ["--set", f"train.steps={args.steps}", "--set", f"train.eval_every={args.steps}",
                    "--set", f"train.seed={seed}"]  # fmt: skip
            script = Path(tmp) / f"seed{seed}.py"
            subprocess.run([*mnistctl, "code", args.config, *sets, "--out", str(script)], check=True,
                           capture_output=True)  # fmt: skip
            printed = subprocess.run(
                [sys.executable, str(script)], check=True, capture_output=True, text=True
            )
            ours = float(printed.stdout.strip().splitlines()[-1].split("test accuracy ")[1].split()[0])
            trained = subprocess.run([*mnistctl, "train", args.config, "--runs-dir", tmp, "--quiet", *sets],
                                     check=True, capture_output=True, text=True)  # fmt: skip
            theirs = float(trained.stdout.split("final test accuracy: ")[1].split()[0])
            rows.append((seed, ours, theirs))
            print(
                f"seed {seed}: script {ours:.4f}  mnistctl {theirs:.4f}  difference {ours - theirs:+.4f}",
                flush=True,
            )
    spread = max(r[2] for r in rows) - min(r[2] for r in rows)
    worst = max(abs(r[1] - r[2]) for r in rows)
    print(
        f"mnistctl's seeds span {spread:.4f}; the script is within {worst:.4f} of mnistctl's run of its seed"
    )


if __name__ == "__main__":
    main()
