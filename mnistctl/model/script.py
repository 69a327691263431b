"""``mnistctl code``: a config as a standalone ``tf.compat.v1`` script in the talk's style.

Placeholders, the layers written out one per line, the loss, the optimizer and the learning
rate, a ``Session`` and the training loop printing train and test accuracy every
``eval_every`` steps; it needs only TensorFlow and numpy, and reads the MNIST files mnistctl
keeps in its cache. Each layer type, activation, optimizer and schedule writes its own lines
(``LAYER_CODE`` and ``ACTIVATION_CODE`` beside the layer builders, ``OPTIMIZER_CODE`` beside the
optimizers', ``ScheduleConfig.code`` from the schedule's one definition); this module only puts
them in order. What a script of this size does not do (augmentation, weight averaging,
bfloat16, stopping rules, checkpoints) is said in comments at its top.
"""

from __future__ import annotations

from mnistctl import __version__
from mnistctl.config import IMAGE_SHAPE, Experiment, infer_shapes
from mnistctl.config.shipped import PUBLISHED
from mnistctl.data import cache_root, get_spec
from mnistctl.model.graph import OPTIMIZER_CODE
from mnistctl.model.layers import BATCH_NORM_EPSILON, LAYER_CODE, CodeContext

# Helpers a script defines only when one of its layers uses them.
DROPOUT_HELPER = '''

def dropout(y, rate):
    """Drop a share `rate` of the values while training (the rest scaled up to match)."""
    return tf.cond(training, lambda: tf.nn.dropout(y, rate=rate), lambda: y)
'''
BATCHNORM_HELPER = '''

moving_averages = []  # batch norm's updates, run with every training step


def batchnorm(y, offset):
    """Batch statistics while training, their moving averages when testing; the bias is the
    offset, and there is no scale (the next layer's weights absorb one)."""
    mean, variance = tf.nn.moments(y, list(range(len(y.shape) - 1)))
    moving_mean = tf.Variable(tf.zeros(mean.shape), trainable=False)
    moving_variance = tf.Variable(tf.ones(variance.shape), trainable=False)
    t = tf.cast(step, tf.float32)
    decay = tf.minimum(BATCH_NORM_DECAY, (1.0 + t) / (10.0 + t))  # faster at the start
    moving_averages.append(moving_mean.assign(decay * moving_mean + (1 - decay) * mean))
    moving_averages.append(moving_variance.assign(decay * moving_variance + (1 - decay) * variance))
    m, v = tf.cond(training, lambda: (mean, variance), lambda: (moving_mean, moving_variance))
    return tf.nn.batch_normalization(y, m, v, offset, None, EPSILON)
'''


def not_written(exp: Experiment) -> list[str]:
    """What mnistctl would do for ``exp`` that the script leaves out, in words."""
    missing = []
    if exp.data.augment is not None:
        missing.append("data.augment: random rotation, shift and zoom of the training images")
    if exp.model.ema_decay is not None:
        missing.append("model.ema_decay: evaluating with moving averages of the weights")
    if exp.train.precision != "float32":
        missing.append(f"train.precision: {exp.train.precision} (the script computes in float32)")
    if exp.train.stop_at is not None or exp.train.early_stopping is not None:
        missing.append("train.stop_at / train.early_stopping: the script trains every step")
    if exp.data.validation:
        missing.append(f"data.validation: the last {exp.data.validation:,} training images are held out, "
                       "but nothing is chosen by them")  # fmt: skip
    return missing


def write_script(exp: Experiment, source: str) -> str:
    """The script of ``exp`` (``source`` names the config or run it came from)."""
    spec = get_spec(exp.data.dataset)
    shapes = [IMAGE_SHAPE] + [s.output for s in infer_shapes(exp.model)]
    layers = exp.model.layers
    model: list[str] = []
    x = "X"
    for i, layer in enumerate(layers):
        c = CodeContext(i + 1, x, tuple(shapes[i]), exp.model.init, last=i == len(layers) - 1)
        what = layer.describe() + (" (its softmax is in the loss)" if c.last else "")
        model += ["", f"# layer {c.n}: {what}", *LAYER_CODE.get(layer.tag)(layer, c)]
        x = c.out
    uses_dropout = any(getattr(layer, "dropout", 0) > 0 for layer in layers)
    uses_batchnorm = any(layer.normalised for layer in layers)
    train = exp.train
    figure = PUBLISHED.get(exp.name)
    lines = [
        "#!/usr/bin/env python3",
        f'"""{exp.name}: {exp.description or "an mnistctl config"}.',
        "",
        f"Written by `mnistctl code {source}` (mnistctl {__version__}): the same network as",
        "mnistctl trains, in plain TensorFlow 1 style; it needs only TensorFlow and numpy.",
        f"Run it: python {exp.name}.py",
        *([f"The talk reached {figure[1]} with it."] if figure else []),
        '"""',
    ]
    missing = not_written(exp)
    if missing:
        lines += ["", "# Not written here (mnistctl does these; this script does not):"]
        lines += [f"#   {m}" for m in missing]
    lines += [
        "",
        "import gzip",
        "import os",
        "import struct",
        "import sys",
        "",
        "import numpy as np",
        "",
        'os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow\'s start-up chatter off',
        "import tensorflow as tf  # noqa: E402",
        "",
        "v1 = tf.compat.v1",
        "v1.disable_eager_execution()",
        "",
        f"STEPS = {train.steps}",
        f"BATCH = {train.batch_size}",
        f"EVAL_EVERY = {train.eval_every}",
        f"SEED = {train.seed}",
    ]
    if uses_batchnorm:
        lines += [f"BATCH_NORM_DECAY = {exp.model.batch_norm_decay!r}", f"EPSILON = {BATCH_NORM_EPSILON!r}"]
    lines += _data_lines(exp, str(cache_root() / spec.name), spec)
    lines += [
        "",
        "# Placeholders: a batch of images (28x28 bytes) and their labels; `training` switches dropout",
        "# and batch norm to their training behaviour.",
        "v1.set_random_seed(SEED)",
        "images = v1.placeholder(tf.uint8, [None, 28, 28])",
        "Y_ = v1.placeholder(tf.int32, [None])",
        "training = v1.placeholder_with_default(False, [])",
        "step = v1.train.get_or_create_global_step()",
        "X = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, 28, 28, 1])  # pixels in [0, 1]",
    ]
    if uses_dropout:
        lines += DROPOUT_HELPER.rstrip("\n").split("\n")
    if uses_batchnorm:
        lines += BATCHNORM_HELPER.rstrip("\n").split("\n")
    lines += model
    lines += _training_lines(exp, uses_batchnorm)
    return "\n".join(lines) + "\n"


def _data_lines(exp: Experiment, cache: str, spec) -> list[str]:
    names = [f.name for f in spec.files.values()]
    subset = []
    if exp.data.train_size:
        subset.append(f"train_images, train_labels = train_images[:{exp.data.train_size}], "
                      f"train_labels[:{exp.data.train_size}]")  # fmt: skip
    if exp.data.validation:
        subset.append(f"train_images, train_labels = train_images[:-{exp.data.validation}], "
                      f"train_labels[:-{exp.data.validation}]  # held out")  # fmt: skip
    if exp.data.test_size:
        subset.append(f"test_images, test_labels = test_images[:{exp.data.test_size}], "
                      f"test_labels[:{exp.data.test_size}]")  # fmt: skip
    return [
        "",
        f"# {spec.title}: the four IDX files, where mnistctl keeps them (MNIST_DIR= elsewhere).",
        f"DATA = os.environ.get(\"MNIST_DIR\", \"{cache}\")",
        "",
        "",
        "def read_idx(name):",
        '    """An IDX file (gzipped or not) as a numpy array of bytes."""',
        "    for path, opener in ((os.path.join(DATA, name), open),",
        "                         (os.path.join(DATA, name + \".gz\"), gzip.open)):",
        "        if os.path.exists(path):",
        "            with opener(path, \"rb\") as f:",
        "                raw = f.read()",
        "            dims = raw[3]",
        "            shape = struct.unpack(\">\" + \"I\" * dims, raw[4 : 4 + 4 * dims])",
        "            return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)",
        "    sys.exit(f\"{name}(.gz) is not in {DATA}: `mnistctl data download` puts the files there, \"",
        "             \"or set MNIST_DIR to a folder that has them\")",
        "",
        "",
        *(f'{role} = read_idx("{name}")' for role, name in zip(
            ("train_images", "train_labels", "test_images", "test_labels"), names, strict=True)),
        *subset,
    ]  # fmt: skip


def _training_lines(exp: Experiment, uses_batchnorm: bool) -> list[str]:
    train = exp.train
    loss = "loss"
    lines = [
        "",
        "# The loss: cross-entropy of the softmax of the logits, averaged over the batch.",
        "loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=Y_, logits=Ylogits))",
        "correct = tf.equal(tf.argmax(Ylogits, 1, output_type=tf.int32), Y_)",
        "accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))",
    ]
    if train.label_smoothing:
        e = train.label_smoothing
        lines.append(
            f"objective = {1 - e!r} * loss - {e!r} * tf.reduce_mean(tf.nn.log_softmax(Ylogits))  # smoothed"
        )
        loss = "objective"
    if train.loss_scale != 1:
        lines.append(f"objective = {loss} * {train.loss_scale!r}  # the walk-through summed over the batch")
        loss = "objective"
    rate = exp.schedule.code("t")
    lines += [
        "",
        f"# The learning rate: {exp.schedule.tag}, a function of the step.",
        "t = tf.cast(step, tf.float64)",
        f"lr = tf.cast({rate}, tf.float32)",
        f"optimizer = {OPTIMIZER_CODE.get(exp.optimizer.tag)(exp.optimizer, 'lr')}",
    ]
    if uses_batchnorm:
        lines += ["with tf.control_dependencies(moving_averages):",
                  f"    train_step = optimizer.minimize({loss}, global_step=step)"]  # fmt: skip
    else:
        lines.append(f"train_step = optimizer.minimize({loss}, global_step=step)")
    lines += [
        "",
        "",
        "def batch(i):",
        '    """The images of step i: one seeded shuffle per pass over the data (mnistctl\'s order)."""',
        "    n = len(train_images)",
        "    stream = np.arange(i * BATCH, (i + 1) * BATCH)",
        "    epochs = np.unique(stream // n)",
        "    shuffles = {int(e): np.random.default_rng([SEED, int(e)]).permutation(n) for e in epochs}",
        "    return np.concatenate([shuffles[int(e)][stream[stream // n == e] % n] for e in epochs])",
        "",
        "",
        "def test_accuracy(session):",
        f'    """Accuracy and loss on the {_tests(exp)} test images, {train.eval_batch_size} at a time."""',
        "    right = total_loss = 0.0",
        f"    for start in range(0, len(test_images), {train.eval_batch_size}):",
        f"        end = start + {train.eval_batch_size}",
        "        x, y = test_images[start:end], test_labels[start:end]",
        "        a, l = session.run([accuracy, loss], {images: x, Y_: y})",
        "        right, total_loss = right + a * len(x), total_loss + l * len(x)",
        "    return right / len(test_images), total_loss / len(test_images)",
        "",
        "",
        "with v1.Session() as session:",
        "    session.run(v1.global_variables_initializer())",
        "    for i in range(STEPS):",
        "        chosen = batch(i)",
        "        x, y = train_images[chosen], train_labels[chosen]",
        "        _, a, l = session.run([train_step, accuracy, loss], {images: x, Y_: y, training: True})",
        "        if (i + 1) % EVAL_EVERY == 0 or i + 1 == STEPS:",
        "            test_a, test_l = test_accuracy(session)",
        '            print(f"step {i + 1}: train accuracy {a:.4f} loss {l:.4f}   "',
        '                  f"test accuracy {test_a:.4f} loss {test_l:.4f}")',
    ]  # fmt: skip
    return lines


def _tests(exp: Experiment) -> str:
    return f"{exp.data.test_size:,}" if exp.data.test_size else "10,000"
