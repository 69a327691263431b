"""Time to 99%: mnistctl's speed run against the same model and schedule in Keras and PyTorch.

    python benchmarks/time_to_99.py                  # 3 seeds x 6 variants, about 6 minutes
    python benchmarks/time_to_99.py --seeds 0 1 2 3 4 --variants mnistctl

Needs PyTorch for its rows (`pip install torch`; the benchmark's only use of it). Every
measurement is a whole process, started fresh: `mnistctl train configs/speedrun.yaml` as a user
runs it, and for Keras 3 and PyTorch a script that loads the same MNIST arrays, builds the same
network (conv 4x4x16 s2, conv 3x3x32, max-pool 2, dense 128, batch norm without scale after
each, offsets 0.1, weights from a truncated normal of stddev 0.1, no biases under batch norm),
trains it with Adam on the same one-cycle rate (0.04/25 -> 0.04 over 56 steps, half a cosine to
0 at step 280), 280 steps of 256 shuffled images, and evaluates the 10,000 test images once at
the end. Batch norm's moving averages: mnistctl ramps its decay up from 0.1 (at this length it
stays near 0.97); Keras and PyTorch use a fixed 0.9. Variants alternate within each seed.

*Training s* is the training steps' wall time as each process measures it (mnistctl's
`timing.train_s` in run.json; Keras's `fit`; PyTorch's loop), first step and its graph
preparation included, evaluation excluded. *Whole s* is the process from start to exit,
measured here. Results go to benchmarks/time_to_99.json and docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mnistctl.machine import cpu_has_bfloat16, cpu_model  # noqa: E402

CONFIG = ROOT / "configs" / "speedrun.yaml"
RESULTS = ROOT / "benchmarks" / "time_to_99.json"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- time-to-99:start -->", "<!-- time-to-99:end -->"
STEPS, BATCH, LR0, WARMUP = 280, 256, 0.04, 56
VARIANTS = {
    "mnistctl": "mnistctl, bfloat16 (the config)",
    "keras": "Keras 3 `fit`, `mixed_bfloat16`",
    "pytorch": "PyTorch, bfloat16 autocast",
    "mnistctl_fp32": "mnistctl, float32",
    "keras_fp32": "Keras 3 `fit`, float32",
    "pytorch_fp32": "PyTorch, float32",
}


def one_cycle(step: float) -> float:
    if step < WARMUP:
        start = LR0 / 25
        return start + (LR0 - start) * step / WARMUP
    done = min(1.0, (step - WARMUP) / (STEPS - WARMUP))
    return LR0 * (1 + math.cos(math.pi * done)) / 2


def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnistctl.data import load_dataset

    d = load_dataset("mnist")
    return d.train_images, d.train_labels, d.test_images, d.test_labels


def shuffled_order(n: int, seed: int) -> np.ndarray:
    """Enough shuffled epochs for every step, each a fresh permutation."""
    rng = np.random.default_rng(seed)
    epochs = -(-STEPS * BATCH // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[: STEPS * BATCH]


# -- the workers: one process each ---------------------------------------------------------


def keras_worker(seed: int, bfloat16: bool) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    if bfloat16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            start = LR0 / 25
            warming = start + (LR0 - start) * step / WARMUP
            done = keras.ops.minimum((step - WARMUP) / (STEPS - WARMUP), 1.0)
            cooling = LR0 * (1 + keras.ops.cos(math.pi * done)) / 2
            return keras.ops.where(step < WARMUP, warming, cooling)

    init = keras.initializers.TruncatedNormal(stddev=0.1)

    def normalised(layer) -> list:
        norm = layers.BatchNormalization(
            momentum=0.9, epsilon=1.001e-5, scale=False, beta_initializer=keras.initializers.Constant(0.1)
        )
        return [layer, norm, layers.ReLU()]

    net = keras.Sequential([
        keras.Input((28, 28, 1)),
        *normalised(layers.Conv2D(16, 4, 2, "same", use_bias=False, kernel_initializer=init)),
        *normalised(layers.Conv2D(32, 3, 1, "same", use_bias=False, kernel_initializer=init)),
        layers.MaxPooling2D(2),
        layers.Flatten(),
        *normalised(layers.Dense(128, use_bias=False, kernel_initializer=init)),
        layers.Dense(10, kernel_initializer=init, dtype="float32"),
    ])  # fmt: skip
    net.compile(
        optimizer=keras.optimizers.Adam(OneCycle()),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_x, train_y, test_x, test_y = mnist()
    order = shuffled_order(len(train_x), seed)
    x = train_x[order].astype(np.float32)[..., None] / 255.0
    started = time.perf_counter()
    net.fit(x, train_y[order], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    train_s = time.perf_counter() - started
    _, accuracy = net.evaluate(
        test_x.astype(np.float32)[..., None] / 255.0, test_y, batch_size=1000, verbose=0
    )
    return {"train_s": train_s, "test_accuracy": float(accuracy)}


def pytorch_worker(seed: int, bfloat16: bool) -> dict:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def normalised(layer: nn.Module, channels: int, norm: type) -> list[nn.Module]:
        nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2)
        bn = norm(channels, eps=1.001e-5, momentum=0.1)
        bn.weight.requires_grad_(False)  # no scale, as in mnistctl
        nn.init.constant_(bn.bias, 0.1)
        return [layer, bn, nn.ReLU()]

    logits = nn.Linear(128, 10)
    nn.init.trunc_normal_(logits.weight, std=0.1, a=-0.2, b=0.2)
    nn.init.zeros_(logits.bias)
    net = nn.Sequential(
        *normalised(nn.Conv2d(1, 16, 4, 2, padding=1, bias=False), 16, nn.BatchNorm2d),
        *normalised(nn.Conv2d(16, 32, 3, 1, padding=1, bias=False), 32, nn.BatchNorm2d),
        nn.MaxPool2d(2),
        nn.Flatten(),
        *normalised(nn.Linear(32 * 7 * 7, 128, bias=False), 128, nn.BatchNorm1d),
        logits,
    )
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=one_cycle(0))
    loss_fn = nn.CrossEntropyLoss()
    train_x, train_y, test_x, test_y = mnist()
    x = torch.from_numpy(train_x.astype(np.float32)[:, None] / 255.0)
    y = torch.from_numpy(train_y.astype(np.int64))
    order = torch.from_numpy(shuffled_order(len(train_x), seed))
    net.train()
    started = time.perf_counter()
    for step in range(STEPS):
        idx = order[step * BATCH : (step + 1) * BATCH]
        for group in optimizer.param_groups:
            group["lr"] = one_cycle(step)
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
    train_s = time.perf_counter() - started
    net.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        tx = torch.from_numpy(test_x.astype(np.float32)[:, None] / 255.0)
        predicted = torch.cat([net(tx[i : i + 1000]).argmax(1) for i in range(0, len(tx), 1000)])
    accuracy = (predicted.numpy() == test_y).mean()
    return {"train_s": train_s, "test_accuracy": float(accuracy)}


# -- the driver ----------------------------------------------------------------------------


def measure(variant: str, seed: int) -> dict:
    """One whole process; its wall time measured from here."""
    with tempfile.TemporaryDirectory() as runs_dir:
        if variant.startswith("mnistctl"):
            precision = "float32" if variant.endswith("fp32") else "bfloat16"
            command = [sys.executable, "-m", "mnistctl", "train", str(CONFIG), "--runs-dir", runs_dir,
                       "--set", f"train.seed={seed}", "--set", f"train.precision={precision}"]  # fmt: skip
        else:
            command = [sys.executable, __file__, "--worker", variant, "--seed", str(seed)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
        whole_s = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{variant} seed {seed} failed:\n{done.stderr[-2000:]}")
        if variant.startswith("mnistctl"):
            (run_json,) = Path(runs_dir).glob("*/run.json")
            record = json.loads(run_json.read_text())
            result = {
                "train_s": record["timing"]["train_s"],
                "test_accuracy": record["final"]["test_accuracy"],
            }
        else:
            result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"variant": variant, "seed": seed, "whole_s": round(whole_s, 2), **result}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        accuracies = [r["test_accuracy"] for r in mine]
        out.append({
            "variant": variant,
            "train_s": statistics.median(r["train_s"] for r in mine),
            "whole_s": statistics.median(r["whole_s"] for r in mine),
            "accuracies": accuracies,
            "mean_accuracy": statistics.fmean(accuracies),
            "all_runs_train_s": [round(r["train_s"], 2) for r in mine],
            "all_runs_whole_s": [r["whole_s"] for r in mine],
        })  # fmt: skip
    return out


def markdown(summary: list[dict], machine: str, seeds: list[int]) -> str:
    by_name = {s["variant"]: s for s in summary}
    lines = [
        START,
        f"Machine: {machine}, 2 cores. `python benchmarks/time_to_99.py`: "
        f"seeds {', '.join(map(str, seeds))}, "
        "each variant a fresh process, variants alternating; medians. *÷ mnistctl* is the variant's "
        "median training (or whole-process) time over mnistctl's in the same precision: above 1, "
        "mnistctl is faster.",
        "",
        "| variant | training s | whole process s | test accuracy by seed | mean "
        "| ÷ mnistctl (training, whole) |",
        "|---|---|---|---|---|---|",
    ]
    for s in summary:
        mine = by_name.get("mnistctl_fp32" if s["variant"].endswith("fp32") else "mnistctl")
        ratio = f"{s['train_s'] / mine['train_s']:.2f}, {s['whole_s'] / mine['whole_s']:.2f}" if mine else "-"
        lines.append(
            f"| {VARIANTS[s['variant']]} | {s['train_s']:.2f} ({', '.join(map(str, s['all_runs_train_s']))}) "
            f"| {s['whole_s']:.1f} | {', '.join(f'{a:.4f}' for a in s['accuracies'])} "
            f"| {s['mean_accuracy']:.4f} | {ratio} |"
        )
    lines.append(END)
    return "\n".join(lines)


def write_docs(section: str) -> None:
    text = DOCS.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Time to 99%\n\n" + section + "\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--worker", choices=["keras", "keras_fp32", "pytorch", "pytorch_fp32"], help=argparse.SUPPRESS
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true", help="print the table; leave docs/ as it is")
    args = parser.parse_args()
    if args.worker:
        bfloat16 = not args.worker.endswith("fp32")
        run = keras_worker if args.worker.startswith("keras") else pytorch_worker
        print(json.dumps(run(args.seed, bfloat16)))
        return
    if not cpu_has_bfloat16():
        print("note: this CPU has no bfloat16 instructions; the bfloat16 rows are emulated", file=sys.stderr)
    rows = []
    for seed in args.seeds:
        for variant in args.variants:
            row = measure(variant, seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = summarize(rows)
    machine = cpu_model()
    RESULTS.write_text(
        json.dumps({"machine": machine, "seeds": args.seeds, "runs": rows, "summary": summary}, indent=1)
        + "\n"
    )
    section = markdown(summary, machine, args.seeds)
    print(section)
    if not args.no_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
