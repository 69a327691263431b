"""A whole `mnistctl train` against a minimal hand-written program doing the same work.

    python benchmarks/end_to_end.py [--repeats 3] [--steps 10000]   # about 16 minutes on 2 cores

Both train the walk-through's conv_dropout (conv 6x6x6 s1, 5x5x12 s2, 4x4x24 s2, dense 200 with
dropout 0.25; Adam; learning rate 0.0001 + 0.003 e^(-step/2000); batches of 100) and evaluate on
all 10,000 test images every 100 steps and at the end, each as a whole process from a cold start
(Python, TensorFlow's import, the data, the graph, the steps, the evaluations, and whatever
the program writes). The hand-written program is what a person would write from the
walk-through: tf.compat.v1, feed_dict, one batch of all test images per evaluation, a print per
evaluation and nothing written to disk. mnistctl writes its whole run directory (metrics,
checkpoints, TensorBoard events, distributions, predictions, the evaluation log).

Runs alternate (hand-written, mnistctl, hand-written, ...); the medians and their ratio go to
benchmarks/end_to_end.json. Numbers compare only within one run of this script: the machine
may differ from one sitting to the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistctl.machine import summary as machine_summary  # noqa: E402

CONFIG = ROOT / "configs" / "conv_dropout.yaml"


def handwritten(steps: int) -> None:
    """The minimal program (run in its own process by ``main``)."""
    import numpy as np

    from mnistctl._tf import tf
    from mnistctl.dataset import load_dataset

    v1 = tf.compat.v1
    data = load_dataset("mnist")
    train_x = data.train_images.astype(np.float32)[..., None] / 255.0
    train_y = data.train_labels.astype(np.int64)
    test_x = data.test_images.astype(np.float32)[..., None] / 255.0
    test_y = data.test_labels.astype(np.int64)

    x = v1.placeholder(tf.float32, [None, 28, 28, 1])
    y_ = v1.placeholder(tf.int64, [None])
    rate = v1.placeholder_with_default(0.0, [])
    step_ = v1.placeholder(tf.float32, [])

    def weight(shape):
        return tf.Variable(v1.truncated_normal(shape, stddev=0.1))

    def bias(n):
        return tf.Variable(tf.fill([n], 0.1))

    y = tf.nn.relu(tf.nn.conv2d(x, weight([6, 6, 1, 6]), 1, "SAME") + bias(6))
    y = tf.nn.relu(tf.nn.conv2d(y, weight([5, 5, 6, 12]), 2, "SAME") + bias(12))
    y = tf.nn.relu(tf.nn.conv2d(y, weight([4, 4, 12, 24]), 2, "SAME") + bias(24))
    y = tf.reshape(y, [-1, 7 * 7 * 24])
    y = tf.nn.dropout(tf.nn.relu(tf.matmul(y, weight([1176, 200])) + bias(200)), rate=rate)
    logits = tf.matmul(y, weight([200, 10])) + tf.Variable(tf.zeros([10]))
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y_, logits=logits))
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y_), tf.float32))
    lr = 0.0001 + 0.003 * tf.exp(-step_ / 2000.0)
    train_op = v1.train.AdamOptimizer(lr).minimize(loss)

    rng = np.random.default_rng(0)
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        for i in range(steps):
            idx = rng.integers(0, len(train_x), 100)
            session.run(train_op, {x: train_x[idx], y_: train_y[idx], rate: 0.25, step_: i})
            if (i + 1) % 100 == 0 or i + 1 == steps:
                a, c = session.run([accuracy, loss], {x: test_x, y_: test_y})
                print(f"{i + 1}: test accuracy {a:.4f} loss {c:.4f}", flush=True)


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "end_to_end.json")
    args = parser.parse_args()
    if args.worker:
        handwritten(args.steps)
        return

    times: dict[str, list[float]] = {"handwritten": [], "mnistctl": []}
    finals: dict[str, list[str]] = {"handwritten": [], "mnistctl": []}
    with tempfile.TemporaryDirectory() as runs:
        for _ in range(args.repeats):
            seconds, text = timed([sys.executable, __file__, "--worker", "--steps", str(args.steps)])
            times["handwritten"].append(seconds)
            finals["handwritten"].append(text.strip().splitlines()[-1])
            command = [sys.executable, "-m", "mnistctl", "train", str(CONFIG), "--runs-dir", runs, "--quiet",
                       "--set", f"train.steps={args.steps}"]  # fmt: skip
            seconds, text = timed(command)
            times["mnistctl"].append(seconds)
            finals["mnistctl"].append(text.strip().splitlines()[0])
    result = {
        "steps": args.steps,
        "repeats": args.repeats,
        "seconds": {k: [round(v, 1) for v in vs] for k, vs in times.items()},
        "median_s": {k: round(statistics.median(vs), 1) for k, vs in times.items()},
        "ratio_mnistctl_over_handwritten": round(
            statistics.median(times["mnistctl"]) / statistics.median(times["handwritten"]), 3
        ),
        "last_lines": finals,
        "machine": machine_summary(),
        "measured": time.strftime("%Y-%m-%d"),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
