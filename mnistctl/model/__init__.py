"""A config as a TensorFlow 1 graph (:mod:`~mnistctl.model.graph`), built layer by layer
(:mod:`~mnistctl.model.layers`), and as a standalone script (:mod:`~mnistctl.model.script`)."""

from mnistctl.model.graph import (
    AVERAGE,
    OPTIMIZER_BUILDERS,
    TF_OPS,
    Graph,
    build_graph,
    build_logits,
    build_optimizer,
    build_schedule,
    checkpoint_names,
    count_parameters,
    make_session,
    tf,
    tf_errors,
    v1,
)
from mnistctl.model.layers import ACTIVATIONS, BATCH_NORM_EPSILON, LAYER_BUILDERS, LayerContext

__all__ = [
    "ACTIVATIONS",
    "AVERAGE",
    "BATCH_NORM_EPSILON",
    "LAYER_BUILDERS",
    "OPTIMIZER_BUILDERS",
    "TF_OPS",
    "Graph",
    "LayerContext",
    "build_graph",
    "build_logits",
    "build_optimizer",
    "build_schedule",
    "checkpoint_names",
    "count_parameters",
    "make_session",
    "tf",
    "tf_errors",
    "v1",
]
