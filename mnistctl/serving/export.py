"""From checkpoint to production: a SavedModel for TensorFlow Serving, and a loaded predictor.

The exported graph is an inference graph built from the run's config: input ``images``
float32 ``[N, 28, 28, 1]`` in [0, 1]; outputs ``probabilities`` ``[N, 10]`` and ``classes``
``[N]``; dropout off and batch norm on its moving averages. Its variables come from the run's
best checkpoint. A second signature, ``activations``, answers every layer's output for the
same input (:mod:`mnistctl.serving.inside`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistctl._tf import tf
from mnistctl.config import IMAGE_SHAPE, NUM_CLASSES, Experiment
from mnistctl.files import to_json
from mnistctl.many.ensemble import Member, describe_members
from mnistctl.model import build_logits, checkpoint_names
from mnistctl.model.layers import BATCH_NORM_EPSILON
from mnistctl.run.checkpoints import (
    ExportError,
    check_export_target,
    resolve,
    restore_variables,
    saved_model_path,
)
from mnistctl.run.directory import Run, load_run
from mnistctl.serving.info import INFO_FILE, read_info
from mnistctl.serving.inside import PARAMETERS, describe_layers, pack_float32
from mnistctl.serving.inside import SIGNATURE as INSIDE

v1 = tf.compat.v1
SIGNATURE = "serving_default"
TAG = "serve"
INPUT = {"name": "images", "dtype": "float32", "shape": [None, 28, 28, 1], "range": [0, 1]}


@dataclass(frozen=True)
class InferenceGraph:
    graph: tf.Graph
    images: tf.Tensor  # float32 [N, 28, 28, 1] in [0, 1]
    probabilities: tf.Tensor
    classes: tf.Tensor
    averaged: bool  # restore the weights' moving averages (model.ema_decay) instead of the weights
    inside: Inside | None = None  # what the activations signature answers


@dataclass(frozen=True)
class Inside:
    """Each layer of one model: its description (:func:`describe_layers`), its output and its
    parameters' values, in the graph's order."""

    layers: list[dict[str, Any]]
    outputs: list[tf.Tensor]
    parameters: list[dict[str, tf.Tensor]]

    def described(self) -> list[dict[str, Any]]:
        """The layers as mnistctl.json keeps them: each parameter by its tensor's name."""
        return [
            layer | {"parameters": {name: t.name for name, t in values.items()}}
            for layer, values in zip(self.layers, self.parameters, strict=True)
        ]


def _inside(exp: Experiment, outputs: Sequence[tf.Tensor], scope: str = "") -> Inside:
    """Each layer's output and, read from its variables (``<variable>_value``), its parameters."""
    variables = {v.op.name: v for v in v1.global_variables()}
    layers, parameters = describe_layers(exp), []
    for layer in layers:
        found = {}
        for name in PARAMETERS:
            variable = variables.get(f"{scope}{layer['name']}/{name}")
            if variable is not None:
                found[name] = tf.identity(variable, name=f"{variable.op.name}_value")
        parameters.append(found)
        if layer.get("batch_norm"):
            layer["epsilon"] = BATCH_NORM_EPSILON
    return Inside(layers, list(outputs), parameters)


def build_inference_graph(exp: Experiment) -> InferenceGraph:
    """The model alone, in inference mode, with the training graph's variable names."""
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, *IMAGE_SHAPE], name="images")
        global_step = v1.train.get_or_create_global_step()
        logits, hidden = build_logits(images, exp, tf.constant(False), global_step)
        probabilities = tf.nn.softmax(logits, name="probabilities")
        classes = tf.argmax(logits, axis=1, name="classes")
        inside = _inside(exp, [*hidden, logits])
    return InferenceGraph(graph, images, probabilities, classes, exp.model.ema_decay is not None, inside)


def _restore(session: v1.Session, g: InferenceGraph, prefix: str) -> None:
    with g.graph.as_default():
        names = checkpoint_names(v1.global_variables(), g.averaged)
    restore_variables(session, g.graph, names, prefix)


def export_saved_model(target: Path, out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write a SavedModel of ``target``'s best checkpoint (or the named one) to ``out``.

    Returns:
        What was exported (also written to ``out/mnistctl.json``).
    """
    run_dir, prefix = resolve(target)
    run = load_run(run_dir)
    exp = run.trained_experiment()
    check_export_target(out, overwrite)
    g = build_inference_graph(exp)
    with v1.Session(graph=g.graph) as session:
        _restore(session, g, prefix)
        return _write(session, g, out, describe(run, exp, prefix))


def export_ensemble(members: Sequence[Member], out: Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write one SavedModel whose ``serving_default`` averages the members' probabilities.

    Same input and outputs as a single model's export; each member's layers sit under its own
    name scope (``member0/``, ...) with the variables of its selected checkpoint.
    """
    check_export_target(out, overwrite)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, *IMAGE_SHAPE], name="images")
        global_step = v1.train.get_or_create_global_step()  # read by dropout seeds only; off here
        restores, outputs, inside = [], [], None
        for i, member in enumerate(members):
            exp = member.experiment
            with tf.name_scope(f"member{i}"):
                logits, hidden = build_logits(images, exp, tf.constant(False), global_step)
                outputs.append(tf.nn.softmax(logits))
            if i == 0:  # the activations signature shows the first member's layers
                inside = _inside(exp, [*hidden, logits], scope="member0/")
            scoped = [v for v in v1.global_variables() if v.op.name.startswith(f"member{i}/")]
            names = checkpoint_names(scoped, exp.model.ema_decay is not None)
            names = {name.removeprefix(f"member{i}/"): v for name, v in names.items()}
            restores.append((names, member.checkpoint))
        probabilities = tf.identity(tf.add_n(outputs) / len(outputs), name="probabilities")
        classes = tf.argmax(probabilities, axis=1, name="classes")
        initialize = v1.variables_initializer([global_step])
    g = InferenceGraph(graph, images, probabilities, classes, averaged=False, inside=inside)
    first = members[0].experiment
    info = {
        "run": None,
        "run_name": f"ensemble of {len(members)} runs",
        "config": first.name,
        "dataset": first.data.dataset,
        "classes": _class_names(first),
        "input": INPUT,
        "members": describe_members(members),
        "inside_of": f"the first of the {len(members)} members, {members[0].run.name}",
    }
    with v1.Session(graph=graph) as session:
        session.run(initialize)
        for names, prefix in restores:
            restore_variables(session, graph, names, prefix)
        return _write(session, g, out, info)


def _write(session: v1.Session, g: InferenceGraph, out: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Save the session's graph as a SavedModel at ``out``, with ``info`` beside it."""
    # Build in a temporary directory beside the target and rename: never half an export.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        builder = v1.saved_model.Builder(str(staging / "model"))
        signatures = {
            SIGNATURE: v1.saved_model.predict_signature_def(
                inputs={"images": g.images}, outputs={"probabilities": g.probabilities, "classes": g.classes}
            )
        }
        if g.inside is not None:
            layers = {layer["name"]: t for layer, t in zip(g.inside.layers, g.inside.outputs, strict=True)}
            signatures[INSIDE] = v1.saved_model.predict_signature_def(
                inputs={"images": g.images}, outputs={**layers, "probabilities": g.probabilities}
            )
            info = info | {"layers": g.inside.described()}
        builder.add_meta_graph_and_variables(session, [TAG], signature_def_map=signatures)
        builder.save()
        (staging / "model" / INFO_FILE).write_text(to_json(info, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        (staging / "model").rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def describe(run: Run, exp: Experiment, prefix: str) -> dict[str, Any]:
    """What a served or exported model is: shown by /metadata and saved as mnistctl.json."""
    return {
        "run": str(run.path),
        "run_name": run.name,
        "checkpoint": prefix,
        "step": int(prefix.rsplit("-", 1)[1]),
        "config": exp.name,
        "dataset": exp.data.dataset,
        "best_test_accuracy": run.record.best_test_accuracy,
        "classes": _class_names(exp),
        "input": INPUT,
    }


def _class_names(exp: Experiment) -> list[str]:
    from mnistctl.data import get_spec

    return list(get_spec(exp.data.dataset).classes)


def _serving_session(graph: tf.Graph) -> v1.Session:
    # One image is too little work to split across cores: each call runs on one thread, and
    # concurrent calls (the server's thread pool) use the cores side by side instead.
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    return v1.Session(graph=graph, config=config)


class Predictor:
    """A model loaded once, from a run directory or an exported SavedModel, for many calls.

    ``predict`` is safe to call from several threads: a Session runs concurrent calls.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        self.inside: Inside | None = None  # the layers, when the model can show them
        self.inside_missing = ""  # why it cannot
        saved_model = saved_model_path(source)
        if saved_model is not None:
            self._load_saved_model(saved_model)
        else:
            self._load_run(source)
        self.info["signatures"] = [SIGNATURE] + ([INSIDE] if self.inside is not None else [])
        self._lock = threading.Lock()  # guards only the counters below
        self.requests = 0
        self._parameters: list[dict[str, Any]] | None = None

    def _load_saved_model(self, path: Path) -> None:
        graph = tf.Graph()
        self.session = _serving_session(graph)
        try:
            meta = v1.saved_model.loader.load(self.session, [TAG], str(path))
        except (tf.errors.OpError, RuntimeError, OSError, ValueError) as err:
            raise ExportError(f"{path}: cannot load the SavedModel ({str(err).splitlines()[0]})") from None
        signature = meta.signature_def[SIGNATURE]
        self.images = graph.get_tensor_by_name(signature.inputs["images"].name)
        self.probabilities = graph.get_tensor_by_name(signature.outputs["probabilities"].name)
        self.info = read_info(path)
        self.info["source"] = "saved_model"
        self.info["version"] = int(path.name) if path.name.isdigit() else 1
        layers = self.info.pop("layers", None)
        if INSIDE not in meta.signature_def or not isinstance(layers, list):
            self.inside_missing = (
                f"{path}: this export has no {INSIDE!r} signature (exported by an older mnistctl): "
                "export the run again to see inside the network"
            )
            return
        outputs = meta.signature_def[INSIDE].outputs
        try:
            self.inside = Inside(
                [{k: v for k, v in layer.items() if k != "parameters"} for layer in layers],
                [graph.get_tensor_by_name(outputs[layer["name"]].name) for layer in layers],
                [
                    {k: graph.get_tensor_by_name(n) for k, n in layer["parameters"].items()}
                    for layer in layers
                ],
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            self.inside_missing = (
                f"{path / INFO_FILE}: its layers do not match the SavedModel's {INSIDE!r} signature: "
                "export the run again to see inside the network"
            )

    def _load_run(self, target: Path) -> None:
        run_dir, prefix = resolve(target)
        run = load_run(run_dir)
        exp = run.trained_experiment()
        g = build_inference_graph(exp)
        self.session = _serving_session(g.graph)
        _restore(self.session, g, prefix)
        g.graph.finalize()
        self.images, self.probabilities, self.inside = g.images, g.probabilities, g.inside
        self.info = describe(run, exp, prefix) | {"source": "checkpoint"}

    @property
    def classes(self) -> list[str]:
        """The class names, index by index (digits, or Fashion-MNIST's garments)."""
        return self.info.get("classes") or [str(i) for i in range(NUM_CLASSES)]

    def labelled(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """Each row of ``predict``'s output as ``{"class", "label", "probabilities"}``."""
        classes = self.classes
        return [
            {
                "class": int(np.argmax(row)),
                "label": classes[int(np.argmax(row))],
                "probabilities": [float(p) for p in row],  # as computed: 1e-9 is not 0
            }
            for row in probabilities
        ]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities ``[N, 10]`` for float images ``[N, 28, 28, 1]`` (or ``[N, 28, 28]``) in [0, 1]."""
        images = np.asarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
        with self._lock:
            self.requests += 1
        return self.session.run(self.probabilities, {self.images: images})

    def parameters(self) -> list[dict[str, Any]]:
        """Each layer's description with its parameters (``pack_float32``), read once.

        Raises:
            ExportError: the model cannot show its layers (``inside_missing`` says why).
        """
        if self.inside is None:
            raise ExportError(self.inside_missing)
        if self._parameters is None:
            values = self.session.run(self.inside.parameters)
            self._parameters = [
                layer | {"parameters": {name: pack_float32(v) for name, v in found.items()}}
                for layer, found in zip(self.inside.layers, values, strict=True)
            ]
        return self._parameters

    def activations(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(probabilities ``[N, 10]``, each layer's output ``[N, ...]``) for float images in [0, 1].

        Raises:
            ExportError: the model cannot show its layers (``inside_missing`` says why).
        """
        if self.inside is None:
            raise ExportError(self.inside_missing)
        images = np.asarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
        with self._lock:
            self.requests += 1
        probabilities, layers = self.session.run(
            [self.probabilities, self.inside.outputs], {self.images: images}
        )
        return probabilities, layers

    def close(self) -> None:
        self.session.close()
