import math

import pytest

from mnistctl.config import ConfigError, load_config
from mnistctl.config.schedules import SCHEDULES, Constant, Exponential, OneCycle


def test_exponential_is_the_walkthrough_formula():
    schedule = Exponential(lr0=0.003, lr_min=0.0001, decay_steps=2000)
    assert schedule(0) == pytest.approx(0.0031)
    assert schedule(2000) == pytest.approx(0.0001 + 0.003 / math.e)
    assert schedule(10000) == pytest.approx(0.0001 + 0.003 * math.exp(-5))
    assert schedule(10**7) == pytest.approx(0.0001)


def test_constant():
    assert Constant(lr=0.005)(0) == Constant(lr=0.005)(9999) == 0.005


def test_registry_lists_names():
    assert SCHEDULES.names() == ["constant", "exponential", "one_cycle"]


def test_one_cycle_warms_up_linearly_then_follows_half_a_cosine():
    schedule = OneCycle(lr0=0.01, warmup=100, steps=1100, lr_min=0.0001, start_divisor=20)
    assert schedule(0) == pytest.approx(0.0005)
    assert schedule(50) == pytest.approx(0.0005 + 0.0095 / 2)
    assert schedule(100) == pytest.approx(0.01)
    assert schedule(600) == pytest.approx(0.0001 + 0.0099 / 2)  # half-way down the cosine
    assert schedule(1100) == pytest.approx(0.0001) and schedule(5000) == pytest.approx(0.0001)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "schedule={name: one_cycle, warmup: 500, steps: 400}",
            "schedule.warmup: must be below schedule.steps (400), got 500",
        ),
        (
            "schedule={name: one_cycle, lr0: 0.01, lr_min: 0.02}",
            "schedule.lr_min: must be below schedule.lr0 (0.01), got 0.02",
        ),
    ],
)
def test_one_cycle_settings_are_checked(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config("configs/tiny.yaml", [override])
    assert str(caught.value).endswith(message)


def test_shipped_decay_config_uses_the_formula():
    exp = load_config("configs/five_layers_relu_lrdecay.yaml")
    assert exp.schedule(4000) == pytest.approx(0.0001 + 0.003 * math.exp(-2))
