"""Learning-rate schedules: small pure functions of the step, each written once.

A schedule's ``rate(step, ops)`` is its one definition, written over four operations (``exp``,
``cos``, ``minimum``, ``where``). With Python's math (``schedule(step)``) it gives the rate the
progress view and the records show; with TensorFlow's (``mnistctl.model``) the same definition
becomes the graph op of the global step the optimizer reads, so no rate is fed from Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

from mnistctl.registry import Registry

SCHEDULES: Registry[type[ScheduleConfig]] = Registry("schedule")

# The operations a schedule's definition may use, in Python; mnistctl.model has TensorFlow's.
PYTHON_OPS = SimpleNamespace(
    exp=math.exp, cos=math.cos, minimum=min, where=lambda condition, yes, no: yes if condition else no
)


class Expr:
    """A piece of a script's expression, built by the arithmetic a schedule's definition does
    on it: ``0.0001 + 0.003 * tf.exp(-step / 2000.0)``. ``order`` is how tightly it binds
    (a name or a call 4, a power 3, unary minus 2.5, * and / 2, + and - 1, a comparison 0),
    so parentheses appear only where they are needed."""

    def __init__(self, text: str, order: float = 4) -> None:
        self.text, self.order = text, order

    @staticmethod
    def of(value: Any) -> Expr:
        return (
            value
            if isinstance(value, Expr)
            else Expr(repr(float(value)) if isinstance(value, float) else repr(value))
        )

    def _join(self, other: Any, op: str, order: float, swap: bool = False) -> Expr:
        left, right = (Expr.of(other), self) if swap else (self, Expr.of(other))
        lhs = left.text if left.order >= order else f"({left.text})"
        tight = right.order > order or (right.order == order and op in "+*")
        return Expr(f"{lhs} {op} {right.text if tight else f'({right.text})'}", order)

    def __add__(self, o: Any) -> Expr:
        return self._join(o, "+", 1)

    def __radd__(self, o: Any) -> Expr:
        return self._join(o, "+", 1, swap=True)

    def __sub__(self, o: Any) -> Expr:
        return self._join(o, "-", 1)

    def __rsub__(self, o: Any) -> Expr:
        return self._join(o, "-", 1, swap=True)

    def __mul__(self, o: Any) -> Expr:
        return self._join(o, "*", 2)

    def __rmul__(self, o: Any) -> Expr:
        return self._join(o, "*", 2, swap=True)

    def __truediv__(self, o: Any) -> Expr:
        return self._join(o, "/", 2)

    def __rtruediv__(self, o: Any) -> Expr:
        return self._join(o, "/", 2, swap=True)

    def __neg__(self) -> Expr:
        return Expr("-" + (self.text if self.order > 2.5 else f"({self.text})"), 2.5)

    def __lt__(self, o: Any) -> Expr:
        return self._join(o, "<", 0)


def _call(function: str) -> Any:
    return lambda *args: Expr(f"{function}({', '.join(Expr.of(a).text for a in args)})")


# The operations as a script writes them, over a float64 step tensor.
CODE_OPS = SimpleNamespace(
    exp=_call("tf.exp"), cos=_call("tf.cos"), minimum=_call("tf.minimum"), where=_call("tf.where")
)


@dataclass(frozen=True)
class ScheduleConfig:
    """Base of the schedule configs; `name` in YAML picks the subclass."""

    registry: ClassVar[Registry] = SCHEDULES
    tag_key: ClassVar[str] = "name"
    tag: ClassVar[str] = ""

    def rate(self, step: Any, ops: Any) -> Any:
        """The rate at ``step`` (a float, or a float64 tensor), computed with ``ops``."""
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        return float(self.rate(float(step), PYTHON_OPS))

    def code(self, step: str = "step") -> str:
        """The rate as a script's TensorFlow expression of a float64 ``step`` (``mnistctl
        code``): the same definition, run over symbols instead of numbers."""
        return Expr.of(self.rate(Expr(step), CODE_OPS)).text


@SCHEDULES.register("constant")
@dataclass(frozen=True)
class Constant(ScheduleConfig):
    """The same learning rate at every step.

    Attributes:
        lr: the learning rate.
    """

    tag: ClassVar[str] = "constant"
    lr: float = field(default=0.001, metadata={"gt": 0})

    def rate(self, step: Any, ops: Any) -> Any:
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

    def rate(self, step: Any, ops: Any) -> Any:
        return self.lr_min + self.lr0 * ops.exp(-step / self.decay_steps)


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

    def rate(self, step: Any, ops: Any) -> Any:
        start = self.lr0 / self.start_divisor
        warming = start + (self.lr0 - start) * step / max(self.warmup, 1)
        done = ops.minimum((step - self.warmup) / max(1, self.steps - self.warmup), 1.0)
        cooling = self.lr_min + (self.lr0 - self.lr_min) * (1 + ops.cos(math.pi * done)) / 2
        return ops.where(step < self.warmup, warming, cooling)
