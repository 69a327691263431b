"""What people say about a run: its tags and notes, kept in ``RUN_DIR/labels.json``.

A file of its own, not run.json: a run still training rewrites run.json at every evaluation,
and a tag added meanwhile must not be lost to that. Each change is made under a lock of its
own (``.labels.lock``: two taggers at once take turns) and written atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mnistctl.errors import DamagedFileError, MnistctlError
from mnistctl.files import read_json, taking_turns, to_json, write_atomic
from mnistctl.run.directory import utc_now

LABELS_FILE = "labels.json"
LOCK = ".labels.lock"
TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TAG_RULE = "1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
MAX_NOTE = 10_000


class LabelError(MnistctlError):
    """A tag or note that cannot be kept."""


@dataclass(frozen=True)
class Note:
    at: str
    text: str


@dataclass(frozen=True)
class Labels:
    tags: tuple[str, ...] = ()
    notes: tuple[Note, ...] = field(default_factory=tuple)


def read_labels(run_dir: Path) -> Labels:
    """A run's tags and notes (none when it has no labels.json)."""
    path = run_dir / LABELS_FILE
    if not path.exists():
        return Labels()
    data = read_json(path, what="labels file")
    try:
        tags = tuple(str(t) for t in data.get("tags", []))
        notes = tuple(Note(str(n["at"]), str(n["text"])) for n in data.get("notes", []))
    except (TypeError, KeyError, AttributeError):
        raise DamagedFileError(f"{path}: damaged: expected tags and notes") from None
    return Labels(tags, notes)


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag):
        raise LabelError(f"tag {tag!r}: expected {TAG_RULE}")
    return tag


def change_tags(run_dir: Path, add: list[str], remove: list[str]) -> Labels:
    """Add and remove tags (in that order of the command line: removing wins for a tag given both)."""
    for tag in (*add, *remove):
        check_tag(tag)
    with taking_turns(run_dir / LOCK):  # two taggers at once take turns
        labels = read_labels(run_dir)
        tags = [t for t in dict.fromkeys([*labels.tags, *add]) if t not in remove]
        return _write(run_dir, Labels(tuple(tags), labels.notes))


def add_note(run_dir: Path, text: str) -> Labels:
    text = text.strip()
    if not text:
        raise LabelError("the note is empty")
    if len(text) > MAX_NOTE:
        raise LabelError(f"the note is {len(text):,} characters; at most {MAX_NOTE:,}")
    with taking_turns(run_dir / LOCK):  # two taggers at once take turns
        labels = read_labels(run_dir)
        return _write(run_dir, Labels(labels.tags, (*labels.notes, Note(utc_now(), text))))


def _write(run_dir: Path, labels: Labels) -> Labels:
    data = {"tags": list(labels.tags), "notes": [{"at": n.at, "text": n.text} for n in labels.notes]}
    write_atomic(run_dir / LABELS_FILE, to_json(data, indent=2) + "\n")
    return labels
