"""Config -> TensorFlow 1-style graph: placeholders, the layers (:mod:`mnistctl.model.layers`),
loss, accuracy, the learning rate and the train op.

One small builder per optimizer, looked up by name, so adding one is a decorated function.
``build_graph`` returns a :class:`Graph` holding every tensor the training loop, evaluation and
export need.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from mnistctl._tf import tf
from mnistctl.config import IMAGE_SHAPE, AdamConfig, AugmentConfig, Experiment, OptimizerConfig, SgdConfig
from mnistctl.config.schedules import ScheduleConfig
from mnistctl.errors import NONFINITE_LOSS
from mnistctl.model.layers import LAYER_BUILDERS, LayerContext, roles
from mnistctl.registry import Registry

v1 = tf.compat.v1
tf_errors = tf.errors

OPTIMIZER_BUILDERS: Registry[Callable[..., v1.train.Optimizer]] = Registry("optimizer")
# Each optimizer as a script writes it (``mnistctl code``), beside its builder.
OPTIMIZER_CODE: Registry[Callable[..., str]] = Registry("optimizer")
# A schedule's one definition (mnistctl.config.schedules) over TensorFlow's operations: the rate as a
# graph op of the global step, so a training step needs no rate fed from Python.
TF_OPS = SimpleNamespace(exp=tf.exp, cos=tf.cos, minimum=tf.minimum, where=tf.where)


def build_schedule(cfg: ScheduleConfig, step: tf.Tensor) -> tf.Tensor:
    """The learning rate at the global step ``step``, from the schedule's own definition."""
    return tf.cast(cfg.rate(tf.cast(step, tf.float64), TF_OPS), tf.float32)


@dataclass(frozen=True)
class Graph:
    """Everything the loop, evaluation and export touch, in one TF1 graph.

    Feed ``images`` (uint8 [N, 28, 28]) and ``labels`` (uint8 [N]), and ``training`` (default
    False) as True for a training step; the learning rate follows the global step in the graph.
    """

    graph: tf.Graph
    images: tf.Tensor
    labels: tf.Tensor
    learning_rate: tf.Tensor
    training: tf.Tensor
    logits: tf.Tensor
    probabilities: tf.Tensor
    predictions: tf.Tensor
    loss: tf.Tensor  # mean cross-entropy over the batch
    loss_sum: tf.Tensor  # summed cross-entropy, to average exactly over many eval batches
    correct: tf.Tensor  # number of right predictions in the batch
    train_op: tf.Operation
    global_step: tf.Variable
    init_op: tf.Operation
    weights: tuple[tf.Variable, ...]
    biases: tuple[tf.Variable, ...]
    # [summed loss, right answers, images] of the training batches since the last reset. It
    # lives in the graph, so a checkpoint taken between evaluations carries it to a resume.
    train_window: tf.Variable
    reset_window: tf.Operation
    hidden: tuple[tf.Tensor, ...]  # each hidden layer's output (dropout is off when evaluating)
    precision: str = "float32"  # how sessions compute it (train.precision)
    # With model.ema_decay: exchanges the trainable weights and their moving averages (running
    # it twice restores them). Use it through ``averaged_weights``.
    swap_averages: tf.Operation | None = None


@OPTIMIZER_BUILDERS.register("sgd")
def build_sgd(cfg: SgdConfig, learning_rate: tf.Tensor) -> v1.train.Optimizer:
    return v1.train.GradientDescentOptimizer(learning_rate)


@OPTIMIZER_CODE.register("sgd")
def sgd_code(cfg: SgdConfig, learning_rate: str) -> str:
    return f"v1.train.GradientDescentOptimizer({learning_rate})"


@OPTIMIZER_BUILDERS.register("adam")
def build_adam(cfg: AdamConfig, learning_rate: tf.Tensor) -> v1.train.Optimizer:
    return v1.train.AdamOptimizer(learning_rate, cfg.beta1, cfg.beta2, cfg.epsilon)


@OPTIMIZER_CODE.register("adam")
def adam_code(cfg: AdamConfig, learning_rate: str) -> str:
    return f"v1.train.AdamOptimizer({learning_rate}, {cfg.beta1!r}, {cfg.beta2!r}, {cfg.epsilon!r})"


def build_optimizer(cfg: OptimizerConfig, learning_rate: tf.Tensor) -> v1.train.Optimizer:
    return OPTIMIZER_BUILDERS.get(cfg.tag)(cfg, learning_rate)


def augment_images(x: tf.Tensor, cfg: AugmentConfig, seed: int, global_step: tf.Variable) -> tf.Tensor:
    """Rotate, zoom and shift each image by its own random amount, in one projective warp.

    The amounts are stateless random numbers keyed by (seed, step), like the dropout masks, so
    a resumed run augments exactly as an uninterrupted one would.
    """
    n = tf.shape(x)[0]
    step = tf.cast(global_step, tf.int32)
    u = tf.random.stateless_uniform(
        [n, 4], seed=tf.stack([tf.constant(seed * 1000 + 999), step]), minval=-1, maxval=1
    )
    angle = u[:, 0] * (cfg.rotate * 3.141592653589793 / 180)
    scale = 1.0 + u[:, 1] * cfg.zoom
    shift_x, shift_y = u[:, 2] * cfg.shift, u[:, 3] * cfg.shift
    # The warp maps each output pixel (x, y) back to the input pixel it samples.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    centre = (IMAGE_SHAPE[0] - 1) / 2
    a2 = centre - cos * centre - sin * centre - shift_x
    b2 = centre + sin * centre - cos * centre - shift_y
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, sin, a2, -sin, cos, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=tf.constant(IMAGE_SHAPE[:2], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def build_logits(
    x: tf.Tensor, exp: Experiment, training: tf.Tensor, global_step: tf.Variable
) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """The layers, from float pixels in [0, 1] shaped [N, 28, 28, 1] to the 10 logits.

    Returns:
        (logits, the output of every hidden layer).
    """
    hidden = []
    for i, layer in enumerate(exp.model.layers):
        ctx = LayerContext(
            exp.model.init, training, global_step, exp.model.batch_norm_decay, exp.train.seed, i
        )
        with tf.name_scope(layer.scope(i)):
            x = LAYER_BUILDERS.get(layer.tag)(x, layer, ctx)
        hidden.append(x)
    return x, tuple(hidden[:-1])


def build_graph(exp: Experiment) -> Graph:
    """Build the whole training and evaluation graph for an experiment.

    The graph-level seed makes initial weights and dropout masks a function of the seed.
    """
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(exp.train.seed)
        images = v1.placeholder(tf.uint8, [None, *IMAGE_SHAPE[:2]], name="images")
        labels = v1.placeholder(tf.uint8, [None], name="labels")
        training = v1.placeholder_with_default(False, [], name="training")
        global_step = v1.train.get_or_create_global_step()

        pixels = tf.reshape(tf.cast(images, tf.float32) / 255.0, [-1, *IMAGE_SHAPE])
        if exp.data.augment is not None:
            augmented = augment_images(pixels, exp.data.augment, exp.train.seed, global_step)
            pixels = tf.cond(training, lambda: augmented, lambda: pixels)
        logits, hidden = build_logits(pixels, exp, training, global_step)
        logits = tf.identity(logits, name="logits")
        probabilities = tf.nn.softmax(logits, name="probabilities")
        predictions = tf.argmax(logits, axis=1, output_type=tf.int32, name="predictions")
        targets = tf.cast(labels, tf.int32)
        per_image = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        loss = tf.reduce_mean(per_image, name="loss")
        loss_sum = tf.reduce_sum(per_image, name="loss_sum")
        correct = tf.reduce_sum(tf.cast(tf.equal(predictions, targets), tf.int32), name="correct")

        learning_rate = tf.identity(build_schedule(exp.schedule, global_step), "learning_rate")
        objective = loss
        if exp.train.label_smoothing:  # targets (1 - e) one-hot + e / 10: the metrics keep the plain loss
            smoothing = exp.train.label_smoothing
            objective = (1 - smoothing) * loss - smoothing * tf.reduce_mean(tf.nn.log_softmax(logits))
        # A non-finite loss fails the step inside TensorFlow: no per-step fetch is needed to notice.
        checked = tf.debugging.check_numerics(objective, NONFINITE_LOSS)
        optimizer = build_optimizer(exp.optimizer, learning_rate)
        # Batch-norm moving averages must update with every training step.
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            minimize = optimizer.minimize(checked * exp.train.loss_scale, global_step=global_step)
        swap_averages = None
        if exp.model.ema_decay is not None:
            minimize, swap_averages = _weight_averages(exp.model.ema_decay, minimize, global_step)
        window, reset_window = _train_window()
        sums = tf.stack([loss_sum, tf.cast(correct, tf.float32), tf.cast(tf.shape(labels)[0], tf.float32)])
        train_op = tf.group(minimize, window.assign_add(tf.cast(sums, tf.float64)), name="train_op")
        init_op = tf.group(v1.global_variables_initializer(), v1.local_variables_initializer())
        weights, biases = roles()
    return Graph(
        graph=graph,
        images=images,
        labels=labels,
        learning_rate=learning_rate,
        training=training,
        logits=logits,
        probabilities=probabilities,
        predictions=predictions,
        loss=loss,
        loss_sum=loss_sum,
        correct=correct,
        train_op=train_op,
        global_step=global_step,
        init_op=init_op,
        weights=weights,
        biases=biases,
        train_window=window,
        reset_window=reset_window,
        hidden=hidden,
        precision=exp.train.precision,
        swap_averages=swap_averages,
    )


AVERAGE = "average"  # checkpoint name of a weight's moving average: "<weight's name>/average"


def _weight_averages(
    decay: float, minimize: tf.Operation, global_step: tf.Variable
) -> tuple[tf.Operation, tf.Operation]:
    """Follow each trainable weight with its exponential moving average, updated after every step.

    The average starts fast (decay ``min(decay, (1 + step) / (10 + step))``, as batch norm's),
    lives in the checkpoints beside the weights, so resuming continues it, and is what the
    model is evaluated with.

    Returns:
        (the training step followed by the averages' update, the op that swaps them in and out).
    """
    weights = v1.trainable_variables()
    ema = v1.train.ExponentialMovingAverage(decay, num_updates=global_step, name=AVERAGE)
    with tf.control_dependencies([minimize]):
        update = ema.apply(weights)
    with tf.name_scope("swap_averages"):
        swap = _swap(weights, [ema.average(w) for w in weights])
    return update, swap


def _swap(a: Sequence[tf.Variable], b: Sequence[tf.Variable]) -> tf.Operation:
    """One op exchanging the values of two lists of variables, through spare local variables
    (local: never checkpointed)."""
    spares = [
        v1.Variable(
            tf.zeros(v.shape, v.dtype),
            trainable=False,
            collections=[v1.GraphKeys.LOCAL_VARIABLES],
            name="spare",
        )
        for v in a
    ]
    copied = [s.assign(v) for s, v in zip(spares, a, strict=True)]
    with tf.control_dependencies(copied):
        loaded = [v.assign(w) for v, w in zip(a, b, strict=True)]
    with tf.control_dependencies(loaded):
        return tf.group([w.assign(s) for w, s in zip(b, spares, strict=True)])


def checkpoint_names(variables: Sequence[tf.Variable], averaged: bool) -> dict[str, tf.Variable]:
    """Name in a training checkpoint -> variable, for an inference graph with the same layers.

    With ``averaged`` (model.ema_decay set) every trainable weight is read from its average.
    """
    return {v.op.name + (f"/{AVERAGE}" if averaged and v.trainable else ""): v for v in variables}


def _train_window() -> tuple[tf.Variable, tf.Operation]:
    with tf.name_scope("train_window"):
        window = tf.Variable(tf.zeros([3], tf.float64), trainable=False, name="sums")
        reset = window.assign(tf.zeros([3], tf.float64)).op
    return window, reset


def count_parameters(g: Graph) -> int:
    """Trainable parameters plus batch-norm moving statistics (the config's count)."""
    with g.graph.as_default():
        variables = [v for v in v1.global_variables() if "moving_" in v.name] + list(v1.trainable_variables())
    return sum(v.shape.num_elements() for v in variables)


def make_session(g: Graph, threads: int | None = None) -> v1.Session:
    """A session on the graph. TensorFlow's default thread pools use every core; ``threads``
    limits both pools, so several trials side by side on one machine do not fight over cores.

    With ``train.precision: bfloat16`` Grappler's oneDNN auto-mixed-precision pass rewrites the
    convolutions, matrix products and their gradients to bfloat16 (variables, the loss and the
    optimizer stay float32; bfloat16 has float32's exponent range, so no loss scaling).
    """
    from tensorflow.core.protobuf.rewriter_config_pb2 import RewriterConfig  # after mnistctl._tf

    config = v1.ConfigProto()
    config.allow_soft_placement = True
    if threads:
        config.intra_op_parallelism_threads = threads
        config.inter_op_parallelism_threads = threads
    if g.precision == "bfloat16":
        config.graph_options.rewrite_options.auto_mixed_precision_onednn_bfloat16 = RewriterConfig.ON
    return v1.Session(graph=g.graph, config=config)
