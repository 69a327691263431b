"""A generic strict parser: plain YAML data in, frozen dataclasses out, every key checked.

Nothing here knows about MNIST or neural networks. A dataclass field is checked against its
type hint (bool, int, float, str, ``Literal``, ``Optional``, ``tuple[X, ...]``, a nested
dataclass) and the bounds in its metadata (``ge``, ``gt``, ``le``, ``lt``). ``dict[str, X]`` is a mapping
with text keys (``X`` may be ``Any``: unchecked). A base class with a
``registry`` ClassVar is polymorphic: the key named by its ``tag_key`` picks the subclass.
Problems raise :class:`Invalid` with the dotted key path and a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from typing import Any, Literal, Union

from mnistctl.registry import Registry


class Invalid(Exception):
    """A value that does not fit the schema, at ``path`` (``model.layers[1].stride``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def kind(value: Any) -> str:
    """``a mapping``, ``an integer``...: what a value is, for messages."""
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a mapping"})
    return names.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    """A value as a message quotes it: short, strings in quotes, containers by kind."""
    if isinstance(value, (dict, list)):
        return kind(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def sub(path: str, key: str | int) -> str:
    """The path of ``key`` inside ``path``: ``a.b``, ``a[3]``."""
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def parse(value: Any, cls: type, path: str = "") -> Any:
    """Build dataclass ``cls`` (or a registered subclass) from a mapping, checking every key."""
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a mapping, got {kind(value)}")
    registry: Registry | None = getattr(cls, "registry", None)
    if registry is not None:
        tag_key = cls.tag_key
        if tag_key not in value:
            raise Invalid(sub(path, tag_key), f"missing; expected one of: {', '.join(registry)}")
        tag = value[tag_key]
        if tag not in registry:
            raise Invalid(sub(path, tag_key), registry.unknown_message(tag))
        cls = registry.get(tag)
        value = {k: v for k, v in value.items() if k != tag_key}
    hints, fields = _schema(cls)
    kwargs = {}
    for key, item in value.items():
        if key not in fields:
            known = ", ".join(([cls.tag_key] if registry else []) + list(fields))
            raise Invalid(sub(path, str(key)), f"unknown key; expected one of: {known}")
        kwargs[key] = check_value(item, hints[key], sub(path, key), fields[key].metadata)
    return cls(**kwargs)


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """A config class's resolved type hints and fields, worked out once per class (resolving
    the hints is most of the time of parsing a config otherwise)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def check_value(value: Any, hint: Any, path: str, bounds: typing.Mapping) -> Any:
    """``value`` checked against a type hint and bounds; returns it (numbers as float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union and type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return check_value(value, hint, path, bounds)
    if origin is Literal:
        if value not in args:
            what = re.split(r"[.\[]", path)[-1] if path else "value"
            choices = ", ".join(str(a) for a in args)
            raise Invalid(path, f"unknown {what} {shown(value)}; expected one of: {choices}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a mapping, got {kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise Invalid(path, f"expected text keys, got {shown(key)}")
        if args[1] is Any:
            return dict(value)
        return {k: check_value(v, args[1], sub(path, k), {}) for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise Invalid(path, f"expected a list, got {kind(value)}")
        return tuple(check_value(v, args[0], sub(path, i), {}) for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return parse(value, hint, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise Invalid(path, f"expected true or false, got {shown(value)}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise Invalid(path, f"expected a string, got {kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, f"expected {range_text('an integer', bounds)}, got {shown(value)}")
        _check_bounds(value, "an integer", bounds, path)
        return value
    if hint is float:
        if isinstance(value, str) and _EXPONENT.match(value.strip()):
            value = float(value)  # 1e-3: YAML 1.1 reads it as text (it wants 1.0e-3); people write it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Invalid(path, f"expected {range_text('a number', bounds)}, got {shown(value)}")
        _check_bounds(value, "a number", bounds, path)
        if abs(value) > FLOAT32_MAX:  # numbers end up in float32, where this would be infinite
            raise Invalid(
                path, f"expected a number float32 can hold (at most {FLOAT32_MAX:.3g}), got {shown(value)}"
            )
        return float(value)
    raise TypeError(f"no rule for {hint!r} at {path}")  # a schema bug, not a user error


FLOAT32_MAX = 3.4028234663852886e38
_EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_BOUNDS = {"ge": (">=", float.__ge__), "gt": (">", float.__gt__)}
_BOUNDS.update({"le": ("<=", float.__le__), "lt": ("<", float.__lt__)})


def range_text(what: str, bounds: typing.Mapping) -> str:
    """``an integer >= 1 and <= 10``."""
    parts = [f"{_BOUNDS[k][0]} {bounds[k]}" for k in ("ge", "gt", "le", "lt") if k in bounds]
    return f"{what} {' and '.join(parts)}" if parts else what


def _check_bounds(value: float, what: str, bounds: typing.Mapping, path: str) -> None:
    for key, (_, ok) in _BOUNDS.items():
        if key in bounds and not ok(float(value), float(bounds[key])):
            raise Invalid(path, f"expected {range_text(what, bounds)}, got {shown(value)}")


def to_dict(obj: Any) -> Any:
    """The plain-data form of a parsed dataclass, tags first: what :func:`parse` reads back."""
    if dataclasses.is_dataclass(obj):
        out = {}
        if getattr(obj, "tag", ""):
            out[obj.tag_key] = obj.tag
        for f in dataclasses.fields(obj):
            out[f.name] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"layers": [{"units": 3}]}}`` -> ``{"model.layers[0].units": 3}``."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, sub(prefix, str(key))))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, sub(prefix, i)))
        return out if data else {prefix: []}
    return {prefix: data}
