"""Time to 99%: mnistctl's speed run against the same model and schedule in Keras and PyTorch.

    python benchmarks/time_to_99.py                  # seeds 0-4 x 6 variants, about 10 minutes
    python benchmarks/time_to_99.py --seeds 0 1 --variants mnistctl mnistctl_fp32

Needs PyTorch for its rows (`pip install torch`; the benchmark's only use of it). Every
measurement is a whole process, started fresh: `mnistctl train speedrun` as a user runs it, and
for Keras 3 and PyTorch a script that loads the same MNIST arrays, builds the same network (read
from configs/speedrun.yaml: two convolutions, a max-pool, a dense layer, batch norm without scale
after each, offsets 0.1, weights from a truncated normal of stddev 0.1, no biases under batch
norm), trains it with Adam on the same one-cycle rate, the same steps of the same batch size of
shuffled images, and evaluates the 10,000 test images once at the end. Batch norm's moving
averages: mnistctl ramps its decay up from 0.1; Keras and PyTorch use a fixed 0.9. Variants
alternate within each seed. The bfloat16 rows run only where bfloat16 takes effect (a CPU with
AVX512_BF16 or AMX, oneDNN on); elsewhere TensorFlow leaves the graph in float32.

*Training s* is the training steps' wall time as each process measures it (mnistctl's
`timing.train_s` in run.json; Keras's `fit`; PyTorch's loop), first step and its graph
preparation included, evaluation excluded. *Whole s* is the process from start to exit,
measured here. *% of ceiling* is the training's FLOPs (forward multiply-adds x 2 x 3 for the
backward pass, from the config's layers) per training second over the machine's own matmul
ceiling in that precision (a 4096x4096 product in TensorFlow, best of 5).

Results accumulate in benchmarks/time_to_99.json per machine kind (the CPU, its vector
extensions, TensorFlow's version) and config: a rerun on the same kind skips what it has (so an
interrupted run continues), and docs/BENCHMARKS.md gets one table per machine kind measured.
"""

from __future__ import annotations

import argparse
import hashlib
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

from bench import matmul_gflops, train_flops_per_image  # noqa: E402

from mnistctl import machine  # noqa: E402
from mnistctl.config import load_config, to_dict  # noqa: E402
from mnistctl.config.shipped import shipped_configs  # noqa: E402
from mnistctl.files import to_json  # noqa: E402

CONFIG = shipped_configs()["speedrun"]
RESULTS = ROOT / "benchmarks" / "time_to_99.json"
DOCS = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- time-to-99:start -->", "<!-- time-to-99:end -->"
VARIANTS = {
    "mnistctl": "mnistctl, bfloat16 (the config)",
    "keras": "Keras 3 `fit`, `mixed_bfloat16`",
    "pytorch": "PyTorch, bfloat16 autocast",
    "mnistctl_fp32": "mnistctl, float32",
    "keras_fp32": "Keras 3 `fit`, float32",
    "pytorch_fp32": "PyTorch, float32",
}
TARGET_EACH, TARGET_MEAN = 0.9900, 0.9910  # every seed, and their mean


def recipe() -> dict:
    """What the Keras and PyTorch programs must match, read from the config itself."""
    exp = load_config(CONFIG)
    conv1, conv2, pool, dense, logits = exp.model.layers
    assert (conv1.tag, conv2.tag, pool.tag, dense.tag, logits.tag) == (
        "conv",
        "conv",
        "maxpool",
        "dense",
        "dense",
    )
    s = exp.schedule
    return {
        "steps": exp.train.steps,
        "batch": exp.train.batch_size,
        "lr0": s.lr0,
        "warmup": s.warmup,
        "schedule_steps": s.steps,
        "start_divisor": s.start_divisor,
        "conv1": (conv1.filters, conv1.kernel, conv1.stride),
        "conv2": (conv2.filters, conv2.kernel, conv2.stride),
        "pool": pool.size,
        "units": dense.units,
    }


def config_sha() -> str:
    return hashlib.sha256(json.dumps(to_dict(load_config(CONFIG)), sort_keys=True).encode()).hexdigest()[:12]


def machine_kind() -> str:
    """The machine as the tables name it: what decides TensorFlow's kernels, and its version."""
    from importlib.metadata import version

    return f"{machine.summary()}; TensorFlow {version('tensorflow')}"


def one_cycle(step: float, r: dict) -> float:
    lr0, warmup = r["lr0"], r["warmup"]
    if step < warmup:
        start = lr0 / r["start_divisor"]
        return start + (lr0 - start) * step / warmup
    done = min(1.0, (step - warmup) / (r["schedule_steps"] - warmup))
    return lr0 * (1 + math.cos(math.pi * done)) / 2


def mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnistctl.dataset import load_dataset

    d = load_dataset("mnist")
    return d.train_images, d.train_labels, d.test_images, d.test_labels


def shuffled_order(n: int, seed: int, r: dict) -> np.ndarray:
    """Enough shuffled epochs for every step, each a fresh permutation."""
    rng = np.random.default_rng(seed)
    images = r["steps"] * r["batch"]
    return np.concatenate([rng.permutation(n) for _ in range(-(-images // n))])[:images]


# -- the workers: one process each ---------------------------------------------------------


def keras_worker(seed: int, bfloat16: bool) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    r = recipe()
    keras.utils.set_random_seed(seed)
    if bfloat16:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = keras.ops.cast(step, "float32")
            lr0, warmup = r["lr0"], r["warmup"]
            start = lr0 / r["start_divisor"]
            warming = start + (lr0 - start) * step / warmup
            done = keras.ops.minimum((step - warmup) / (r["schedule_steps"] - warmup), 1.0)
            cooling = lr0 * (1 + keras.ops.cos(math.pi * done)) / 2
            return keras.ops.where(step < warmup, warming, cooling)

    init = keras.initializers.TruncatedNormal(stddev=0.1)

    def normalised(layer) -> list:
        norm = layers.BatchNormalization(
            momentum=0.9, epsilon=1.001e-5, scale=False, beta_initializer=keras.initializers.Constant(0.1)
        )
        return [layer, norm, layers.ReLU()]

    (f1, k1, s1), (f2, k2, s2) = r["conv1"], r["conv2"]
    net = keras.Sequential([
        keras.Input((28, 28, 1)),
        *normalised(layers.Conv2D(f1, k1, s1, "same", use_bias=False, kernel_initializer=init)),
        *normalised(layers.Conv2D(f2, k2, s2, "same", use_bias=False, kernel_initializer=init)),
        layers.MaxPooling2D(r["pool"]),
        layers.Flatten(),
        *normalised(layers.Dense(r["units"], use_bias=False, kernel_initializer=init)),
        layers.Dense(10, kernel_initializer=init, dtype="float32"),
    ])  # fmt: skip
    net.compile(
        optimizer=keras.optimizers.Adam(OneCycle()),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_x, train_y, test_x, test_y = mnist()
    order = shuffled_order(len(train_x), seed, r)
    x = train_x[order].astype(np.float32)[..., None] / 255.0
    started = time.perf_counter()
    net.fit(x, train_y[order], batch_size=r["batch"], epochs=1, shuffle=False, verbose=0)
    train_s = time.perf_counter() - started
    _, accuracy = net.evaluate(
        test_x.astype(np.float32)[..., None] / 255.0, test_y, batch_size=1000, verbose=0
    )
    return {"train_s": train_s, "test_accuracy": float(accuracy)}


def pytorch_worker(seed: int, bfloat16: bool) -> dict:
    import torch
    from torch import nn

    r = recipe()
    torch.manual_seed(seed)

    def normalised(layer: nn.Module, channels: int, norm: type) -> list[nn.Module]:
        nn.init.trunc_normal_(layer.weight, std=0.1, a=-0.2, b=0.2)
        bn = norm(channels, eps=1.001e-5, momentum=0.1)
        bn.weight.requires_grad_(False)  # no scale, as in mnistctl
        nn.init.constant_(bn.bias, 0.1)
        return [layer, bn, nn.ReLU()]

    (f1, k1, s1), (f2, k2, s2) = r["conv1"], r["conv2"]
    side = 28 // s1 // s2 // r["pool"]
    logits = nn.Linear(r["units"], 10)
    nn.init.trunc_normal_(logits.weight, std=0.1, a=-0.2, b=0.2)
    nn.init.zeros_(logits.bias)
    net = nn.Sequential(
        *normalised(nn.Conv2d(1, f1, k1, s1, padding=(k1 - 1) // 2, bias=False), f1, nn.BatchNorm2d),
        *normalised(nn.Conv2d(f1, f2, k2, s2, padding=(k2 - 1) // 2, bias=False), f2, nn.BatchNorm2d),
        nn.MaxPool2d(r["pool"]),
        nn.Flatten(),
        *normalised(nn.Linear(f2 * side * side, r["units"], bias=False), r["units"], nn.BatchNorm1d),
        logits,
    )
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=one_cycle(0, r))
    loss_fn = nn.CrossEntropyLoss()
    train_x, train_y, test_x, test_y = mnist()
    x = torch.from_numpy(train_x.astype(np.float32)[:, None] / 255.0)
    y = torch.from_numpy(train_y.astype(np.int64))
    order = torch.from_numpy(shuffled_order(len(train_x), seed, r))
    batch = r["batch"]
    net.train()
    started = time.perf_counter()
    for step in range(r["steps"]):
        idx = order[step * batch : (step + 1) * batch]
        for group in optimizer.param_groups:
            group["lr"] = one_cycle(step, r)
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
            command = [sys.executable, "-m", "mnistctl", "train", "speedrun", "--runs-dir", runs_dir,
                       "--set", f"train.seed={seed}", "--set", f"train.precision={precision}"]  # fmt: skip
        else:
            command = [sys.executable, __file__, "--worker", variant, "--seed", str(seed)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=runs_dir)
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


def load_results() -> dict:
    """The accumulated results; a file in the format before machine kinds is started anew."""
    try:
        data = json.loads(RESULTS.read_text())
    except (OSError, json.JSONDecodeError):
        return {"kinds": {}}
    return data if isinstance(data.get("kinds"), dict) else {"kinds": {}}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:
        mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["seed"])
        accuracies = [r["test_accuracy"] for r in mine]
        out.append({
            "variant": variant,
            "seeds": [r["seed"] for r in mine],
            "train_s": statistics.median(r["train_s"] for r in mine),
            "whole_s": statistics.median(r["whole_s"] for r in mine),
            "accuracies": accuracies,
            "mean_accuracy": statistics.fmean(accuracies),
            "all_runs_train_s": [round(r["train_s"], 2) for r in mine],
        })  # fmt: skip
    return out


def markdown(results: dict) -> str:
    r = recipe()
    images = r["steps"] * r["batch"]
    flops = train_flops_per_image(load_config(CONFIG)) * images
    lines = [
        START,
        f"`configs/speedrun.yaml` as it is now ({r['steps']} steps of {r['batch']}, config "
        f"{config_sha()}); `python benchmarks/time_to_99.py`, each variant a fresh process, variants "
        "alternating; medians. *÷ mnistctl*: the variant's median training (or whole-process) time "
        "over mnistctl's in the same precision (above 1, mnistctl is faster). *% of ceiling*: the "
        f"training's FLOPs ({flops / 1e9:.0f} GFLOP in all: the forward pass's multiply-adds x 2 x 3) per "
        "second of training, over this machine's matmul ceiling in that precision. The target: "
        f"every seed at {TARGET_EACH:.4f} or more, their mean at {TARGET_MEAN:.4f} or more.",
    ]
    for kind, entry in results["kinds"].items():
        rows = [row for row in entry["runs"] if row.get("config") == config_sha()]
        if not rows:
            continue
        ceilings = entry.get("ceilings", {})
        lines += [
            "",
            f"**{kind}** (matmul ceiling: "
            + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in ceilings.items())
            + (")" if entry.get("bfloat16") else "; no bfloat16 here, so no bfloat16 rows)"),
            "",
            "| variant | training s (each seed) | whole process s | test accuracy by seed | mean | min "
            "| ÷ mnistctl (training, whole) | % of ceiling |",
            "|---|---|---|---|---|---|---|---|",
        ]
        summary = summarize(rows)
        by_name = {s["variant"]: s for s in summary}
        for s in summary:
            precision = "float32" if s["variant"].endswith("fp32") else "bfloat16"
            mine = by_name.get("mnistctl_fp32" if precision == "float32" else "mnistctl")
            ratio = (
                f"{s['train_s'] / mine['train_s']:.2f}, {s['whole_s'] / mine['whole_s']:.2f}" if mine else "-"
            )
            ceiling = ceilings.get(precision)
            share = f"{100 * flops / s['train_s'] / (ceiling * 1e9):.0f}%" if ceiling else "-"
            lines.append(
                f"| {VARIANTS[s['variant']]} "
                f"| {s['train_s']:.2f} ({', '.join(map(str, s['all_runs_train_s']))}) "
                f"| {s['whole_s']:.1f} | {', '.join(f'{a:.4f}' for a in s['accuracies'])} "
                f"| {s['mean_accuracy']:.4f} | {min(s['accuracies']):.4f} | {ratio} | {share} |"
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument(
        "--worker", choices=["keras", "keras_fp32", "pytorch", "pytorch_fp32"], help=argparse.SUPPRESS
    )
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true", help="print the table; leave docs/ as it is")
    parser.add_argument("--docs-only", action="store_true", help="rewrite the docs' tables from the results")
    args = parser.parse_args()
    if args.worker:
        bfloat16 = not args.worker.endswith("fp32")
        run = keras_worker if args.worker.startswith("keras") else pytorch_worker
        print(json.dumps(run(args.seed, bfloat16)))
        return
    results = load_results()
    if not args.docs_only:
        kind, sha = machine_kind(), config_sha()
        entry = results["kinds"].setdefault(kind, {"runs": [], "ceilings": {}})
        entry["bfloat16"] = machine.bfloat16_takes_effect()
        variants = [v for v in args.variants if v.endswith("fp32") or entry["bfloat16"]]
        if len(variants) < len(args.variants):
            print(
                "note: bfloat16 does not take effect on this machine; its rows are left out", file=sys.stderr
            )
        for precision in ("float32", "bfloat16") if entry["bfloat16"] else ("float32",):
            entry["ceilings"].setdefault(precision, round(matmul_gflops(precision), 1))
        done = {(row["variant"], row["seed"]) for row in entry["runs"] if row.get("config") == sha}
        for seed in args.seeds:
            for variant in variants:
                if (variant, seed) in done:
                    continue
                row = {**measure(variant, seed), "config": sha}
                entry["runs"].append(row)
                RESULTS.write_text(to_json(results, indent=1) + "\n")  # after each: resumable
                print(json.dumps(row), flush=True)
    section = markdown(results)
    print(section)
    if not args.no_docs:
        write_docs(section)


if __name__ == "__main__":
    main()
