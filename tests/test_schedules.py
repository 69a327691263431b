import math

import pytest

from mnistctl.config import load_config
from mnistctl.schedules import SCHEDULES, Constant, Exponential


def test_exponential_is_the_walkthrough_formula():
    schedule = Exponential(lr0=0.003, lr_min=0.0001, decay_steps=2000)
    assert schedule(0) == pytest.approx(0.0031)
    assert schedule(2000) == pytest.approx(0.0001 + 0.003 / math.e)
    assert schedule(10000) == pytest.approx(0.0001 + 0.003 * math.exp(-5))
    assert schedule(10**7) == pytest.approx(0.0001)


def test_constant():
    assert Constant(lr=0.005)(0) == Constant(lr=0.005)(9999) == 0.005


def test_registry_lists_names():
    assert SCHEDULES.names() == ["constant", "exponential"]


def test_shipped_decay_config_uses_the_formula():
    exp = load_config("configs/five_layers_relu_lrdecay.yaml")
    assert exp.schedule(4000) == pytest.approx(0.0001 + 0.003 * math.exp(-2))
