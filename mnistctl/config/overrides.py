"""Reading YAML safely and applying ``--set key.path=value`` overrides to the raw mapping."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

from mnistctl.config.parsing import kind
from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_text

MAX_CONFIG_BYTES = 1 << 20


class ConfigError(MnistctlError):
    """A config that cannot be used, with the file and key path that make it so."""


MAX_DEPTH = 64  # levels of nesting a config or sweep file may have (the deepest shipped: 5)
MAX_KEY_PARTS = 64  # parts of a --set key path


class _SafeLoaderNoAliases(yaml.SafeLoader):
    """Refuses YAML aliases (configs never need them, and they make 'billion laughs' bombs) and
    nesting deeper than ``MAX_DEPTH`` (PyYAML composes recursively: deep enough, it would raise
    RecursionError)."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise self._refuse("aliases (*name) are not supported in mnistctl configs")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise self._refuse(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def _refuse(self, problem: str) -> yaml.MarkedYAMLError:
        return yaml.MarkedYAMLError("while reading the config", None, problem, self.peek_event().start_mark)


def read_yaml(path: Path) -> Any:
    """Load one YAML document safely, turning every failure into a ConfigError."""
    try:
        text = read_text(path, MAX_CONFIG_BYTES, "config file")
    except DamagedFileError as err:
        raise ConfigError(str(err)) from None
    return parse_yaml(text, path)


_FAST = getattr(yaml, "CSafeLoader", None)  # libyaml's parser, where PyYAML was built with it


def parse_yaml(text: str, path: Path, written_by_us: bool = False) -> Any:
    """One YAML document, safely. ``written_by_us``: a file mnistctl wrote itself and vouches for
    (a run's config.yaml whose digest run.json keeps), read with libyaml, about ten times faster,
    unless it holds an anchor or alias character; everything else through the guarded loader."""
    if written_by_us and _FAST is not None and "&" not in text and "*" not in text:
        return yaml.load(text, Loader=_FAST)
    try:
        return yaml.load(text, Loader=_SafeLoaderNoAliases)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None


def read_mapping(path: Path) -> dict:
    """A YAML file that must hold a mapping of settings."""
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of settings")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {kind(raw)}")
    return raw


def parse_value(text: str, where: str) -> Any:
    """A value written on the command line, read as YAML (``3``, ``0.5``, ``[1, 2]``, ``null``)."""
    try:
        return yaml.load(text, Loader=_SafeLoaderNoAliases) if text.strip() else ""
    except yaml.MarkedYAMLError as err:
        if err.problem and "nested deeper" in err.problem:
            raise ConfigError(f"{where}: the value is {err.problem}") from None
        raise ConfigError(f"{where}: cannot parse the value {_short(text)}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{where}: cannot parse the value {_short(text)}") from None


def _short(text: str, width: int = 60) -> str:
    """A value as a message quotes it: whole when short, else its start and length."""
    return repr(text) if len(text) <= width else f"{text[:width]!r}... ({len(text):,} characters)"


def _clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else f"{text[:width]}... ({len(text):,} characters)"


_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]")


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> dict[str, str]:
    """Apply ``key.path=value`` overrides to a raw mapping in place.

    Returns:
        The canonical key path of each override mapped to its text, to attribute errors.
    """
    applied = {}
    for expression in overrides:
        key, sep, text = expression.partition("=")
        where = f"--set {_clip(expression, 80)}"
        if not sep or not key.strip():
            raise ConfigError(f"{where}: expected key.path=value")
        tokens = split_key(key.strip(), where)
        # A description is text whatever it looks like ("baseline: lr 0.004" is not a mapping).
        value = text.strip() if tokens == ["description"] else parse_value(text, where)
        applied[join_path(set_path(raw, tokens, value, where))] = expression
    return applied


def split_key(key: str, where: str) -> list[str | int]:
    """``model.layers[3].dropout`` -> ``["model", "layers", 3, "dropout"]``."""
    tokens: list[str | int] = []
    if key.count(".") + key.count("[") >= MAX_KEY_PARTS:
        raise ConfigError(f"{where}: the key path has more than {MAX_KEY_PARTS} parts")
    for part in key.split("."):
        matches = list(_TOKEN.finditer(part))
        if not matches or "".join(m.group(0) for m in matches) != part:
            raise ConfigError(f"{where}: bad key path {key!r}")
        for m in matches:
            tokens.append(m.group(1) if m.group(1) else int(m.group(2)))
    if not isinstance(tokens[0], str):
        raise ConfigError(f"{where}: bad key path {key!r}")
    return tokens


def join_path(tokens: typing.Sequence[str | int]) -> str:
    out = ""
    for t in tokens:
        out += f"[{t}]" if isinstance(t, int) else (f".{t}" if out else t)
    return out


def set_path(raw: dict, tokens: list[str | int], value: Any, where: str) -> list[str | int]:
    """Set the value at a key path inside nested mappings and lists (made as needed).

    A negative list index counts from the end, as in Python (``layers[-1]`` is the output layer).

    Returns:
        The key path with negative indices made positive, so that errors name the entry set.
    """
    node: Any = raw
    resolved: list[str | int] = []
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        parent = join_path(resolved) or "(top level)"
        if isinstance(token, int):
            if not isinstance(node, list):
                raise ConfigError(f"{where}: {parent} is not a list")
            if not -len(node) <= token < len(node):
                raise ConfigError(f"{where}: {parent} has {len(node)} entries")
            token %= len(node)
            if last:
                node[token] = value
            else:
                node = node[token]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {parent} is not a mapping")
            if last:
                node[token] = value
            else:
                node = node.setdefault(token, {})
        resolved.append(token)
    return resolved
