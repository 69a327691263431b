"""Config validation: every shipped config, and bad configs with their exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mnistctl.cli import main
from mnistctl.config import (
    ConfigError,
    ConvLayer,
    DenseLayer,
    dump_yaml,
    flatten,
    load_config,
    parameter_count,
    parse_experiment,
)

from .conftest import CONFIGS

# Parameter counts worked out by hand: weights + biases per layer.
EXPECTED_PARAMETERS = {
    "softmax": 784 * 10 + 10,
    "five_layers_sigmoid": 784 * 200 + 200 + 200 * 100 + 100 + 100 * 60 + 60 + 60 * 30 + 30 + 30 * 10 + 10,
    "five_layers_relu": 185300,
    "five_layers_relu_lrdecay": 185300,
    "five_layers_relu_lrdecay_dropout": 185300,
    # conv 5x5x1x4, 4x4x4x8, 4x4x8x12 (each + bias), dense 7*7*12 -> 200 -> 10
    "conv": (25 * 4 + 4) + (16 * 4 * 8 + 8) + (16 * 8 * 12 + 12) + (588 * 200 + 200) + (200 * 10 + 10),
    # conv 6x6x1x6, 5x5x6x12, 4x4x12x24, dense 7*7*24 -> 200 -> 10
    "conv_dropout": (36 * 6 + 6) + (25 * 6 * 12 + 12) + (16 * 12 * 24 + 24) + (1176 * 200 + 200) + 2010,
    # batch norm replaces each hidden bias by an offset and adds a moving mean and variance
    "batchnorm_five_layers_relu": (784 * 200 + 200 * 100 + 100 * 60 + 60 * 30 + 30 * 10) + 10 + 3 * 390,
    "batchnorm_conv": (36 * 24 + 25 * 24 * 48 + 16 * 48 * 64 + 3136 * 200 + 200 * 10)
    + 10
    + 3 * (24 + 48 + 64 + 200),
    "record": (25 * 32 + 25 * 32 * 48 + 16 * 48 * 64 + 3136 * 200 + 200 * 10) + 10 + 3 * (32 + 48 + 64 + 200),
    # valid 3x3 convolutions: 28 -> 26 -> 24, stride 2 -> 12, 10, 8, stride 2 -> 4: 4 * 4 * 64 into the dense
    "record_pairs": (9 * 32 + 9 * 32 * 32 + 25 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 25 * 64 * 64)
    + (1024 * 128 + 128 * 10)
    + 10
    + 3 * (3 * 32 + 3 * 64 + 128),
    # conv weights (no biases under batch norm), then offsets and two moving statistics per channel
    "speedrun": (16 * 16 + 9 * 16 * 32 + 1568 * 128 + 128 * 10) + 10 + 3 * (16 + 32 + 128),
    "tiny": (9 * 4 + 4) + (14 * 14 * 4 * 16 + 16) + (16 * 10 + 10),
}


def shipped() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def test_every_model_of_the_walkthrough_is_shipped():
    assert {p.stem for p in shipped()} == set(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("path", shipped(), ids=lambda p: p.stem)
def test_shipped_configs_validate_with_expected_parameter_counts(path):
    exp = load_config(path)
    assert exp.name == path.stem
    assert parameter_count(exp.model) == EXPECTED_PARAMETERS[path.stem]


def test_conv_dropout_matches_the_walkthrough():
    exp = load_config(CONFIGS / "conv_dropout.yaml")
    convs = [
        (layer.kernel, layer.filters, layer.stride)
        for layer in exp.model.layers
        if isinstance(layer, ConvLayer)
    ]
    assert convs == [(6, 6, 1), (5, 12, 2), (4, 24, 2)]
    dense = [layer for layer in exp.model.layers if isinstance(layer, DenseLayer)]
    assert [(layer.units, layer.dropout) for layer in dense] == [(200, 0.25), (10, 0.0)]
    assert exp.model.init.stddev == 0.1 and exp.model.init.relu_bias == 0.1
    assert exp.train.batch_size == 100


def test_resolved_config_round_trips():
    exp = load_config(CONFIGS / "conv_dropout.yaml", ["train.steps=77"])
    again = parse_experiment(yaml.safe_load(dump_yaml(exp)), "config.yaml")
    assert again == exp
    assert again.train.steps == 77


def test_overrides_reach_nested_keys_and_list_items():
    exp = load_config(
        CONFIGS / "conv_dropout.yaml",
        [
            "model.layers[3].dropout=0.5",
            "optimizer.beta1=0.8",
            "schedule={name: constant, lr: 0.01}",
            "name=x1",
        ],
    )
    assert exp.model.layers[3].dropout == 0.5
    assert exp.optimizer.beta1 == 0.8
    assert exp.schedule(123) == 0.01
    assert exp.name == "x1"


def test_defaults_follow_the_walkthrough(write_config):
    exp = load_config(write_config("model:\n  layers:\n    - {type: dense, activation: softmax}\n"))
    assert exp.train.batch_size == 100
    assert exp.model.init.weights == "truncated_normal" and exp.model.init.stddev == 0.1
    assert exp.data.dataset == "mnist"


GOOD = """\
model:
  layers:
    - {type: conv, filters: 4, kernel: 5, stride: 1}
    - {type: conv, filters: 8, kernel: 4, stride: 2}
    - {type: dense, units: 200, activation: relu, dropout: 0.25}
    - {type: dense, units: 10, activation: softmax}
optimizer: {name: adam}
schedule: {name: exponential, lr0: 0.003, lr_min: 0.0001, decay_steps: 2000}
train: {steps: 100, batch_size: 100}
"""

# (what to change in GOOD, the expected message after "<file>: ")
BAD_CASES = [
    (
        "batch_size: 100}",
        "batch_size: 100, precision: float16}",
        "train.precision: unknown precision 'float16'; expected one of: float32, bfloat16",
    ),
    ("stride: 2}", "stride: 0}", "model.layers[1].stride: expected an integer >= 1, got 0"),
    (
        "kernel: 5,",
        "kernel: 200,",
        "model.layers[0].kernel: kernel 200 is larger than the 28x28 input (padding: same)",
    ),
    ("stride: 2}", "stride: 2.5}", "model.layers[1].stride: expected an integer >= 1, got 2.5"),
    ("stride: 2}", "stride: '2'}", "model.layers[1].stride: expected an integer >= 1, got '2'"),
    ("stride: 2}", "stride: true}", "model.layers[1].stride: expected an integer >= 1, got True"),
    ("filters: 4,", "filters: -4,", "model.layers[0].filters: expected an integer >= 1, got -4"),
    ("units: 200,", "units: 0,", "model.layers[2].units: expected an integer >= 1, got 0"),
    ("dropout: 0.25", "dropout: 1.0", "model.layers[2].dropout: expected a number >= 0 and < 1, got 1.0"),
    ("dropout: 0.25", "dropout: -0.1", "model.layers[2].dropout: expected a number >= 0 and < 1, got -0.1"),
    ("dropout: 0.25", "dropout: .nan", "model.layers[2].dropout: expected a number >= 0 and < 1, got nan"),
    (
        "activation: relu,",
        "activation: rleu,",
        "model.layers[2].activation: unknown activation 'rleu'; "
        "expected one of: relu, sigmoid, tanh, elu, softmax, linear",
    ),
    (
        "type: conv, filters: 4",
        "type: convolution, filters: 4",
        "model.layers[0].type: unknown layer type 'convolution'; expected one of: conv, dense",
    ),
    ("{type: conv, filters: 4", "{filters: 4", "model.layers[0].type: missing; expected one of: conv, dense"),
    (
        "filters: 4,",
        "filters: 4, strides: 1,",
        "model.layers[0].strides: unknown key; expected one of: type, filters, kernel, stride, padding, "
        "activation, dropout, batch_norm",
    ),
    (
        "stride: 1}",
        "stride: 1, padding: full}",
        "model.layers[0].padding: unknown padding 'full'; expected one of: same, valid",
    ),
    (
        "{name: adam}",
        "{name: adamw}",
        "optimizer.name: unknown optimizer 'adamw'; expected one of: adam, sgd",
    ),
    (
        "{name: adam}",
        "{name: adam, lr: 0.1}",
        "optimizer.lr: unknown key; expected one of: name, beta1, beta2, epsilon",
    ),
    (
        "name: exponential,",
        "name: cosine,",
        "schedule.name: unknown schedule 'cosine'; expected one of: constant, exponential",
    ),
    ("decay_steps: 2000", "decay_steps: 0", "schedule.decay_steps: expected a number > 0, got 0"),
    ("lr0: 0.003", "lr0: fast", "schedule.lr0: expected a number > 0, got 'fast'"),
    ("steps: 100,", "steps: 0,", "train.steps: expected an integer >= 1 and <= 1000000000, got 0"),
    (
        "batch_size: 100}",
        "batch_size: 100, epochs: 3}",
        "train.epochs: unknown key; expected one of: steps, batch_size, eval_every, checkpoint_every, "
        "eval_batch_size, loss_scale, seed",
    ),
    ("train: {steps: 100, batch_size: 100}", "train: [100]", "train: expected a mapping, got a list"),
    (
        "model:\n",
        "modle: {}\nmodel:\n",
        "modle: unknown key; expected one of: name, description, data, model, optimizer, schedule, train",
    ),
    (
        "{type: dense, units: 10, activation: softmax}",
        "{type: dense, units: 9, activation: softmax}",
        "model.layers[3].units: the output layer needs 10 units (one per class), got 9",
    ),
    (
        "{type: dense, units: 10, activation: softmax}",
        "{type: dense, units: 10, activation: relu}",
        "model.layers[3].activation: the output layer must be softmax, got 'relu'",
    ),
    (
        "{type: dense, units: 10, activation: softmax}",
        "{type: conv, filters: 10, activation: softmax}",
        "model.layers[3]: the last layer is the output: expected type dense",
    ),
    (
        "{type: dense, units: 200, activation: relu, dropout: 0.25}",
        "{type: dense, units: 20, activation: softmax}",
        "model.layers[2].activation: softmax belongs to the output layer only",
    ),
    (
        "    - {type: conv, filters: 8, kernel: 4, stride: 2}\n"
        "    - {type: dense, units: 200, activation: relu, dropout: 0.25}",
        "    - {type: dense, units: 200, activation: relu, dropout: 0.25}\n"
        "    - {type: conv, filters: 8, kernel: 4, stride: 2}",
        "model.layers[2]: a conv layer cannot follow a dense layer",
    ),
    (
        "- {type: dense, units: 200, activation: relu, dropout: 0.25}",
        "- {type: dense, units: 200, activation: relu, dropout: 0.25}\n    - {type: maxpool, size: 2}",
        "model.layers[3]: a maxpool layer cannot follow a dense layer",
    ),
    (
        "- {type: dense, units: 200, activation: relu, dropout: 0.25}",
        "- {type: maxpool, size: 15, padding: valid}\n    - {type: dense, units: 200}",
        "model.layers[2].size: size 15 is larger than the 14x14 input (padding: valid)",
    ),
    (
        "kernel: 4, stride: 2}",
        "kernel: 4, stride: 40}",
        "model.layers[1].stride: stride 40 is larger than the 28x28 input: the stack of strided layers "
        "shrinks the image to nothing",
    ),
    (
        "kernel: 5, stride: 1}",
        "kernel: 29, stride: 1, padding: valid}",
        "model.layers[0].kernel: kernel 29 is larger than the 28x28 input (padding: valid)",
    ),
    (
        "  layers:\n",
        "  layers: []\n  old_layers:\n",
        "model.old_layers: unknown key; expected one of: layers, init, batch_norm_decay, ema_decay",
    ),
    (
        "  layers:\n",
        "  ema_decay: 1.0\n  layers:\n",
        "model.ema_decay: expected a number > 0 and < 1, got 1.0",
    ),
    (
        "model:\n",
        "data: {dataset: cifar}\nmodel:\n",
        "data.dataset: unknown dataset 'cifar'; expected one of: mnist, fashion",
    ),
    (
        "model:\n",
        "name: 'my run/../x'\nmodel:\n",
        "name: expected 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, "
        "got 'my run/../x'",
    ),
    (
        "batch_size: 100}",
        "batch_size: 100, seed: -1}",
        "train.seed: expected an integer >= 0 and < 2147483648, got -1",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message"), BAD_CASES, ids=[c[2].split(":")[0] + f"-{i}" for i, c in enumerate(BAD_CASES)]
)
def test_bad_config_gives_one_exact_line(write_config, old, new, message):
    assert old in GOOD, old
    path = write_config(GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}")
    result = CliRunner().invoke(main, ["validate", str(path)])  # the same through the CLI
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}: {message}") and result.output.count("\n") == 1


def test_good_base_config_is_valid(write_config):
    assert parameter_count(load_config(write_config(GOOD)).model) > 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty; expected a mapping of settings"),
        ("# only a comment\n", "the file is empty; expected a mapping of settings"),
        ("- 1\n- 2\n", "expected a mapping of settings, got a list"),
        ("model: {layers: [}\n", "line 1, column 18: invalid YAML"),
        ("model:\n  layers:\n\t- x\n", "line 3, column 1: invalid YAML"),
        ("a: &x [1]\nb: *x\n", "line 2, column 4: invalid YAML: aliases (*name) are not supported"),
    ],
)
def test_unreadable_yaml(write_config, text, message):
    path = write_config(text)
    with pytest.raises(ConfigError, match="^" + __import__("re").escape(f"{path}: {message}")):
        load_config(path)


def test_missing_file_directory_and_binary(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_config(tmp_path)
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"model: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 7\)"):
        load_config(binary)


def test_a_shipped_config_is_named_by_name_from_any_directory(tmp_path, monkeypatch):
    from mnistctl.config.shipped import SHIPPED_DIR

    monkeypatch.chdir(tmp_path)
    exp = load_config("conv_dropout")
    assert exp.name == "conv_dropout" and exp == load_config(SHIPPED_DIR / "conv_dropout.yaml")
    (tmp_path / "conv_dropout").mkdir()  # a path that exists wins over a shipped name
    with pytest.raises(ConfigError, match="is a directory"):
        load_config("conv_dropout")


@pytest.mark.parametrize(
    ("given", "hint"),
    [("conv_dropuot", "did you mean conv_dropout?"), ("mine.yaml", None), ("no/such/file.yaml", None)],
)
def test_an_unknown_config_lists_the_shipped_ones(tmp_path, monkeypatch, given, hint):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(given)
    message = str(caught.value)
    assert message.startswith(f"{given}: no such config file; ")
    assert (hint in message) if hint else ("did you mean" not in message)
    assert "usable by name: softmax, five_layers_sigmoid, " in message and "mnistctl configs" in message


def test_configs_lists_every_shipped_config_with_its_parameters():
    from mnistctl.config.shipped import shipped_configs

    result = CliRunner().invoke(main, ["configs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["config", "parameters"]
    listed = {line.split()[0]: line for line in lines[1:-1]}
    assert list(listed) == list(shipped_configs())
    assert "244,076" in listed["conv_dropout"] and "0.9928-0.9935" in listed["conv_dropout"]
    assert lines[-1].startswith("sweeps (mnistctl sweep NAME): ") and "walkthrough_tuning" in lines[-1]


def test_a_shipped_sweep_is_validated_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its base (a name too) resolves from anywhere
    result = CliRunner().invoke(main, ["validate", "conv_dropout_lr_dropout"])
    assert result.exit_code == 0, result.output
    assert "sweep conv_dropout_lr_dropout:" in result.output and ": valid" in result.output


def test_billion_laughs_is_refused_fast(write_config):
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = write_config("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # Refused at the first alias, on line 2, before anything is expanded (9**10 strings if it were).
    assert str(caught.value) == (
        f"{path}: line 2, column 10: invalid YAML: aliases (*name) are not supported in mnistctl configs"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps", "--set train.steps: expected key.path=value"),
        ("=3", "--set =3: expected key.path=value"),
        ("train..steps=3", "--set train..steps=3: bad key path 'train..steps'"),
        ("model.layers[9].units=3", "--set model.layers[9].units=3: model.layers has 4 entries"),
        ("train.steps.x=3", "--set train.steps.x=3: train.steps is not a mapping"),
        ("train.stpes=3", "--set train.stpes=3: train.stpes: unknown key; expected one of: steps,"),
        ("train.steps=-5", "--set train.steps=-5: train.steps: expected an integer >= 1"),
        ("model.layers[0].stride=[1", "--set model.layers[0].stride=[1: cannot parse the value '[1'"),
        ("model.layers[a].units=1", "--set model.layers[a].units=1: bad key path 'model.layers[a].units'"),
        ("model.layers[-5].units=3", "--set model.layers[-5].units=3: model.layers has 4 entries"),
        # A negative index counts from the end, and an error names the entry it reached.
        ("model.layers[-1].units=3", "--set model.layers[-1].units=3: model.layers[3].units: the output"),
        ("model.nope=1", "--set model.nope=1: model.nope: unknown key; expected one of: layers,"),
        ("tags=[a]", "--set tags=[a]: tags: unknown key"),
    ],
)
def test_bad_overrides_name_the_flag(write_config, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(GOOD), [override])
    assert str(caught.value).startswith(message)


def test_a_model_too_big_for_this_machine_is_refused_by_validate_and_train(write_config, tmp_path):
    path = write_config(GOOD.replace("units: 200,", "units: 1000000000,", 1))
    load_config(path)  # parsing is pure: the config itself is valid
    message = f"error: {path}: model.layers[2]: the model has 1,579,000,000,634 parameters and needs about"
    for args in (["validate", str(path)], ["train", str(path), "--runs-dir", str(tmp_path / "runs")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert not (tmp_path / "runs").exists()


def test_reading_a_run_never_checks_the_reading_machine(trained_run, monkeypatch):
    """A run trained on a bigger machine still evaluates, plots and compares on a small one."""
    from mnistctl.config import checks

    monkeypatch.setattr(checks, "memory_bytes", lambda: 1 << 20)  # a 1 MiB machine
    result = CliRunner().invoke(main, ["validate", str(trained_run / "config.yaml")])
    assert result.exit_code == 2 and "needs about" in result.output  # too small to train it...
    for args in (["eval", str(trained_run), "--json"], ["compare", str(trained_run)]):
        result = CliRunner().invoke(main, args)  # ...but reading the run is fine
        assert result.exit_code == 0, result.output


def test_flatten_gives_dotted_paths():
    assert flatten({"a": {"b": [{"c": 1}, 2]}, "d": []}) == {"a.b[0].c": 1, "a.b[1]": 2, "d": []}


def test_numbers_in_exponent_notation_are_numbers(write_config):
    """YAML 1.1 reads 1e-3 as text (it wants 1.0e-3); people write 1e-3, so it is a number."""
    path = write_config(GOOD.replace("lr0: 0.003", "lr0: 3e-3"))
    assert load_config(path).schedule.lr0 == 0.003
    assert load_config(path, ["schedule.lr0=1e-3"]).schedule.lr0 == 0.001
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer >= 1"):
        load_config(path, ["train.steps=1e3"])  # counts stay integers


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "model.init.relu_bias=1e39",
            "model.init.relu_bias: expected a number >= -100 and <= 100, got 1e+39",
        ),
        ("model.init.stddev=1e39", "model.init.stddev: expected a number > 0 and <= 100, got 1e+39"),
        ("train.loss_scale=1e39", "train.loss_scale: expected a number > 0 and <= 1000000.0, got 1e+39"),
        (
            "schedule.lr0=1e39",
            "schedule.lr0: expected a number float32 can hold (at most 3.4e+38), got 1e+39",
        ),
    ],
)
def test_numbers_float32_cannot_hold_are_refused(write_config, override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(GOOD), [override])
    assert str(caught.value) == f"--set {override}: {message}"


def test_messages_are_printed_literally(write_config):
    result = CliRunner().invoke(main, ["validate", str(write_config(GOOD)), "--set", "tags=[a]"])
    assert result.exit_code == 2 and result.output.startswith("error: --set tags=[a]: tags: unknown key")
