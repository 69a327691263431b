"""Inside the network: what each layer makes of one input, and the parameters that made it.

The drawing page of ``serve`` shows it as you draw. A run directory is read from its
checkpoint; an export carries it as a second signature, ``activations`` (input ``images``; one
output per layer, named by the layer's scope - ``layer0_conv``, ... the logits last - and
``probabilities``), beside an unchanged ``serving_default``. The parameters are the export's
own variables, named in ``mnistctl.json``'s ``layers``. No TensorFlow here: the server and the
checks before a fork read this too.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import numpy as np

from mnistctl.config import IMAGE_SHAPE, Experiment

SIGNATURE = "activations"
# The variables a layer builder makes, by their last name (mnistctl.model.layers).
PARAMETERS = ("weights", "biases", "offset", "moving_mean", "moving_variance")


def describe_layers(exp: Experiment) -> list[dict[str, Any]]:
    """Each layer as the page draws it: its scope name, its config, a line of text and its
    output shape for one image."""
    shape, layers = IMAGE_SHAPE, []
    for i, layer in enumerate(exp.model.layers):
        shape = layer.output_shape(shape)
        entry = {"name": layer.scope(i), "type": layer.tag, **dataclasses.asdict(layer)}
        if hasattr(layer, "step"):  # a max-pool's stride defaults to its size
            entry["stride"] = layer.step
        entry |= {"text": layer.describe(), "shape": list(shape)}
        layers.append(entry)
    return layers


def pack_float32(values: np.ndarray) -> dict[str, Any]:
    """An array exactly, as little-endian float32 bytes in base64 with its shape: a third of the
    size of the numbers written out, and the page can add them up to the same sums."""
    array = np.ascontiguousarray(values, dtype="<f4")
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode()}


def unpack_float32(packed: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(packed["float32"]), "<f4").reshape(packed["shape"])
