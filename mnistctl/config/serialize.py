"""Writing a resolved experiment back (``config.yaml``) and telling two apart."""

from __future__ import annotations

from typing import Any

import yaml

from mnistctl.config.parsing import flatten, to_dict
from mnistctl.config.schema import Experiment


def dump_yaml(exp: Experiment) -> str:
    """The resolved config as YAML text; reading it back gives an equal Experiment."""
    return yaml.safe_dump(to_dict(exp), sort_keys=False, default_flow_style=None)


def diff_configs(old: Experiment, new: Experiment) -> list[dict[str, Any]]:
    """The keys whose values differ, as ``{"key", "old", "new"}`` in schema order."""
    a, b = flatten(to_dict(old)), flatten(to_dict(new))
    keys = list(a) + [k for k in b if k not in a]
    return [{"key": k, "old": a.get(k), "new": b.get(k)} for k in keys if a.get(k) != b.get(k)]
