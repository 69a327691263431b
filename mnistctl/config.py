"""The experiment schema: YAML in, frozen dataclasses out, strictly checked before any graph.

Every field of every dataclass is typed, documented and range-checked. ``load_config`` reads a
YAML file, applies ``--set`` overrides, and either returns an :class:`Experiment` or raises a
:class:`ConfigError` whose one-line message names the file, the key path and the problem::

    configs/conv.yaml: model.layers[1].stride: expected an integer >= 1, got 0

Nothing here imports TensorFlow, so validating a config is instant.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from mnistctl.errors import MnistctlError
from mnistctl.registry import Registry
from mnistctl.schedules import Exponential, ScheduleConfig

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
MAX_CONFIG_BYTES = 1 << 20

Activation = Literal["relu", "sigmoid", "tanh", "elu", "softmax", "linear"]
Padding = Literal["same", "valid"]


class ConfigError(MnistctlError):
    """A config that cannot be used, with the file and key path that make it so."""


# -- the schema ---------------------------------------------------------------------------

LAYERS: Registry[type[LayerConfig]] = Registry("layer type")
OPTIMIZERS: Registry[type[OptimizerConfig]] = Registry("optimizer")


@dataclass(frozen=True)
class LayerConfig:
    """Base of the layer configs; `type` in YAML picks the subclass."""

    registry: ClassVar[Registry] = LAYERS
    tag_key: ClassVar[str] = "type"
    tag: ClassVar[str] = ""


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
    stddev: float = field(default=0.1, metadata={"gt": 0})
    relu_bias: float = 0.1


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
    epsilon: float = field(default=1e-8, metadata={"gt": 0})


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


@dataclass(frozen=True)
class DataConfig:
    """Which images to train, select and test on.

    Attributes:
        dataset: ``mnist`` (handwritten digits) or ``fashion`` (Fashion-MNIST).
        train_size: use only the first N training images (null: all 60,000).
        test_size: use only the first N test images (null: all 10,000).
        validation: hold out the last N training images; the best checkpoint is then chosen
            by validation accuracy, never by peeking at the test set (null: no validation).
        augment: random rotation, shift and zoom of training images (null: none).
    """

    dataset: Literal["mnist", "fashion"] = "mnist"
    train_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 60000})
    test_size: Optional[int] = field(default=None, metadata={"ge": 1, "le": 10000})
    validation: Optional[int] = field(default=None, metadata={"ge": 1, "le": 30000})
    augment: Optional[AugmentConfig] = None


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
    """

    steps: int = field(default=10000, metadata={"ge": 1, "le": 10**9})
    batch_size: int = field(default=100, metadata={"ge": 1, "le": 60000})
    eval_every: int = field(default=100, metadata={"ge": 1})
    checkpoint_every: int = field(default=1000, metadata={"ge": 1})
    eval_batch_size: int = field(default=1000, metadata={"ge": 1, "le": 10000})
    loss_scale: float = field(default=1.0, metadata={"gt": 0})
    seed: int = field(default=0, metadata={"ge": 0, "lt": 2**31})
    precision: Literal["float32", "bfloat16"] = "float32"


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


# -- loading ------------------------------------------------------------------------------


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Experiment:
    """Read, override and validate an experiment config.

    Args:
        path: the YAML file.
        overrides: ``key.path=value`` strings, applied in order; values are parsed as YAML.

    Returns:
        The validated experiment.

    Raises:
        ConfigError: naming the file (or the ``--set``) and key path of the first problem.
    """
    source = str(path)
    raw = read_yaml(Path(path))
    if raw is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping of settings")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {_kind(raw)}")
    raw.setdefault("name", Path(path).stem)
    overridden = apply_overrides(raw, overrides)
    return parse_experiment(raw, source, overridden)


def parse_experiment(raw: Any, source: str, overridden: dict[str, str] | None = None) -> Experiment:
    """Validate an already-loaded mapping (from a file or a run's ``config.yaml``)."""
    try:
        experiment = _parse(raw, Experiment, "")
        _check_experiment(experiment)
    except _Invalid as err:
        origin = source
        for key, expression in (overridden or {}).items():
            if err.path == key or err.path.startswith((key + ".", key + "[")):
                origin = f"--set {expression}"
        raise ConfigError(f"{origin}: {err.path or '(top level)'}: {err.message}") from None
    return experiment


class _SafeLoaderNoAliases(yaml.SafeLoader):
    """Refuses YAML aliases: configs never need them, and they make 'billion laughs' bombs."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                "while reading the config",
                None,
                "aliases (*name) are not supported in mnistctl configs",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def read_yaml(path: Path) -> Any:
    """Load one YAML document safely, turning every failure into a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return yaml.load(text, Loader=_SafeLoaderNoAliases)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict[str, str]:
    """Apply ``key.path=value`` overrides to a raw mapping in place.

    Returns:
        The canonical key path of each override mapped to its text, to attribute errors.
    """
    applied = {}
    for expression in overrides:
        key, sep, text = expression.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {expression}: expected key.path=value")
        tokens = _split_key(key.strip(), expression)
        try:
            value = yaml.load(text, Loader=_SafeLoaderNoAliases) if text.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {expression}: cannot parse the value {text!r}") from None
        _set_path(raw, tokens, value, expression)
        applied[_join_path(tokens)] = expression
    return applied


def _split_key(key: str, expression: str) -> list[str | int]:
    tokens: list[str | int] = []
    for part in key.split("."):
        matches = list(_TOKEN.finditer(part))
        if not matches or "".join(m.group(0) for m in matches) != part:
            raise ConfigError(f"--set {expression}: bad key path {key!r}")
        for m in matches:
            tokens.append(m.group(1) if m.group(1) else int(m.group(2)))
    if not isinstance(tokens[0], str):
        raise ConfigError(f"--set {expression}: bad key path {key!r}")
    return tokens


def _join_path(tokens: typing.Sequence[str | int]) -> str:
    out = ""
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else t)
    return out


def _set_path(raw: dict, tokens: list[str | int], value: Any, expression: str) -> None:
    node: Any = raw
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        where = _join_path(tokens[:i]) or "(top level)"
        if isinstance(token, int):
            if not isinstance(node, list):
                raise ConfigError(f"--set {expression}: {where} is not a list")
            if not -len(node) <= token < len(node):
                raise ConfigError(f"--set {expression}: {where} has {len(node)} entries")
            if last:
                node[token] = value
            else:
                node = node[token]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {expression}: {where} is not a mapping")
            if last:
                node[token] = value
            else:
                node = node.setdefault(token, {})


# -- the strict parser --------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    if isinstance(value, (dict, list)):
        return _kind(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _sub(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _parse(value: Any, cls: type, path: str) -> Any:
    """Build dataclass ``cls`` (or a registered subclass) from a mapping, checking every key."""
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected a mapping, got {_kind(value)}")
    registry: Registry | None = getattr(cls, "registry", None)
    if registry is not None:
        tag_key = cls.tag_key
        if tag_key not in value:
            raise _Invalid(_sub(path, tag_key), f"missing; expected one of: {', '.join(registry)}")
        tag = value[tag_key]
        if tag not in registry:
            raise _Invalid(_sub(path, tag_key), registry.unknown_message(tag))
        cls = registry.get(tag)
        value = {k: v for k, v in value.items() if k != tag_key}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        if key not in fields:
            known = ", ".join(([cls.tag_key] if registry else []) + list(fields))
            raise _Invalid(_sub(path, str(key)), f"unknown key; expected one of: {known}")
        f = fields[key]
        kwargs[key] = _check_value(item, hints[key], _sub(path, key), f.metadata)
    return cls(**kwargs)


def _check_value(value: Any, hint: Any, path: str, bounds: typing.Mapping) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _check_value(value, hint, path, bounds)
    if origin is Literal:
        if value not in args:
            what = re.split(r"[.\[]", path)[-1] if path else "value"
            choices = ", ".join(str(a) for a in args)
            raise _Invalid(path, f"unknown {what} {_shown(value)}; expected one of: {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(path, f"expected a list, got {_kind(value)}")
        return tuple(_check_value(v, args[0], _sub(path, i), {}) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _parse(value, hint, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid(path, f"expected true or false, got {_shown(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(path, f"expected a string, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, f"expected {_range_text('an integer', bounds)}, got {_shown(value)}")
        _check_bounds(value, "an integer", bounds, path)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Invalid(path, f"expected {_range_text('a number', bounds)}, got {_shown(value)}")
        _check_bounds(value, "a number", bounds, path)
        return float(value)
    raise TypeError(f"no rule for {hint!r} at {path}")  # a schema bug, not a user error


_BOUNDS = {"ge": (">=", float.__ge__), "gt": (">", float.__gt__)}
_BOUNDS.update({"le": ("<=", float.__le__), "lt": ("<", float.__lt__)})


def _range_text(what: str, bounds: typing.Mapping) -> str:
    parts = [f"{_BOUNDS[k][0]} {bounds[k]}" for k in ("ge", "gt", "le", "lt") if k in bounds]
    return f"{what} {' and '.join(parts)}" if parts else what


def _check_bounds(value: float, what: str, bounds: typing.Mapping, path: str) -> None:
    for key, (_, ok) in _BOUNDS.items():
        if key in bounds and not ok(float(value), float(bounds[key])):
            raise _Invalid(path, f"expected {_range_text(what, bounds)}, got {_shown(value)}")


# -- whole-experiment checks ----------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is safe as part of a run directory's name."""
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class LayerShape:
    """What a layer turns its input into, computed without TensorFlow."""

    output: tuple[int, ...]
    params: int


def infer_shapes(model: ModelConfig) -> list[LayerShape]:
    """Propagate the image shape through the layers and count parameters.

    Raises:
        _Invalid: when a layer cannot follow the previous one or shrinks the image to nothing.
    """
    shape: tuple[int, ...] = IMAGE_SHAPE
    out = []
    for i, layer in enumerate(model.layers):
        path = f"model.layers[{i}]"
        bias = 0 if layer.batch_norm else 1  # batch norm's offset plays the bias's role
        norm = 3 if layer.batch_norm else 0  # offset, moving mean, moving variance
        if isinstance(layer, ConvLayer):
            if len(shape) != 3:
                raise _Invalid(path, "a conv layer cannot follow a dense layer")
            height, width, channels = shape
            if layer.padding == "valid" and layer.kernel > min(height, width):
                raise _Invalid(
                    _sub(path, "kernel"),
                    f"kernel {layer.kernel} is larger than the {height}x{width} input (padding: valid)",
                )
            if layer.stride > min(height, width):
                raise _Invalid(
                    _sub(path, "stride"),
                    f"stride {layer.stride} is larger than the {height}x{width} input: "
                    "the stack of strided layers shrinks the image to nothing",
                )
            height, width = (
                _conv_side(s, layer.kernel, layer.stride, layer.padding) for s in (height, width)
            )
            shape = (height, width, layer.filters)
            params = layer.kernel * layer.kernel * channels * layer.filters
            params += (bias + norm) * layer.filters
        else:
            fan_in = math.prod(shape)
            shape = (layer.units,)
            params = fan_in * layer.units + (bias + norm) * layer.units
        out.append(LayerShape(shape, params))
    return out


def _conv_side(side: int, kernel: int, stride: int, padding: str) -> int:
    if padding == "same":
        return -(-side // stride)
    return -(-(side - kernel + 1) // stride)


def parameter_count(model: ModelConfig) -> int:
    """Number of trainable parameters plus batch-norm statistics, as the graph will hold."""
    return sum(s.params for s in infer_shapes(model))


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _check_experiment(exp: Experiment) -> None:
    if not is_valid_name(exp.name):
        raise _Invalid("name", f"expected {NAME_RULE}, got {_shown(exp.name)}")
    layers = exp.model.layers
    if not layers:
        raise _Invalid("model.layers", "expected at least one layer (the dense softmax output)")
    last = len(layers) - 1
    output = layers[last]
    out_path = f"model.layers[{last}]"
    if not isinstance(output, DenseLayer):
        raise _Invalid(out_path, "the last layer is the output: expected type dense")
    if output.units != NUM_CLASSES:
        raise _Invalid(
            _sub(out_path, "units"),
            f"the output layer needs {NUM_CLASSES} units (one per class), got {output.units}",
        )
    if output.activation != "softmax":
        raise _Invalid(
            _sub(out_path, "activation"), f"the output layer must be softmax, got {output.activation!r}"
        )
    if output.dropout:
        raise _Invalid(_sub(out_path, "dropout"), "the output layer cannot have dropout")
    for i, layer in enumerate(layers[:last]):
        if layer.activation == "softmax":
            raise _Invalid(f"model.layers[{i}].activation", "softmax belongs to the output layer only")
    shapes = infer_shapes(exp.model)
    for i, s in enumerate(shapes):
        if 0 in s.output or min(s.output) < 1:
            raise _Invalid(
                f"model.layers[{i}].stride",
                f"shrinks the image to nothing (output {'x'.join(map(str, s.output))})",
            )
    _check_memory(exp, shapes)
    train_images = exp.data.train_size or 60000
    if exp.data.validation is not None:
        if exp.data.validation >= train_images:
            raise _Invalid("data.validation", f"leaves no training images (of {train_images})")
        train_images -= exp.data.validation
    if exp.train.batch_size > train_images:
        raise _Invalid("train.batch_size", f"is larger than the {train_images} training images")


def _check_memory(exp: Experiment, shapes: list[LayerShape]) -> None:
    # Training holds each parameter ~4 times (value, gradient, two Adam moments) and each
    # activation ~3 times (forward value, gradient, dropout mask), in float32.
    params = sum(s.params for s in shapes)
    widest = max(range(len(shapes)), key=lambda i: shapes[i].params)
    activations = sum(math.prod(s.output) for s in shapes)
    batch = max(exp.train.batch_size, exp.train.eval_batch_size)
    need = 4 * (4 * params + 3 * activations * batch)
    have = _memory_bytes()
    if need > have * 0.8:
        raise _Invalid(
            f"model.layers[{widest}]",
            f"the model has {params:,} parameters and needs about {need / 2**30:.1f} GiB to train "
            f"at batch {batch}; this machine has {have / 2**30:.1f} GiB",
        )


# -- writing back -------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config object, tags first, as written to ``config.yaml``."""
    if dataclasses.is_dataclass(obj):
        out = {}
        if getattr(obj, "tag", ""):
            out[obj.tag_key] = obj.tag
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def dump_yaml(exp: Experiment) -> str:
    """The resolved config as YAML text; reading it back gives an equal Experiment."""
    return yaml.safe_dump(to_dict(exp), sort_keys=False, default_flow_style=None)


def apply_to(exp: Experiment, overrides: typing.Sequence[str], source: str) -> Experiment:
    """``exp`` with ``--set`` overrides applied and validated (used when resuming a run)."""
    raw = to_dict(exp)
    overridden = apply_overrides(raw, overrides)
    return parse_experiment(raw, source, overridden)


def diff_configs(old: Experiment, new: Experiment) -> list[dict[str, Any]]:
    """The keys whose values differ, as ``{"key", "old", "new"}`` in schema order."""
    a, b = flatten(to_dict(old)), flatten(to_dict(new))
    keys = list(a) + [k for k in b if k not in a]
    return [{"key": k, "old": a.get(k), "new": b.get(k)} for k in keys if a.get(k) != b.get(k)]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"layers": [{"units": 3}]}}`` -> ``{"model.layers[0].units": 3}``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, _sub(prefix, str(key))))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, _sub(prefix, i)))
        return out if data else {prefix: []}
    return {prefix: data}
