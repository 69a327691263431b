"""The configs that ship inside the package, and naming one: ``mnistctl train conv_dropout``.

The walk-through's configs live in ``mnistctl/configs/`` (the checkout's ``configs/`` is a link
to it), so a ``pip install``ed mnistctl has them too. A config argument is a path when one exists
there; otherwise a bare name (no ``/``, no ``.yaml``) is looked up among the shipped configs.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from mnistctl.config.overrides import ConfigError

# The walk-through's published figures: its maximum test accuracy over a run, evaluated on the
# 10k test images every 100 steps.
PUBLISHED: dict[str, tuple[float, str]] = {
    "softmax": (0.92, "≈ 0.92 (0.9268 after 10k steps)"),
    "five_layers_sigmoid": (0.9788, "0.9788"),
    "five_layers_relu": (0.9825, "0.9825"),
    "five_layers_relu_lrdecay": (0.9824, "0.9824"),
    "five_layers_relu_lrdecay_dropout": (0.9827, "0.9817-0.9836"),
    "conv": (0.989, "0.989"),
    "conv_dropout": (0.9932, "0.9928-0.9935"),
    "batchnorm_five_layers_relu": (0.9855, "0.9850-0.9859"),
    "batchnorm_conv": (0.9955, "0.9952-0.9958"),
}
WALKTHROUGH = tuple(PUBLISHED)

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "configs"
SWEEPS_DIR = SHIPPED_DIR / "sweeps"


def shipped_configs() -> dict[str, Path]:
    """The shipped experiment configs by name: the walk-through's in its order, then the rest."""
    found = {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}
    return {n: found[n] for n in WALKTHROUGH if n in found} | found


def shipped_sweeps() -> dict[str, Path]:
    """The shipped sweep files by name, sorted."""
    return {p.stem: p for p in sorted(SWEEPS_DIR.glob("*.yaml"))}


def is_name(text: str) -> bool:
    """A bare name, not a path: no directory part and no YAML suffix."""
    return "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml"))


def resolve_config(path: str | Path, *, sweeps: bool = False, relative_to: Path | None = None) -> Path:
    """The file a config argument means.

    Args:
        path: a path, or the name of a shipped config (``conv_dropout``).
        sweeps: also look among the shipped sweep files (for ``sweep`` and ``validate``).
        relative_to: a directory to try a relative path against after the current one (a
            sweep file's ``base:`` is relative to the sweep file).

    Raises:
        ConfigError: nothing by that path or name, listing the shipped names (and the nearest).
    """
    given = Path(path)
    if given.exists():
        return given
    if relative_to is not None and not given.is_absolute() and (relative_to / given).exists():
        return relative_to / given
    known = shipped_configs() | (shipped_sweeps() if sweeps else {})
    text = str(path)
    if is_name(text) and text in known:
        return known[text]
    what = "config or sweep file" if sweeps else "config file"
    parts = [f"{text}: no such {what}"]
    nearest = difflib.get_close_matches(Path(text).stem, list(known), n=1)
    if nearest:
        parts.append(f"did you mean {nearest[0]}?")
    names = ", ".join(known)
    parts.append(f"shipped ones, usable by name: {names} (`mnistctl configs` describes them)")
    raise ConfigError("; ".join(parts))
