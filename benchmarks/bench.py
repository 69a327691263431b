"""Training throughput of mnistctl against the usual alternatives, side by side, on one machine.

    python benchmarks/bench.py                  # full run: writes docs/BENCHMARKS.md (training
                                                # section) and benchmarks/results.csv
    python benchmarks/bench.py --quick          # a smoke run with few steps (for tests)

Each measurement runs in a fresh process (so peak memory is per variant), after a warm-up;
variants are interleaved over the repetitions and the median is reported. The models are the
same everywhere: conv_dropout (conv 6x6x6 s1, 5x5x12 s2, 4x4x24 s2, dense 200, dropout 0.25)
and five_layers_relu (dense 200-100-60-30-10), Adam, batch 100, on the real MNIST.

Variants: mnistctl's own loop (`mnistctl.run.experiment.run_experiment`); a minimal hand-written tf.compat.v1
loop fed by feed_dict; the same fed by tf.data; Keras 3 `model.fit`; PyTorch, if installed.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from mnistctl.config import Experiment
from mnistctl.machine import cpu_has_bfloat16, cpu_model
from mnistctl.machine import summary as machine_summary

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "conv_dropout": ROOT / "configs" / "conv_dropout.yaml",
    "five_layers_relu": ROOT / "configs" / "five_layers_relu.yaml",
}
VARIANTS = (
    "mnistctl",
    "tf1_feed_dict",
    "tf1_tf_data",
    "keras_fit",
    "pytorch",
    "mnistctl_bf16",
    "keras_fit_bf16",
)
BF16_VARIANTS = ("mnistctl_bf16", "keras_fit_bf16")  # only on CPUs with AVX512_BF16 or AMX
BATCH = 100


# -- what each variant runs (in its own process) -------------------------------------------


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnistctl.dataset import load_dataset

    d = load_dataset("mnist")
    return d.train_images, d.train_labels, d.test_images, d.test_labels


def run_mnistctl(
    model: str, steps: int, warmup: int, batch: int = BATCH, precision: str = "float32"
) -> float:
    """mnistctl's real training loop, through ``run_experiment`` as ``mnistctl train`` runs it,
    with the default hooks replaced by a timer (no evaluation inside the timed steps)."""
    import tempfile

    from mnistctl.config import load_config
    from mnistctl.run.experiment import run_experiment
    from mnistctl.train.events import Hook

    class Timer(Hook):
        """The training steps' time after the warm-up (the loop's own account, ctx.steps_s)."""

        def after_step(self, ctx) -> None:
            if ctx.step == warmup:
                self.warm_s = ctx.steps_s

        def end(self, ctx, status) -> None:
            self.timed_s = ctx.steps_s - self.warm_s

    total = warmup + steps
    settings = [f"train.steps={total}", f"train.eval_every={total}", "data.test_size=1000"]
    exp = load_config(MODELS[model], [*settings, f"train.batch_size={batch}", f"train.precision={precision}"])
    assert exp.train.batch_size == batch
    timer = Timer()
    with tempfile.TemporaryDirectory() as runs_dir:
        run_experiment(exp, runs_dir=Path(runs_dir), build_hooks=lambda run, exp, g: [timer])
    return steps * batch / timer.timed_s


def _tf1_model(tf, x, model: str, training):
    """The identical model, written out by hand in tf.compat.v1."""
    v1 = tf.compat.v1

    def weight(shape):
        return tf.Variable(v1.truncated_normal(shape, stddev=0.1))

    def bias(n, value=0.1):
        return tf.Variable(tf.fill([n], value))

    if model == "conv_dropout":
        y = tf.nn.relu(tf.nn.conv2d(x, weight([6, 6, 1, 6]), 1, "SAME") + bias(6))
        y = tf.nn.relu(tf.nn.conv2d(y, weight([5, 5, 6, 12]), 2, "SAME") + bias(12))
        y = tf.nn.relu(tf.nn.conv2d(y, weight([4, 4, 12, 24]), 2, "SAME") + bias(24))
        y = tf.reshape(y, [-1, 7 * 7 * 24])
        y = tf.nn.relu(tf.matmul(y, weight([1176, 200])) + bias(200))
        y = tf.nn.dropout(y, rate=tf.where(training, 0.25, 0.0))
        return tf.matmul(y, weight([200, 10])) + bias(10, 0.0)
    y = tf.reshape(x, [-1, 784])
    for fan_in, fan_out in ((784, 200), (200, 100), (100, 60), (60, 30)):
        y = tf.nn.relu(tf.matmul(y, weight([fan_in, fan_out])) + bias(fan_out))
    return tf.matmul(y, weight([30, 10])) + bias(10, 0.0)


def run_tf1(model: str, steps: int, warmup: int, pipeline: str) -> float:
    from mnistctl._tf import tf

    v1 = tf.compat.v1
    train_x, train_y, _, _ = load_mnist()
    graph = tf.Graph()
    with graph.as_default():
        training = v1.placeholder_with_default(False, [])
        if pipeline == "feed_dict":
            images = v1.placeholder(tf.float32, [None, 28, 28, 1])
            labels = v1.placeholder(tf.int64, [None])
        else:
            dataset = tf.data.Dataset.from_tensor_slices((train_x, train_y.astype(np.int64)))
            dataset = dataset.shuffle(60000, seed=0).repeat().batch(BATCH)
            dataset = dataset.map(lambda a, b: (tf.cast(a, tf.float32)[..., None] / 255.0, b)).prefetch(4)
            images, labels = v1.data.make_one_shot_iterator(dataset).get_next()
        logits = _tf1_model(tf, images, model, training)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train_op = v1.train.AdamOptimizer(0.003).minimize(loss)
        init = v1.global_variables_initializer()
    rng = np.random.default_rng(0)
    x = train_x.astype(np.float32)[..., None] / 255.0
    y = train_y.astype(np.int64)
    with v1.Session(graph=graph) as session:
        session.run(init)

        def step() -> None:
            if pipeline == "feed_dict":
                idx = rng.integers(0, len(x), BATCH)
                session.run(train_op, {images: x[idx], labels: y[idx], training: True})
            else:
                session.run(train_op, {training: True})

        for _ in range(warmup):
            step()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * BATCH / (time.perf_counter() - started)


def run_keras(model: str, steps: int, warmup: int, precision: str = "float32") -> float:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    if precision == "bfloat16":  # Keras's own mixed precision: bfloat16 compute, float32 variables
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    train_x, train_y, _, _ = load_mnist()
    x = train_x.astype(np.float32)[..., None] / 255.0
    init = keras.initializers.TruncatedNormal(stddev=0.1)
    bias = keras.initializers.Constant(0.1)
    if model == "conv_dropout":
        stack = [
            layers.Conv2D(6, 6, 1, "same", activation="relu", kernel_initializer=init, bias_initializer=bias),
            layers.Conv2D(
                12, 5, 2, "same", activation="relu", kernel_initializer=init, bias_initializer=bias
            ),
            layers.Conv2D(
                24, 4, 2, "same", activation="relu", kernel_initializer=init, bias_initializer=bias
            ),
            layers.Flatten(),
            layers.Dense(200, activation="relu", kernel_initializer=init, bias_initializer=bias),
            layers.Dropout(0.25),
        ]
    else:
        stack = [layers.Flatten()] + [
            layers.Dense(n, activation="relu", kernel_initializer=init, bias_initializer=bias)
            for n in (200, 100, 60, 30)
        ]
    logits = layers.Dense(10, kernel_initializer=init, dtype="float32")  # float32 logits for the loss
    net = keras.Sequential([keras.Input((28, 28, 1)), *stack, logits])
    net.compile(
        optimizer=keras.optimizers.Adam(0.003),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    count = (warmup + steps) * BATCH
    net.fit(x[: warmup * BATCH], train_y[: warmup * BATCH], batch_size=BATCH, epochs=1, verbose=0)
    reps = -(-count // len(x))
    xs, ys = np.concatenate([x] * reps)[: steps * BATCH], np.concatenate([train_y] * reps)[: steps * BATCH]
    started = time.perf_counter()
    net.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
    return steps * BATCH / (time.perf_counter() - started)


def run_pytorch(model: str, steps: int, warmup: int) -> float:
    import torch
    from torch import nn

    train_x, train_y, _, _ = load_mnist()
    x = torch.from_numpy(train_x.astype(np.float32)[:, None] / 255.0)
    y = torch.from_numpy(train_y.astype(np.int64))
    if model == "conv_dropout":
        net = nn.Sequential(
            nn.Conv2d(1, 6, 6, 1, padding="same"), nn.ReLU(),
            nn.Conv2d(6, 12, 5, 2, padding=2), nn.ReLU(),
            nn.Conv2d(12, 24, 4, 2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(1176, 200), nn.ReLU(), nn.Dropout(0.25), nn.Linear(200, 10),
        )  # fmt: skip
    else:
        sizes = (784, 200, 100, 60, 30)
        dense = [m for a, b in itertools.pairwise(sizes) for m in (nn.Linear(a, b), nn.ReLU())]
        net = nn.Sequential(nn.Flatten(), *dense, nn.Linear(30, 10))
    optimizer = torch.optim.Adam(net.parameters(), 0.003)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(x), (BATCH,), generator=generator)
        optimizer.zero_grad()
        loss_fn(net(x[idx]), y[idx]).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - started)


def worker(variant: str, model: str, steps: int, warmup: int, batch: int = BATCH) -> None:
    """One measurement; prints one JSON line."""
    runners = {
        "mnistctl": lambda: run_mnistctl(model, steps, warmup, batch),
        "mnistctl_bf16": lambda: run_mnistctl(model, steps, warmup, batch, "bfloat16"),
        "tf1_feed_dict": lambda: run_tf1(model, steps, warmup, "feed_dict"),
        "tf1_tf_data": lambda: run_tf1(model, steps, warmup, "tf_data"),
        "keras_fit": lambda: run_keras(model, steps, warmup),
        "keras_fit_bf16": lambda: run_keras(model, steps, warmup, "bfloat16"),
        "pytorch": lambda: run_pytorch(model, steps, warmup),
    }
    images_per_s = runners[variant]()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "model": model, "images_per_s": images_per_s, "peak_rss_mb": rss}))


# -- the side-by-side run -------------------------------------------------------------------


def measure(variant: str, model: str, steps: int, warmup: int, batch: int = BATCH) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        model,
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
    ]
    command += ["--batch", str(batch)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if result.returncode != 0:
        print(f"  {variant} {model}: failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def matmul_gflops(precision: str = "float32") -> float:
    """The machine's matmul ceiling in ``precision``: a 4096x4096 product in TensorFlow, best of 5."""
    cast = "" if precision == "float32" else "a=tf.cast(a,tf.bfloat16)\n"
    code = (
        "import time\nfrom mnistctl._tf import tf\nv1=tf.compat.v1\n"
        f"a=tf.random.normal([4096,4096])\n{cast}c=tf.reduce_sum(tf.cast(tf.matmul(a,a),tf.float32))\n"
        "s=v1.Session();s.run(c)\nbest=1e9\n"
        "for _ in range(5):\n t=time.perf_counter();s.run(c);best=min(best,time.perf_counter()-t)\n"
        "print(2*4096**3/best/1e9)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def train_flops_per_image(model: str | Experiment) -> float:
    """Forward multiply-adds x 2 (FLOPs) x 3 (forward, and backward for inputs and weights)."""
    from mnistctl.config import infer_shapes, load_config

    exp = load_config(MODELS[model]) if isinstance(model, str) else model
    return sum(shape.multiply_adds for shape in infer_shapes(exp.model)) * 2 * 3


def batch_sweep() -> list[dict]:
    """mnistctl's conv_dropout training throughput against the batch size (about 60k images each)."""
    rows = []
    for batch in (32, 64, 128, 256, 512, 1024):
        steps = max(20, 60000 // batch)
        measured = measure("mnistctl", "conv_dropout", steps, max(5, steps // 10), batch)
        if measured:
            rows.append({"batch_size": batch, "images_per_s": round(measured["images_per_s"]),
                         "peak_rss_mb": round(measured["peak_rss_mb"])})  # fmt: skip
            print(f"batch {batch:5d}: {measured['images_per_s']:9,.0f} img/s", flush=True)
    return rows


def available(variant: str) -> bool:
    if variant in BF16_VARIANTS:
        return cpu_has_bfloat16()
    if variant != "pytorch":
        return True
    return (
        subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, check=False).returncode
        == 0
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="mnistctl vs the alternatives: training images/s")
    parser.add_argument("--worker", nargs=2, metavar=("VARIANT", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="few steps, one repetition, no docs")
    parser.add_argument(
        "--sweep-only",
        action="store_true",
        help="only the batch-size sweep; the docs use the saved results.csv",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.csv")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.steps, args.warmup, args.batch)
        return
    if args.sweep_only:
        sweep_and_document(args.out, args.repeats)
        return

    steps = (
        {"conv_dropout": 20, "five_layers_relu": 50}
        if args.quick
        else {"conv_dropout": 600, "five_layers_relu": 3000}
    )
    warmup = 5 if args.quick else 100
    repeats = 1 if args.quick else args.repeats
    variants = [v for v in VARIANTS if available(v)]
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(repeats):  # interleaved: each repetition runs every variant once
        for model in MODELS:
            for variant in variants:
                measured = measure(variant, model, steps[model], warmup)
                if measured:
                    results.setdefault((variant, model), []).append(measured)
                    print(
                        f"rep {rep + 1}: {model:16s} {variant:14s} {measured['images_per_s']:9,.0f} img/s",
                        flush=True,
                    )
    ceiling = matmul_gflops()
    rows = []
    for model in MODELS:
        for variant in variants:
            runs = results.get((variant, model))
            if not runs:
                continue
            own = "mnistctl_bf16" if variant in BF16_VARIANTS else "mnistctl"  # same precision
            base = statistics.median(
                r["images_per_s"] for r in results.get((own, model), [{"images_per_s": 0}])
            )
            median = statistics.median(r["images_per_s"] for r in runs)
            rows.append(
                {
                    "model": model,
                    "variant": variant,
                    "images_per_s": round(median),
                    "runs": ";".join(f"{r['images_per_s']:.0f}" for r in runs),
                    "ratio_mnistctl_to_this": round(base / median, 2) if median else "",
                    "percent_of_matmul_ceiling": round(
                        100 * median * train_flops_per_image(model) / (ceiling * 1e9), 1
                    ),
                    "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs)),
                }
            )
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "summary": machine_summary(),
        "matmul_gflops": round(ceiling),
        "python": platform.python_version(),
    }
    print(json.dumps(machine))
    for row in rows:
        print(row)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:  # saved before the (long) batch sweep
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        (ROOT / "benchmarks" / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
        sweep_and_document(args.out, repeats)


def sweep_and_document(results: Path, repeats: int) -> None:
    """Run the batch-size sweep, then write docs/BENCHMARKS.md from the saved results."""
    sweep = batch_sweep()
    with (ROOT / "benchmarks" / "batch_sizes.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(sweep[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(sweep)
    with results.open(newline="") as f:
        rows = [
            {k: int(v) if k in ("images_per_s", "peak_rss_mb") else v for k, v in r.items()}
            for r in csv.DictReader(f)
        ]
    machine = json.loads((ROOT / "benchmarks" / "machine.json").read_text())
    write_docs(rows, sweep, machine, repeats)


START, END = "<!-- training:start -->", "<!-- training:end -->"
NAMES = {
    "mnistctl": "mnistctl (`fit`)",
    "tf1_feed_dict": "hand-written tf.compat.v1, feed_dict",
    "tf1_tf_data": "hand-written tf.compat.v1, tf.data",
    "keras_fit": "Keras 3 `model.fit`",
    "pytorch": "PyTorch",
    "mnistctl_bf16": "mnistctl, `train.precision: bfloat16`",
    "keras_fit_bf16": "Keras 3 `model.fit`, `mixed_bfloat16` policy",
}


def write_docs(rows: list[dict], sweep: list[dict], machine: dict, repeats: int) -> None:
    """Replace the training section of docs/BENCHMARKS.md with this run's tables."""
    lines = [
        START,
        "## Training: mnistctl against the alternatives",
        "",
        "```sh",
        "python benchmarks/bench.py   # about 10 minutes; writes this section and benchmarks/*.csv",
        "```",
        "",
        f"Machine: {machine.get('summary') or '{cpu}, {cores} cores'.format(**machine)}; "
        "float32 matmul ceiling "
        f"{machine['matmul_gflops']} GFLOP/s (4096x4096, TensorFlow). Training images/s at batch 100, "
        f"median of {repeats} interleaved repetitions, each in a fresh process after a warm-up. "
        "*mnistctl ÷ this* above 1 means mnistctl is faster (bfloat16 rows: against mnistctl in "
        "bfloat16). The bfloat16 rows appear only on CPUs with AVX512_BF16 or AMX.",
        "",
        "| model | variant | images/s | mnistctl ÷ this | % of matmul ceiling | peak memory | all runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {NAMES[row['variant']]} | {row['images_per_s']:,} "
            f"| {row['ratio_mnistctl_to_this']} | {row['percent_of_matmul_ceiling']}% "
            f"| {row['peak_rss_mb']} MB | {row['runs']} |"
        )
    lines += ["", "mnistctl's conv_dropout training throughput against the batch size:", ""]
    lines += ["| batch size | images/s | peak memory |", "|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['images_per_s']:,} | {r['peak_rss_mb']} MB |" for r in sweep]
    lines += ["", END]
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if START in text and END in text:
        text = text[: text.index(START)] + "\n".join(lines) + text[text.index(END) + len(END) :]
    else:
        head, sep, tail = text.partition("\n## ")
        text = head.rstrip() + "\n\n" + "\n".join(lines) + "\n\n" + (sep.lstrip("\n") + tail if sep else "")
    path.write_text(text)


if __name__ == "__main__":
    main()
