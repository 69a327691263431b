"""The package's plan, as the README's Development section states it: layers by concern, each
module importing only from its own layer or those below it, no import circle, and modules a
reader can take in at once."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnistctl"
# Lowest first; a module not named here is a shared piece (layer 0).
LAYERS = (
    ("config",),
    ("data", "dataset", "model", "imported"),
    ("train",),
    ("run",),
    ("many",),
    ("report",),
    ("serving",),
    ("cli", "__main__"),
)


def layer(module: str) -> int:
    first = module.split(".")[1] if "." in module else ""
    return next((i + 1 for i, names in enumerate(LAYERS) if first in names), 0)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The mnistctl modules ``path`` imports anywhere in it (functions too), except for type
    annotations only (under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guards = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    typing_only = {id(n) for guard in guards for n in ast.walk(guard)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnistctl"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in known}


def test_no_module_imports_from_a_higher_layer():
    known = modules()
    upward = [
        f"{name} (layer {layer(name)}) imports {other} (layer {layer(other)})"
        for name, path in known.items()
        for other in imports(path, known)
        if layer(other) > layer(name)
    ]
    assert upward == []


def test_no_import_circle_between_modules():
    known = modules()
    graph = {
        name: {m for m in imports(path, known) if m != name and not name.startswith(m + ".")}
        for name, path in known.items()
    }  # a package's __init__ importing its own modules is not a circle

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start]
        )

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert circles == []


MAX_LINES = 450


def test_every_module_reads_in_one_sitting():
    long = {
        name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}
