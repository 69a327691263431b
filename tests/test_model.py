"""The graph builder: shapes, parameter counts, batch norm, and the registries' coverage."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from mnistctl import machine
from mnistctl.config import LAYERS, OPTIMIZERS, Activation, load_config, parameter_count
from mnistctl.machine import bfloat16_takes_effect
from mnistctl.train.loop import averaged_weights

from .conftest import CONFIGS

tf_model = pytest.importorskip("mnistctl.model")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_graph_matches_the_config(path):
    exp = load_config(path)
    g = tf_model.build_graph(exp)
    assert tf_model.count_parameters(g) == parameter_count(exp.model)
    assert g.logits.shape.as_list() == [None, 10]
    assert g.images.shape.as_list() == [None, 28, 28]


def test_tensorflow_comes_without_keras():
    """mnistctl builds tf.compat.v1 graphs only: Keras 3, which `import tensorflow` would load
    whole (1.5 s of its start-up here), is left out."""
    import sys

    keras = [name for name in sys.modules if name.split(".")[0] == "keras"]
    assert "tensorflow" in sys.modules and not keras, keras[:5]


def test_every_trainable_variable_has_a_role_declared_by_its_layer(monkeypatch):
    exp = load_config(CONFIGS / "batchnorm_conv.yaml")
    g = tf_model.build_graph(exp)
    assert [v.shape.rank for v in g.weights] == [4, 4, 4, 2, 2]  # kernels and matrices
    assert {v.shape.rank for v in g.biases} == {1} and any("offset" in v.name for v in g.biases)
    with g.graph.as_default():
        trainable = tf_model.v1.trainable_variables()
    assert len(g.weights) + len(g.biases) == len(trainable)

    def no_role(shape, init):  # a new layer type's builder that forgets to declare a role
        return tf_model.tf.Variable(tf_model.tf.zeros(shape), name="kernel")

    from mnistctl.model import layers

    monkeypatch.setattr(layers, "_weight", no_role)
    with pytest.raises(TypeError, match=r"without a role .*'layer0_conv/kernel'"):
        tf_model.build_graph(load_config(CONFIGS / "tiny.yaml"))


POOLED = """
model:
  layers:
    - {type: conv, filters: 8, kernel: 3, padding: valid}
    - {type: maxpool, size: 2}
    - {type: conv, filters: 4, kernel: 3, batch_norm: true}
    - {type: maxpool, size: 3, stride: 2, padding: same}
    - {type: dense, units: 10, activation: softmax}
"""


def test_a_maxpool_layer_is_one_schema_class_and_one_builder(write_config):
    from mnistctl.config import infer_shapes

    exp = load_config(write_config(POOLED))
    shapes = infer_shapes(exp.model)
    assert [s.output for s in shapes] == [(26, 26, 8), (13, 13, 8), (13, 13, 4), (7, 7, 4), (10,)]
    assert [s.params for s in shapes] == [9 * 8 + 8, 0, 9 * 8 * 4 + 3 * 4, 0, 196 * 10 + 10]
    assert exp.model.layers[3].describe() == "maxpool 3x3 stride 2 same"
    g = tf_model.build_graph(exp)
    assert [h.shape.as_list()[1:] for h in g.hidden] == [list(s.output) for s in shapes[:-1]]
    assert tf_model.count_parameters(g) == parameter_count(exp.model)


def test_registries_cover_every_name_the_schema_allows():
    assert set(tf_model.ACTIVATIONS.names()) == set(typing.get_args(Activation))
    assert tf_model.OPTIMIZER_BUILDERS.names() == OPTIMIZERS.names()
    assert tf_model.LAYER_BUILDERS.names() == LAYERS.names() == ["conv", "dense", "maxpool"]


def run_steps(exp, steps: int = 5):
    g = tf_model.build_graph(exp)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 32, dtype=np.uint8)
    with tf_model.make_session(g) as session:
        session.run(g.init_op)
        losses = []
        for _ in range(steps):
            feed = {g.images: images, g.labels: labels, g.learning_rate: 0.01, g.training: True}
            _, loss = session.run([g.train_op, g.loss], feed)
            losses.append(loss)
        probabilities = session.run(g.probabilities, {g.images: images})
        variables = {v.op.name: session.run(v) for v in g.graph.get_collection("variables")}
    return losses, probabilities, variables


def test_training_lowers_the_loss_on_a_fixed_batch():
    losses, probabilities, _ = run_steps(load_config(CONFIGS / "tiny.yaml"), steps=30)
    assert losses[-1] < losses[0] * 0.5
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_batch_norm_updates_its_moving_averages(write_config):
    path = write_config(
        "model:\n  layers:\n"
        "    - {type: conv, filters: 3, kernel: 3, stride: 2, batch_norm: true}\n"
        "    - {type: dense, units: 8, batch_norm: true}\n"
        "    - {type: dense, units: 10, activation: softmax}\n"
    )
    exp = load_config(path)
    _, _, variables = run_steps(exp, steps=3)
    means = [v for name, v in variables.items() if name.endswith("moving_mean")]
    assert len(means) == 2 and all(np.abs(m).sum() > 0 for m in means)
    # batch-norm layers have an offset and no bias; their count is the config's
    assert not any(name.endswith("biases") for name in variables if name.startswith("layer0"))


def test_batch_norm_is_the_fused_kernel_and_normalises_by_batch_then_by_moving_averages(write_config):
    path = write_config(
        "model:\n  layers:\n"
        "    - {type: dense, units: 6, activation: linear, batch_norm: true}\n"
        "    - {type: dense, units: 10, activation: softmax}\n"
        "  batch_norm_decay: 0.5\n"
    )
    g = tf_model.build_graph(load_config(path))
    library = g.graph.as_graph_def().library.function  # the branches of the training switch
    assert "FusedBatchNormV3" in {node.op for function in library for node in function.node_def}
    images = np.random.default_rng(1).integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = np.arange(16, dtype=np.uint8) % 10
    variables = {v.op.name.removeprefix("layer0_dense/"): v for v in g.graph.get_collection("variables")}
    with tf_model.make_session(g) as session:
        session.run(g.init_op)
        weights, offset = session.run([variables["weights"], variables["offset"]])
        pre = (images.reshape(16, -1) / 255.0).astype(np.float32) @ weights
        training = session.run(g.hidden[0], {g.images: images, g.training: True})
        epsilon = tf_model.BATCH_NORM_EPSILON
        expected = (pre - pre.mean(0)) / np.sqrt(pre.var(0) + epsilon) + offset
        assert np.allclose(training, expected, atol=1e-4)

        session.run(g.train_op, {g.images: images, g.labels: labels, g.training: True})
        moving_mean, moving_var = session.run([variables["moving_mean"], variables["moving_variance"]])
        decay = 1 / 10  # the first step's decay, (1 + step) / (10 + step), below the config's 0.5
        assert np.allclose(moving_mean, (1 - decay) * pre.mean(0), atol=1e-4)
        assert np.allclose(moving_var, decay + (1 - decay) * pre.var(0, ddof=1), rtol=1e-3)

        weights, offset = session.run([variables["weights"], variables["offset"]])
        pre = (images.reshape(16, -1) / 255.0).astype(np.float32) @ weights
        testing = session.run(g.hidden[0], {g.images: images})
        expected = (pre - moving_mean) / np.sqrt(moving_var + epsilon) + offset
        assert np.allclose(testing, expected, atol=1e-4)


def test_same_seed_same_weights_and_losses():
    exp = load_config(CONFIGS / "tiny.yaml")
    first, _, w1 = run_steps(exp)
    second, _, w2 = run_steps(exp)
    assert first == second
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("softmax", []),
        ("five_layers_relu_lrdecay", []),
        ("batchnorm_conv", []),
        ("tiny", ["schedule={name: one_cycle, lr0: 0.02, warmup: 999, steps: 8000, lr_min: 0.0001}"]),
    ],
)
def test_graph_schedule_equals_the_python_one(name, overrides):
    exp = load_config(CONFIGS / f"{name}.yaml", overrides)
    g = tf_model.build_graph(exp)
    rate = g.graph.get_tensor_by_name("learning_rate:0")
    with tf_model.make_session(g) as session:
        session.run(g.init_op)
        for step in (0, 1, 999, 2000, 7777, 10000):
            session.run(g.global_step.assign(step))
            assert session.run(rate) == pytest.approx(exp.schedule(step), rel=1e-6)


def test_label_smoothing_changes_the_objective_not_the_reported_loss():
    plain = load_config(CONFIGS / "tiny.yaml")
    smoothed = load_config(CONFIGS / "tiny.yaml", ["train.label_smoothing=0.2"])
    first_plain, _, w_plain = run_steps(plain, steps=3)
    first_smoothed, _, w_smoothed = run_steps(smoothed, steps=3)
    assert first_plain[0] == first_smoothed[0]  # before any step: the same weights, the same plain loss
    assert any(not np.array_equal(w_plain[k], w_smoothed[k]) for k in w_plain)  # another gradient


def test_bfloat16_precision_rewrites_the_graph_and_stays_deterministic():
    exp = load_config(CONFIGS / "tiny.yaml", ["train.precision=bfloat16"])
    g = tf_model.build_graph(exp)
    with tf_model.make_session(g) as session:
        options = session._config.graph_options.rewrite_options
        assert options.auto_mixed_precision_onednn_bfloat16 == options.ON
    first, probabilities, _ = run_steps(exp, steps=30)
    second, _, _ = run_steps(exp, steps=30)
    assert first == second and first[-1] < first[0] * 0.5
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-2)
    full, _, _ = run_steps(load_config(CONFIGS / "tiny.yaml"), steps=30)
    if bfloat16_takes_effect():
        assert first != full  # bfloat16 rounding shows: the rewrite took effect
    elif not machine.onednn_enabled() or "avx512f" not in machine.cpu_flags():
        assert first == full  # no rewrite: float32, exactly as the warning says
    assert abs(first[-1] - full[-1]) < 0.1 * full[0]


def test_weight_averages_follow_the_weights_and_swap_in_and_out():
    """model.ema_decay: after step k the average moves toward the new weights with decay
    min(ema_decay, (1 + k) / (10 + k)); inside ``averaged_weights`` the model computes with the
    averages, and afterwards with exactly the trained weights again."""
    exp = load_config(CONFIGS / "tiny.yaml", ["model.ema_decay=0.3"])
    g = tf_model.build_graph(exp)
    variables = [*g.weights, *g.biases]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (32, 28, 28), dtype=np.uint8)
    feed = {g.images: images, g.labels: rng.integers(0, 10, 32, dtype=np.uint8), g.training: True}
    with tf_model.make_session(g) as session:
        session.run(g.init_op)
        expected = session.run(variables)
        for step in range(1, 7):
            session.run(g.train_op, feed)
            trained = session.run(variables)
            decay = min(0.3, (1 + step) / (10 + step))
            expected = [decay * e + (1 - decay) * w for e, w in zip(expected, trained, strict=True)]
        plain = session.run(g.probabilities, {g.images: images})
        with averaged_weights(session, g):
            inside = session.run(variables)
            averaged = session.run(g.probabilities, {g.images: images})
        after = session.run(variables)
    for got, want in zip(inside, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, t) for a, t in zip(after, trained, strict=True))
    assert not np.allclose(plain, averaged)


def test_without_ema_decay_averaged_weights_changes_nothing():
    g = tf_model.build_graph(load_config(CONFIGS / "tiny.yaml"))
    assert g.swap_averages is None
    with tf_model.make_session(g) as session:
        session.run(g.init_op)
        before = session.run(list(g.weights))
        with averaged_weights(session, g):
            inside = session.run(list(g.weights))
    assert all(np.array_equal(a, b) for a, b in zip(before, inside, strict=True))
