"""The experiment schema: declarations only, one frozen dataclass per section of a config.

Each field has a type, a default (the walk-through's) and, where it matters, bounds in its
metadata; :mod:`mnistctl.config.parsing` enforces them. Each layer type declares what it does to
the shape of its input, how many parameters and multiply-adds it has and how it reads in one
line, so a new layer type is this one class plus its graph builder in :mod:`mnistctl.model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from mnistctl.config.datasets import BUILTIN
from mnistctl.config.parsing import Invalid
from mnistctl.config.schedules import Exponential, ScheduleConfig
from mnistctl.registry import Registry

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)

Activation = Literal["relu", "sigmoid", "tanh", "elu", "softmax", "linear"]
Padding = Literal["same", "valid"]
Shape = tuple[int, ...]

LAYERS: Registry[type[LayerConfig]] = Registry("layer type")
OPTIMIZERS: Registry[type[OptimizerConfig]] = Registry("optimizer")


@dataclass(frozen=True)
class LayerConfig:
    """Base of the layer configs; `type` in YAML picks the subclass.

    A subclass answers, without TensorFlow, what its graph builder will do to an input of a
    given shape. Errors are :class:`Invalid` with the key inside the layer (``stride``).
    """

    registry: ClassVar[Registry] = LAYERS
    tag_key: ClassVar[str] = "type"
    tag: ClassVar[str] = ""

    def output_shape(self, shape: Shape) -> Shape:
        raise NotImplementedError

    def parameters(self, shape: Shape) -> int:
        """Trainable parameters, plus batch norm's moving statistics, for this input shape."""
        return 0

    def multiply_adds(self, shape: Shape) -> int:
        """Multiply-adds of one image's forward pass through this layer."""
        return 0

    def describe(self) -> str:
        """One line for tables: ``conv 5x5x4 stride 1 same relu +batchnorm``."""
        raise NotImplementedError

    def scope(self, index: int) -> str:
        """The name scope of this layer as layer ``index`` of a graph (``layer0_conv``): its
        variables' names start with it."""
        return f"layer{index}_{self.tag}"

    @property
    def normalised(self) -> bool:
        """Whether the layer has batch norm (layers without the option never do)."""
        return bool(getattr(self, "batch_norm", False))

    def _suffix(self) -> str:
        text = f" {getattr(self, 'activation', 'linear')}"
        if self.normalised:
            text += " +batchnorm"
        if getattr(self, "dropout", 0.0):
            text += f" dropout {self.dropout:g}"
        return text

    def _bias_and_norm(self, channels: int) -> int:
        # Batch norm's offset plays the bias's role, and it keeps a moving mean and variance.
        return (3 if self.normalised else 1) * channels


@LAYERS.register("dense")
@dataclass(frozen=True)
class DenseLayer(LayerConfig):
    """A fully connected layer; the last layer of a model is the dense softmax output.

    Attributes:
        units: number of neurons.
        activation: non-linearity applied after the (optionally batch-normalised) sum.
        dropout: fraction of outputs dropped while training (0.25 keeps 75%).
        batch_norm: normalise the sum over the batch before the activation.
    """

    tag: ClassVar[str] = "dense"
    units: int = field(default=NUM_CLASSES, metadata={"ge": 1})
    activation: Activation = "relu"
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    batch_norm: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        return (self.units,)

    def parameters(self, shape: Shape) -> int:
        return math.prod(shape) * self.units + self._bias_and_norm(self.units)

    def multiply_adds(self, shape: Shape) -> int:
        return math.prod(shape) * self.units

    def describe(self) -> str:
        return f"dense {self.units}" + self._suffix()


def _side(side: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-side // stride)
    return -(-(side - kernel + 1) // stride)


def _check_window(shape: Shape, kernel: int, stride: int, padding: str, what: str) -> tuple[int, int]:
    """The output side of a sliding window, or Invalid when it cannot slide over ``shape``."""
    if len(shape) != 3:
        raise Invalid("", f"a {what} layer cannot follow a dense layer")
    height, width, _ = shape
    if kernel > min(height, width):  # with padding "same" too: large enough, it aborts TensorFlow
        key = "kernel" if what == "conv" else "size"
        raise Invalid(key, f"{key} {kernel} is larger than the {height}x{width} input (padding: {padding})")
    if stride > min(height, width):
        raise Invalid(
            "stride",
            f"stride {stride} is larger than the {height}x{width} input: "
            "the stack of strided layers shrinks the image to nothing",
        )
    return _side(height, kernel, stride, padding), _side(width, kernel, stride, padding)


@LAYERS.register("conv")
@dataclass(frozen=True)
class ConvLayer(LayerConfig):
    """A 2-D convolution over the image, with a stride instead of pooling (as the walk-through).

    Attributes:
        filters: number of output channels.
        kernel: side of the square kernel, in pixels.
        stride: step between kernel positions; 2 halves the image side.
        padding: ``same`` keeps ceil(side / stride); ``valid`` uses only whole windows.
        activation: non-linearity after the convolution.
        dropout: fraction of outputs dropped while training.
        batch_norm: normalise each channel over the batch before the activation.
    """

    tag: ClassVar[str] = "conv"
    filters: int = field(default=4, metadata={"ge": 1})
    kernel: int = field(default=5, metadata={"ge": 1})
    stride: int = field(default=1, metadata={"ge": 1})
    padding: Padding = "same"
    activation: Activation = "relu"
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    batch_norm: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        height, width = _check_window(shape, self.kernel, self.stride, self.padding, "conv")
        return (height, width, self.filters)

    def parameters(self, shape: Shape) -> int:
        return self.kernel**2 * shape[-1] * self.filters + self._bias_and_norm(self.filters)

    def multiply_adds(self, shape: Shape) -> int:
        height, width, _ = self.output_shape(shape)
        return height * width * self.filters * self.kernel**2 * shape[-1]

    def describe(self) -> str:
        k = self.kernel
        return f"conv {k}x{k}x{self.filters} stride {self.stride} {self.padding}" + self._suffix()


@LAYERS.register("maxpool")
@dataclass(frozen=True)
class MaxPoolLayer(LayerConfig):
    """The largest value of each window, channel by channel (no parameters).

    Attributes:
        size: side of the square window, in pixels.
        stride: step between windows (null: the window's side, so windows do not overlap).
        padding: ``same`` keeps ceil(side / stride); ``valid`` uses only whole windows.
    """

    tag: ClassVar[str] = "maxpool"
    size: int = field(default=2, metadata={"ge": 1})
    stride: Optional[int] = field(default=None, metadata={"ge": 1})
    padding: Padding = "valid"

    @property
    def step(self) -> int:
        return self.stride or self.size

    def output_shape(self, shape: Shape) -> Shape:
        height, width = _check_window(shape, self.size, self.step, self.padding, "maxpool")
        return (height, width, shape[-1])

    def describe(self) -> str:
        return f"maxpool {self.size}x{self.size} stride {self.step} {self.padding}"


@dataclass(frozen=True)
class InitConfig:
    """How variables start (the walk-through's defaults).

    Attributes:
        weights: ``truncated_normal`` or ``zeros`` (the single softmax layer starts at zero).
        stddev: standard deviation of the truncated normal.
        relu_bias: bias of layers followed by a ReLU, so they start in the active region;
            every other bias starts at 0.
    """

    weights: Literal["truncated_normal", "zeros"] = "truncated_normal"
    # Bounds keep every value well inside float32, where TensorFlow computes.
    stddev: float = field(default=0.1, metadata={"gt": 0, "le": 100})
    relu_bias: float = field(default=0.1, metadata={"ge": -100, "le": 100})


@dataclass(frozen=True)
class ModelConfig:
    """The network: layers in order, the last one the 10-way softmax output.

    Attributes:
        layers: the layers, input to output.
        init: how weights and biases start.
        batch_norm_decay: decay of the moving averages batch norm uses at test time.
        ema_decay: keep an exponential moving average of the trainable weights with this decay
            and use it wherever the model is evaluated: the evaluations during training (hence
            the best checkpoint), ``eval``, ``export`` and ``serve`` (null: the weights as trained).
    """

    layers: tuple[LayerConfig, ...] = ()
    init: InitConfig = InitConfig()
    batch_norm_decay: float = field(default=0.999, metadata={"gt": 0, "lt": 1})
    ema_decay: Optional[float] = field(default=None, metadata={"gt": 0, "lt": 1})


@dataclass(frozen=True)
class OptimizerConfig:
    """Base of the optimizer configs; `name` in YAML picks the subclass."""

    registry: ClassVar[Registry] = OPTIMIZERS
    tag_key: ClassVar[str] = "name"
    tag: ClassVar[str] = ""


@OPTIMIZERS.register("sgd")
@dataclass(frozen=True)
class SgdConfig(OptimizerConfig):
    """Plain gradient descent."""

    tag: ClassVar[str] = "sgd"


@OPTIMIZERS.register("adam")
@dataclass(frozen=True)
class AdamConfig(OptimizerConfig):
    """Adam, with TensorFlow's defaults.

    Attributes:
        beta1: decay of the running mean of gradients.
        beta2: decay of the running mean of squared gradients.
        epsilon: added to the denominator for numerical stability.
    """

    tag: ClassVar[str] = "adam"
    beta1: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    beta2: float = field(default=0.999, metadata={"ge": 0, "lt": 1})
    epsilon: float = field(default=1e-8, metadata={"gt": 0, "le": 1})


@dataclass(frozen=True)
class AugmentConfig:
    """Random distortions of each training image, done in the graph (off at test time).

    Attributes:
        rotate: largest rotation, in degrees either way.
        shift: largest shift, in pixels, in each direction.
        zoom: largest relative change of scale (0.1: between 90% and 110%).
    """

    rotate: float = field(default=10.0, metadata={"ge": 0, "le": 180})
    shift: float = field(default=2.0, metadata={"ge": 0, "le": 14})
    zoom: float = field(default=0.1, metadata={"ge": 0, "lt": 1})


DATASETS: tuple[str, ...] = BUILTIN  # data.DATASET_SPECS says where each comes from


@dataclass(frozen=True)
class DataConfig:
    """Which images to train, select and test on.

    Attributes:
        dataset: ``mnist`` (handwritten digits), ``fashion`` (Fashion-MNIST), or the name of
            a dataset made from your own pictures by ``mnistctl data import``.
        train_size: use only the first N training images (null: all 60,000).
        test_size: use only the first N test images (null: all 10,000).
        validation: hold out the last N training images; the best checkpoint is then chosen
            by validation accuracy, never by peeking at the test set (null: no validation).
        augment: random rotation, shift and zoom of training images (null: none).
    """

    dataset: str = "mnist"
    train_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 60000})
    test_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 10000})
    validation: Optional[int] = field(default=None, metadata={"ge": 1, "le": 30000})
    augment: Optional[AugmentConfig] = None


StopMetric = Literal["validation_accuracy", "test_accuracy"]


@dataclass(frozen=True)
class StopAt:
    """End the run after the first evaluation at which ``metric`` reaches ``value``.

    Attributes:
        metric: ``validation_accuracy`` (needs ``data.validation``) or ``test_accuracy``.
        value: the target, a fraction (0.99 for 99%).
    """

    metric: StopMetric = "validation_accuracy"
    value: float = field(default=0.99, metadata={"gt": 0, "le": 1})


@dataclass(frozen=True)
class EarlyStopping:
    """End the run when ``metric`` has not improved for ``patience`` evaluations in a row.

    Attributes:
        metric: ``validation_accuracy`` (needs ``data.validation``) or ``test_accuracy``.
        patience: evaluations without an improvement before the run ends.
        min_delta: an improvement must beat the best so far by more than this.
    """

    metric: StopMetric = "validation_accuracy"
    patience: int = field(default=5, metadata={"ge": 1, "le": 10**6})
    min_delta: float = field(default=0.0, metadata={"ge": 0, "lt": 1})


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        steps: optimizer steps (one mini-batch each).
        batch_size: images per step.
        eval_every: evaluate on the test set every this many steps (and at the end).
        checkpoint_every: save the latest checkpoint every this many steps (and at the end).
        eval_batch_size: images per forward pass when evaluating (memory, not results).
        loss_scale: multiplies the mean cross-entropy before differentiating; the first
            walk-through model used 100 with plain gradient descent.
        seed: seeds initialisation, dropout and the order of the batches.
        precision: ``float32``, or ``bfloat16``: TensorFlow's oneDNN auto mixed precision
            computes convolutions and matrix products in bfloat16 (variables stay float32).
            Faster on CPUs with AVX512_BF16 or AMX; slower elsewhere.
        label_smoothing: train towards (1 - e) for the right class and e / 10 for every class,
            instead of 1 and 0 (0: plain cross-entropy). Reported losses stay plain.
        stop_at: end early once a metric reaches a target (null: train every step).
        early_stopping: end early once a metric stops improving (null: never).
    """

    steps: int = field(default=10000, metadata={"ge": 1, "le": 10**9})
    batch_size: int = field(default=100, metadata={"ge": 1, "le": 60000})
    eval_every: int = field(default=100, metadata={"ge": 1})
    checkpoint_every: int = field(default=1000, metadata={"ge": 1})
    eval_batch_size: int = field(default=1000, metadata={"ge": 1, "le": 10000})
    loss_scale: float = field(default=1.0, metadata={"gt": 0, "le": 1e6})
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**31})
    precision: Literal["float32", "bfloat16"] = "float32"
    label_smoothing: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    stop_at: Optional[StopAt] = None
    early_stopping: Optional[EarlyStopping] = None


@dataclass(frozen=True)
class Experiment:
    """One experiment: everything a run needs, and all it records as ``config.yaml``.

    Attributes:
        name: short name used in run directory names (defaults to the file's stem).
        description: one line for humans.
        data: dataset and subset sizes.
        model: the layers.
        optimizer: ``sgd`` or ``adam``.
        schedule: the learning rate as a function of the step.
        train: steps, batch size, evaluation and checkpoint cadence, seed.
    """

    name: str = ""
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = AdamConfig()
    schedule: ScheduleConfig = field(default_factory=Exponential)
    train: TrainConfig = TrainConfig()

    @property
    def selection_metric(self) -> str:
        """The metrics.csv column that chooses the best evaluation (and checkpoint): validation
        accuracy when images are held out, else test accuracy (the walk-through's way)."""
        return "validation_accuracy" if self.data.validation else "test_accuracy"
