"""Where a run's code came from: the checkout's commit, whether its working tree had changes,
and those changes themselves (a patch), read with git when mnistctl runs from a checkout; and
the command line as it can be run again.

The git calls get a generous time-out (a loaded machine is slow, and a run's provenance is not
worth losing to a five-second limit); outside a checkout, or without git, there is nothing to
record and nothing is said.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]  # the checkout, when mnistctl runs from one
GIT_TIMEOUT_S = 60.0
MAX_PATCH_BYTES = 8 << 20
PATCH_FILE = "code.patch"  # in a run directory trained from a changed working tree


@dataclass(frozen=True)
class Code:
    """The code a run was trained with."""

    commit: str | None = None
    dirty: bool | None = None  # None: not known (not a checkout)
    patch: str = ""  # `git diff HEAD`: the uncommitted change to tracked files

    @property
    def short(self) -> str:
        """``1a2b3c4d5e`` or ``1a2b3c4d5e+`` (with uncommitted changes); "" when not known."""
        return (self.commit[:10] + ("+" if self.dirty else "")) if self.commit else ""


def _git(*args: str, root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired, UnicodeDecodeError):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(root: Path | None = None, with_patch: bool = True) -> Code:
    """The checkout's commit, whether tracked files differ from it, and how (``with_patch``)."""
    root = root or CHECKOUT
    if not (root / ".git").exists():
        return Code()
    commit = _git("rev-parse", "HEAD", root=root)
    if commit is None:
        return Code()
    status = _git("status", "--porcelain", "--untracked-files=no", root=root)
    dirty = bool(status.strip()) if status is not None else None
    patch = ""
    if dirty and with_patch:
        patch = _git("diff", "HEAD", "--no-ext-diff", "--binary", root=root) or ""
        size = len(patch.encode())
        if size > MAX_PATCH_BYTES:
            patch = f"# the uncommitted change is {size:,} bytes; not kept (at most {MAX_PATCH_BYTES:,})\n"
    return Code(commit.strip(), dirty, patch)


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process, as it can be run again: ``mnistctl ...`` for the
    installed command, ``python -m mnistctl ...`` for the module, every argument quoted."""
    argv = list(sys.argv if argv is None else argv)
    first = Path(argv[0]) if argv else Path("mnistctl")
    if first.name == "__main__.py" or first.name == "-m":
        program = [Path(sys.executable).name, "-m", "mnistctl"]
    elif first.name == "mnistctl":
        program = ["mnistctl"]
    else:
        program = [argv[0]]
    return shlex.join([*program, *argv[1:]])
