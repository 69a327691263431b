"""Checks of a whole experiment: names, the output layer, shapes through the layers, and the
preflight that asks whether *this* machine can train it.

``check_experiment`` is pure (it depends on the config alone) and runs whenever a config is
parsed, including when a run directory is read. ``preflight`` looks at the machine, so it runs
only before training and in ``validate``: a run trained on a bigger machine still loads here.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from mnistctl.config.datasets import unknown_dataset
from mnistctl.config.parsing import Invalid, shown, sub
from mnistctl.config.schema import IMAGE_SHAPE, NUM_CLASSES, DenseLayer, Experiment, ModelConfig, Shape

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is safe as part of a run directory's name."""
    return bool(_NAME.fullmatch(name))  # not match: "$" would let a final newline through


@dataclass(frozen=True)
class LayerShape:
    """What a layer turns its input into, computed without TensorFlow."""

    output: Shape
    params: int
    multiply_adds: int


def infer_shapes(model: ModelConfig) -> list[LayerShape]:
    """Propagate the image shape through the layers; count parameters and multiply-adds.

    Raises:
        Invalid: when a layer cannot follow the previous one or shrinks the image to nothing.
    """
    shape: Shape = IMAGE_SHAPE
    out = []
    for i, layer in enumerate(model.layers):
        try:
            output = layer.output_shape(shape)
            out.append(LayerShape(output, layer.parameters(shape), layer.multiply_adds(shape)))
        except Invalid as err:
            path = f"model.layers[{i}]"
            raise Invalid(sub(path, err.path) if err.path else path, err.message) from None
        if min(output) < 1:
            raise Invalid(
                f"model.layers[{i}].stride",
                f"shrinks the image to nothing (output {'x'.join(map(str, output))})",
            )
        shape = output
    return out


def parameter_count(model: ModelConfig) -> int:
    """Number of trainable parameters plus batch-norm statistics, as the graph will hold."""
    return sum(s.params for s in infer_shapes(model))


def check_experiment(exp: Experiment) -> None:
    """Everything about a parsed experiment that the field types alone cannot say."""
    if not is_valid_name(exp.name):
        raise Invalid("name", f"expected {NAME_RULE}, got {shown(exp.name)}")
    layers = exp.model.layers
    if not layers:
        raise Invalid("model.layers", "expected at least one layer (the dense softmax output)")
    last = len(layers) - 1
    output = layers[last]
    out_path = f"model.layers[{last}]"
    if not isinstance(output, DenseLayer):
        raise Invalid(out_path, "the last layer is the output: expected type dense")
    if output.units != NUM_CLASSES:
        raise Invalid(
            sub(out_path, "units"),
            f"the output layer needs {NUM_CLASSES} units (one per class), got {output.units}",
        )
    if output.activation != "softmax":
        raise Invalid(
            sub(out_path, "activation"), f"the output layer must be softmax, got {output.activation!r}"
        )
    if output.dropout:
        raise Invalid(sub(out_path, "dropout"), "the output layer cannot have dropout")
    for i, layer in enumerate(layers[:last]):
        if getattr(layer, "activation", None) == "softmax":
            raise Invalid(f"model.layers[{i}].activation", "softmax belongs to the output layer only")
    infer_shapes(exp.model)
    if (why := unknown_dataset(exp.data.dataset)) is not None:
        raise Invalid("data.dataset", why)
    train_images = exp.data.train_size or 60000
    if exp.data.validation is not None:
        if exp.data.validation >= train_images:
            raise Invalid("data.validation", f"leaves no training images (of {train_images})")
        train_images -= exp.data.validation
    if exp.train.batch_size > train_images:
        raise Invalid("train.batch_size", f"is larger than the {train_images} training images")
    schedule = exp.schedule
    if getattr(schedule, "tag", "") == "one_cycle":
        if schedule.warmup >= schedule.steps:
            raise Invalid(
                "schedule.warmup", f"must be below schedule.steps ({schedule.steps}), got {schedule.warmup}"
            )
        if schedule.lr_min >= schedule.lr0:
            raise Invalid(
                "schedule.lr_min", f"must be below schedule.lr0 ({schedule.lr0}), got {schedule.lr_min}"
            )
    for rule in ("stop_at", "early_stopping"):
        setting = getattr(exp.train, rule)
        if setting and setting.metric == "validation_accuracy" and not exp.data.validation:
            raise Invalid(
                f"train.{rule}.metric",
                "validation_accuracy needs a hold-out: set data.validation (or use test_accuracy)",
            )


def memory_bytes() -> int:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def training_memory_bytes(exp: Experiment) -> int:
    """A rough upper estimate of the memory training ``exp`` takes."""
    # Training holds each parameter ~4 times (value, gradient, two Adam moments) and each
    # activation ~3 times (forward value, gradient, dropout mask), in float32.
    shapes = infer_shapes(exp.model)
    params = sum(s.params for s in shapes)
    activations = sum(math.prod(s.output) for s in shapes)
    batch = max(exp.train.batch_size, exp.train.eval_batch_size)
    return 4 * (4 * params + 3 * activations * batch)


def preflight(exp: Experiment) -> None:
    """Whether this machine can train ``exp``.

    Raises:
        Invalid: at the widest layer when training would need most of the machine's memory.
    """
    shapes = infer_shapes(exp.model)
    need, have = training_memory_bytes(exp), memory_bytes()
    if need > have * 0.8:
        widest = max(range(len(shapes)), key=lambda i: shapes[i].params)
        params = sum(s.params for s in shapes)
        batch = max(exp.train.batch_size, exp.train.eval_batch_size)
        raise Invalid(
            f"model.layers[{widest}]",
            f"the model has {params:,} parameters and needs about {need / 2**30:.1f} GiB to train "
            f"at batch {batch}; this machine has {have / 2**30:.1f} GiB",
        )
