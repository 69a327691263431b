"""Experiment configs: YAML in, frozen dataclasses out, strictly checked before any graph.

``load_config`` reads a YAML file, applies ``--set`` overrides, and either returns an
:class:`Experiment` or raises a :class:`ConfigError` whose one-line message names the file, the
key path and the problem::

    configs/conv.yaml: model.layers[1].stride: expected an integer >= 1, got 0

The package by concern: ``schema`` (declarations), ``parsing`` (the generic strict parser),
``overrides`` (YAML reading and ``--set``), ``checks`` (whole-experiment checks and the
machine preflight), ``serialize`` (``config.yaml`` and diffs), ``loading`` (all of it in order).
Nothing here imports TensorFlow, so validating a config is instant.
"""

from mnistctl.config.checks import (
    NAME_RULE,
    LayerShape,
    infer_shapes,
    is_valid_name,
    parameter_count,
    training_memory_bytes,
)
from mnistctl.config.loading import apply_to, check_machine, load_config, parse_experiment
from mnistctl.config.overrides import ConfigError, read_yaml
from mnistctl.config.parsing import flatten, to_dict
from mnistctl.config.schema import (
    DATASETS,
    IMAGE_SHAPE,
    LAYERS,
    NUM_CLASSES,
    OPTIMIZERS,
    Activation,
    AdamConfig,
    AugmentConfig,
    ConvLayer,
    DataConfig,
    DenseLayer,
    EarlyStopping,
    Experiment,
    InitConfig,
    LayerConfig,
    MaxPoolLayer,
    ModelConfig,
    OptimizerConfig,
    SgdConfig,
    StopAt,
    TrainConfig,
)
from mnistctl.config.serialize import diff_configs, dump_yaml

__all__ = [
    "DATASETS",
    "IMAGE_SHAPE",
    "LAYERS",
    "NAME_RULE",
    "NUM_CLASSES",
    "OPTIMIZERS",
    "Activation",
    "AdamConfig",
    "AugmentConfig",
    "ConfigError",
    "ConvLayer",
    "DataConfig",
    "DenseLayer",
    "EarlyStopping",
    "Experiment",
    "InitConfig",
    "LayerConfig",
    "LayerShape",
    "MaxPoolLayer",
    "ModelConfig",
    "OptimizerConfig",
    "SgdConfig",
    "StopAt",
    "TrainConfig",
    "apply_to",
    "check_machine",
    "diff_configs",
    "dump_yaml",
    "flatten",
    "infer_shapes",
    "is_valid_name",
    "load_config",
    "parameter_count",
    "parse_experiment",
    "read_yaml",
    "to_dict",
    "training_memory_bytes",
]
