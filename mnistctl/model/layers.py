"""The layers of a model, one small builder per layer type and activation, looked up by name:
each builds its part of the TF1 graph and, beside it, writes the same layer as lines of a
standalone ``tf.compat.v1`` script (``mnistctl code``), so a new layer type is one builder and
one writer in this file.

Every trainable variable a builder makes has a role, weights or biases (the histograms, the
percentiles and the dashboard show them apart).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mnistctl._tf import tf
from mnistctl.config import ConvLayer, DenseLayer, InitConfig, LayerConfig, MaxPoolLayer
from mnistctl.registry import Registry

v1 = tf.compat.v1

ACTIVATIONS: Registry[Callable[[tf.Tensor], tf.Tensor]] = Registry("activation")
ACTIVATION_CODE: dict[str, str] = {}  # the same as a script writes it: "tf.nn.relu({})"


def _activation(name: str, function: Callable[[tf.Tensor], tf.Tensor], code: str) -> None:
    ACTIVATIONS.register(name)(function)
    ACTIVATION_CODE[name] = code


_activation("relu", tf.nn.relu, "tf.nn.relu({})")
_activation("sigmoid", tf.nn.sigmoid, "tf.nn.sigmoid({})")
_activation("tanh", tf.nn.tanh, "tf.nn.tanh({})")
_activation("elu", tf.nn.elu, "tf.nn.elu({})")
_activation("linear", tf.identity, "{}")
# The output layer's softmax is applied inside the loss, from the logits, for stability.
_activation("softmax", tf.identity, "{}")


LAYER_BUILDERS: Registry[Callable[..., tf.Tensor]] = Registry("layer type")
# Each layer type's lines of a standalone script (``mnistctl code``), written beside its builder.
LAYER_CODE: Registry[Callable[..., list[str]]] = Registry("layer type")
BATCH_NORM_EPSILON = 1.001e-5  # the smallest the fused kernel accepts


@dataclass(frozen=True)
class LayerContext:
    """What every layer builder needs besides its config and input."""

    init: InitConfig
    training: tf.Tensor
    global_step: tf.Variable
    batch_norm_decay: float
    seed: int
    layer_index: int


# Every trainable variable a layer makes has a role, weights or biases: the histograms, the
# percentiles and the dashboard show them apart. A layer builder makes its variables with
# ``_weight`` and ``_bias``; build_graph refuses a trainable variable with no role.
WEIGHTS, BIASES = "mnistctl_weights", "mnistctl_biases"


def _weight(shape: list[int], init: InitConfig) -> tf.Variable:
    zeros = init.weights == "zeros"
    initial = tf.zeros(shape) if zeros else v1.truncated_normal(shape, stddev=init.stddev)
    return _with_role(tf.Variable(initial, name="weights"), WEIGHTS)


def _bias(channels: int, value: float, name: str = "biases") -> tf.Variable:
    return _with_role(tf.Variable(tf.fill([channels], value), name=name), BIASES)


def _with_role(var: tf.Variable, role: str) -> tf.Variable:
    v1.add_to_collection(role, var)
    return var


def roles() -> tuple[tuple[tf.Variable, ...], tuple[tf.Variable, ...]]:
    """The graph's (weights, biases); every trainable variable must be one or the other."""
    weights, biases = tuple(v1.get_collection(WEIGHTS)), tuple(v1.get_collection(BIASES))
    known = {id(v) for v in weights + biases}
    unknown = [v.op.name for v in v1.trainable_variables() if id(v) not in known]
    if unknown:  # a layer builder's bug, not a user's error
        raise TypeError(f"trainable variables without a role (make them with _weight or _bias): {unknown}")
    return weights, biases


def _bias_value(layer: LayerConfig, init: InitConfig) -> float:
    return init.relu_bias if layer.activation == "relu" else 0.0


def _batch_norm(x: tf.Tensor, layer: LayerConfig, ctx: LayerContext) -> tf.Tensor:
    """Batch statistics while training, moving averages at test time (updated by the train op).

    As in the walk-through: the bias becomes the offset (beta) and there is no scale, since
    the following ReLU or sigmoid makes a scale redundant or the next layer absorbs it.
    TensorFlow's fused kernel does the work (dense layers pass through it as 1x1 images): 1.6x
    the speed of the same normalisation written with ``tf.nn.moments`` (the speed-run net,
    bfloat16, 2 cores). Its batch variance for the moving average is the unbiased one.
    """
    channels = x.shape[-1]
    offset = _bias(channels, _bias_value(layer, ctx.init), name="offset")
    moving_mean = tf.Variable(tf.zeros([channels]), trainable=False, name="moving_mean")
    moving_var = tf.Variable(tf.ones([channels]), trainable=False, name="moving_variance")
    images = x if len(x.shape) == 4 else tf.reshape(x, [-1, 1, 1, channels])
    scale = tf.ones([channels])
    y, mean, variance = tf.cond(
        ctx.training,
        lambda: v1.nn.fused_batch_norm(images, scale, offset, epsilon=BATCH_NORM_EPSILON, is_training=True),
        lambda: v1.nn.fused_batch_norm(
            images, scale, offset, moving_mean, moving_var, epsilon=BATCH_NORM_EPSILON, is_training=False
        ),
    )
    # Early on, average faster (like tf.train.ExponentialMovingAverage with num_updates).
    step = tf.cast(ctx.global_step, tf.float32)
    decay = tf.minimum(ctx.batch_norm_decay, (1.0 + step) / (10.0 + step))
    for var, value in ((moving_mean, mean), (moving_var, variance)):
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, var.assign(decay * var + (1 - decay) * value))
    return y if len(x.shape) == 4 else tf.reshape(y, tf.shape(x))


def _bias_norm_activate(x: tf.Tensor, layer: LayerConfig, ctx: LayerContext) -> tf.Tensor:
    if layer.batch_norm:
        x = _batch_norm(x, layer, ctx)
    else:
        x = x + _bias(x.shape[-1], _bias_value(layer, ctx.init))
    x = ACTIVATIONS.get(layer.activation)(x)
    if layer.dropout > 0:
        x = _dropout(x, layer.dropout, ctx)
    return x


def _dropout(x: tf.Tensor, rate: float, ctx: LayerContext) -> tf.Tensor:
    """Inverted dropout whose mask is a pure function of (seed, layer, step).

    A stateful random op would restart its sequence after a resume; a stateless one keyed by
    the global step gives a resumed run exactly the masks of an uninterrupted one.
    """
    step = tf.cast(ctx.global_step, tf.int32)
    seed = tf.stack([tf.constant(ctx.seed * 1000 + ctx.layer_index, tf.int32), step])
    keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) >= rate
    dropped = tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))
    return tf.cond(ctx.training, lambda: dropped, lambda: x)


@LAYER_BUILDERS.register("dense")
def build_dense(x: tf.Tensor, layer: DenseLayer, ctx: LayerContext) -> tf.Tensor:
    if len(x.shape) > 2:
        x = tf.reshape(x, [-1, x.shape[1:].num_elements()])
    x = tf.matmul(x, _weight([x.shape[-1], layer.units], ctx.init))
    return _bias_norm_activate(x, layer, ctx)


@LAYER_CODE.register("dense")
def dense_code(layer: DenseLayer, c: CodeContext) -> list[str]:
    x, lines = c.x, []
    if len(c.shape) > 1:  # images in, a vector out: each image's pixels in one row
        lines.append(f"YY = tf.reshape({x}, [-1, {' * '.join(map(str, c.shape))}])")
        x = "YY"
    size = math.prod(c.shape)
    lines.append(f"W{c.n} = tf.Variable({_weight_code([size, layer.units], c.init)})")
    return lines + _bias_norm_activate_code(f"tf.matmul({x}, W{c.n})", layer, c, layer.units)


@LAYER_BUILDERS.register("conv")
def build_conv(x: tf.Tensor, layer: ConvLayer, ctx: LayerContext) -> tf.Tensor:
    kernel = _weight([layer.kernel, layer.kernel, x.shape[-1], layer.filters], ctx.init)
    x = tf.nn.conv2d(x, kernel, strides=layer.stride, padding=layer.padding.upper())
    return _bias_norm_activate(x, layer, ctx)


@LAYER_CODE.register("conv")
def conv_code(layer: ConvLayer, c: CodeContext) -> list[str]:
    shape = [layer.kernel, layer.kernel, c.shape[-1], layer.filters]
    lines = [f"W{c.n} = tf.Variable({_weight_code(shape, c.init)})"]
    product = f'tf.nn.conv2d({c.x}, W{c.n}, strides={layer.stride}, padding="{layer.padding.upper()}")'
    return lines + _bias_norm_activate_code(product, layer, c, layer.filters)


@LAYER_BUILDERS.register("maxpool")
def build_maxpool(x: tf.Tensor, layer: MaxPoolLayer, ctx: LayerContext) -> tf.Tensor:
    return tf.nn.max_pool2d(x, layer.size, layer.step, layer.padding.upper())


@LAYER_CODE.register("maxpool")
def maxpool_code(layer: MaxPoolLayer, c: CodeContext) -> list[str]:
    return [f'{c.out} = tf.nn.max_pool2d({c.x}, {layer.size}, {layer.step}, "{layer.padding.upper()}")']


# -- the same layers as lines of a script ------------------------------------------------


@dataclass(frozen=True)
class CodeContext:
    """Where a layer's lines go in a script: its number (its variables are ``W3``, ``B3``), the
    name of its input and that input's shape, and whether it is the output layer."""

    n: int
    x: str
    shape: tuple[int, ...]
    init: InitConfig
    last: bool = False

    @property
    def out(self) -> str:
        """The name of the layer's output: ``Y3``, or the output layer's ``Ylogits``."""
        return "Ylogits" if self.last else f"Y{self.n}"


def _weight_code(shape: list[int], init: InitConfig) -> str:
    if init.weights == "zeros":
        return f"tf.zeros({shape})"
    return f"v1.truncated_normal({shape}, stddev={init.stddev!r})"


def _bias_norm_activate_code(product: str, layer: LayerConfig, c: CodeContext, channels: int) -> list[str]:
    """As ``_bias_norm_activate``: the bias (batch norm's offset), the activation, dropout."""
    bias = _bias_value(layer, c.init)
    lines = [f"B{c.n} = tf.Variable(tf.fill([{channels}], {bias!r}))"]
    value = f"batchnorm({product}, B{c.n})" if layer.batch_norm else f"{product} + B{c.n}"
    lines.append(f"{c.out} = {ACTIVATION_CODE[layer.activation].format(value)}")
    if layer.dropout > 0:
        lines.append(f"{c.out} = dropout({c.out}, {layer.dropout!r})")
    return lines
