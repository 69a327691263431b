"""From a YAML file (or a run's ``config.yaml``) and ``--set`` overrides to a checked Experiment."""

from __future__ import annotations

import os
import typing
from typing import Any

from mnistctl.config.checks import check_experiment, preflight
from mnistctl.config.overrides import ConfigError, apply_overrides, read_mapping
from mnistctl.config.parsing import Invalid, parse, to_dict
from mnistctl.config.schema import Experiment
from mnistctl.config.shipped import resolve_config


def load_config(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> Experiment:
    """Read, override and validate an experiment config.

    Args:
        path: the YAML file, or the name of a shipped config (``conv_dropout``).
        overrides: ``key.path=value`` strings, applied in order; values are parsed as YAML.

    Returns:
        The validated experiment.

    Raises:
        ConfigError: naming the file (or the ``--set``) and key path of the first problem.
    """
    path = resolve_config(path)
    raw = read_mapping(path)
    raw.setdefault("name", path.stem)
    overridden = apply_overrides(raw, overrides)
    return parse_experiment(raw, str(path), overridden)


def parse_experiment(raw: Any, source: str, overridden: dict[str, str] | None = None) -> Experiment:
    """Validate an already-loaded mapping (from a file or a run's ``config.yaml``).

    Pure: the answer depends on the mapping alone, never on the machine reading it.
    """
    try:
        experiment = parse(raw, Experiment)
        check_experiment(experiment)
    except Invalid as err:
        raise _attributed(err, source, overridden) from None
    return experiment


def apply_to(exp: Experiment, overrides: typing.Sequence[str], source: str) -> Experiment:
    """``exp`` with ``--set`` overrides applied and validated (used when resuming a run)."""
    raw = to_dict(exp)
    overridden = apply_overrides(raw, overrides)
    return parse_experiment(raw, source, overridden)


def check_machine(exp: Experiment, source: str) -> None:
    """Before training ``exp`` here, and in ``validate``: can this machine train it?

    Raises:
        ConfigError: naming the layer when training would not fit in memory.
    """
    try:
        preflight(exp)
    except Invalid as err:
        raise _attributed(err, source, None) from None


def _attributed(err: Invalid, source: str, overridden: dict[str, str] | None) -> ConfigError:
    """The error, said of the ``--set`` that caused it when one did, else of the file."""
    origin = source
    for key, expression in (overridden or {}).items():
        if err.path == key or err.path.startswith((key + ".", key + "[")):
            origin = f"--set {expression}"
    return ConfigError(f"{origin}: {err.path or '(top level)'}: {err.message}")
