"""Learning-rate schedules: small pure functions of the step, fed to the graph each step.

Computing the rate in Python keeps the schedule visible in one line of code and lets the
progress view and the metrics show exactly the value the optimizer used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from mnistctl.registry import Registry

SCHEDULES: Registry[type[ScheduleConfig]] = Registry("schedule")


@dataclass(frozen=True)
class ScheduleConfig:
    """Base of the schedule configs; `name` in YAML picks the subclass."""

    registry: ClassVar[Registry] = SCHEDULES
    tag_key: ClassVar[str] = "name"
    tag: ClassVar[str] = ""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(ScheduleConfig):
    """The same learning rate at every step.

    Attributes:
        lr: the learning rate.
    """

    tag: ClassVar[str] = "constant"
    lr: float = field(default=0.001, metadata={"gt": 0})

    def __call__(self, step: int) -> float:
        return self.lr


@SCHEDULES.register("exponential")
@dataclass(frozen=True)
class Exponential(ScheduleConfig):
    """The walk-through's decay: ``lr_min + lr0 * exp(-step / decay_steps)``.

    Attributes:
        lr0: the part of the rate that decays away (0.003 in the walk-through).
        lr_min: the floor the rate decays towards (0.0001 in the walk-through).
        decay_steps: steps for the decaying part to shrink by a factor e (2000).
    """

    tag: ClassVar[str] = "exponential"
    lr0: float = field(default=0.003, metadata={"gt": 0})
    lr_min: float = field(default=0.0001, metadata={"ge": 0})
    decay_steps: float = field(default=2000.0, metadata={"gt": 0})

    def __call__(self, step: int) -> float:
        return self.lr_min + self.lr0 * math.exp(-step / self.decay_steps)


@SCHEDULES.register("one_cycle")
@dataclass(frozen=True)
class OneCycle(ScheduleConfig):
    """Warm up, then anneal: the rate climbs linearly from ``lr0 / start_divisor`` to ``lr0``
    over ``warmup`` steps, then follows half a cosine down to ``lr_min`` at step ``steps``
    (and stays there). The schedule of fast training runs (Smith's one-cycle policy).

    Attributes:
        lr0: the peak rate.
        warmup: steps to reach the peak.
        steps: the step at which the rate reaches ``lr_min`` (usually ``train.steps``).
        lr_min: the final rate.
        start_divisor: the first rate is ``lr0 / start_divisor``.
    """

    tag: ClassVar[str] = "one_cycle"
    lr0: float = field(default=0.01, metadata={"gt": 0})
    warmup: int = field(default=100, metadata={"ge": 0})
    steps: int = field(default=1000, metadata={"ge": 1})
    lr_min: float = field(default=0.0, metadata={"ge": 0})
    start_divisor: float = field(default=25.0, metadata={"ge": 1})

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            start = self.lr0 / self.start_divisor
            return start + (self.lr0 - start) * step / self.warmup
        done = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.lr_min + (self.lr0 - self.lr_min) * (1 + math.cos(math.pi * done)) / 2
