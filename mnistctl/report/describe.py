"""One run whole (``show``) and two runs side by side (``diff``), from their files alone: what
``guild diff`` and ``dvc exp diff`` give, for mnistctl's run directories. No TensorFlow."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mnistctl.config import flatten, load_config, to_dict
from mnistctl.config.shipped import shipped_configs
from mnistctl.errors import MnistctlError
from mnistctl.machine import summary as machine_summary
from mnistctl.provenance import PATCH_FILE
from mnistctl.report.compare import summarize
from mnistctl.run.directory import CONFIG_FILE, Run
from mnistctl.run.labels import read_labels


@dataclass(frozen=True)
class Section:
    """A heading and its (label, value) lines."""

    title: str
    lines: list[tuple[str, ...]]  # (label, value) or, in a diff, (label, value A, value B)
    commands: bool = False  # lines to copy and run: never wrapped


def _fmt(value: Any, key: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if "accuracy" in key else f"{value:,.6g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value)


def _results(run: Run) -> dict[str, Any]:
    row = summarize(run)
    record = run.record
    return {
        "status": row["status"]
        + (f" ({record.stop_reason})" if record.stop_reason else "")
        + (f": {record.error}" if record.error else ""),
        "steps": row["steps"],
        "best (test accuracy)": row["best_test_accuracy"],
        "best at step": row["best_step"],
        "chosen by": row["selected_by"],
        "validation accuracy there": row["best_validation_accuracy"],
        "max test accuracy": row["max_test_accuracy"],
        "final test accuracy": row["final_test_accuracy"],
        "wall s": row["wall_s"],
        "images/s": record.timing.images_per_s,
        "parameters": row["parameters"],
    }


def _code(run: Run) -> dict[str, Any]:
    record = run.record
    patch = run.path / PATCH_FILE
    return {
        "commit": record.git_commit or "not recorded (not run from a checkout)",
        "uncommitted change": (f"yes: {patch}" if patch.exists() else "yes")
        if record.git_dirty
        else ("none" if record.git_dirty is False else "-"),
        "mnistctl": record.versions.get("mnistctl"),
        "tensorflow": record.versions.get("tensorflow"),
        "command": record.command or "-",
        "rerun of": record.rerun_of or "-",
    }


def _data(run: Run) -> dict[str, Any]:
    data = run.record.dataset
    images = f"{data.get('train_images', '-')} train, {data.get('test_images', '-')} test"
    shown = {"dataset": data.get("name"), "images": images}
    shown.update({f"sha256 {k}": v[:16] for k, v in sorted(run.record.dataset_sha256.items())})
    return shown


def config_changes(run: Run) -> tuple[str, dict[str, tuple[Any, Any]]]:
    """The run's config against the shipped config of its name (what ``--set`` changed), or
    ("", {}) when no shipped config has that name."""
    exp = run.experiment()
    shipped = shipped_configs().get(exp.name)
    if shipped is None:
        return "", {}
    ours, theirs = flatten(to_dict(exp)), flatten(to_dict(load_config(shipped)))
    keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    return str(shipped), {k: (theirs.get(k), ours.get(k)) for k in keys}


def show(run: Run, everything: bool = False) -> list[Section]:
    """``mnistctl show RUN``: results, config, code, machine, data, tags and notes, and how to
    train it again."""
    record = run.record
    sections = [Section(f"{run.name}  ({run.path})", [(k, _fmt(v, k)) for k, v in _results(run).items()])]
    try:
        base, changes = config_changes(run)
        exp = run.experiment()
    except MnistctlError as err:
        sections.append(Section("config", [("unreadable", str(err))]))
    else:
        if everything or not base:
            title = "config (all of it)"
            sections.append(Section(title, [(k, _fmt(v)) for k, v in flatten(to_dict(exp)).items()]))
        else:
            lines = [
                (k, f"{_fmt(new)}  (the shipped config: {_fmt(old)})") for k, (old, new) in changes.items()
            ]
            sections.append(Section(f"config: what differs from {base} (--all: all of it)",
                                    lines or [("", "nothing: the shipped config as it is")]))  # fmt: skip
    sections.append(Section("code", [(k, _fmt(v)) for k, v in _code(run).items()]))
    sections.append(Section("machine", [("cpu", machine_summary(record.machine) if record.machine else "-"),
                                        ("host", _fmt(record.host))]))  # fmt: skip
    sections.append(Section("data", [(k, _fmt(v)) for k, v in _data(run).items()]))
    labels = read_labels(run.path)
    sections.append(Section("tags and notes", [("tags", ", ".join(labels.tags) or "-")]
                            + [(note.at, note.text) for note in labels.notes]))  # fmt: skip
    again = [("the same config", f"mnistctl train {run.path / CONFIG_FILE}"),
             ("continue it", f"mnistctl train --resume {run.path}")]  # fmt: skip
    sections.append(Section("again", again, commands=True))
    return sections


def diff(a: Run, b: Run) -> list[Section]:
    """``mnistctl diff A B``: what differs between two runs, section by section."""
    sections = []
    try:
        ca, cb = flatten(to_dict(a.experiment())), flatten(to_dict(b.experiment()))
        keys = sorted(k for k in ca.keys() | cb.keys() if ca.get(k) != cb.get(k) and k != "description")
        sections.append(Section("config", [(k, _fmt(ca.get(k), k), _fmt(cb.get(k), k)) for k in keys]
                                or [("", "the same config")]))  # fmt: skip
    except MnistctlError as err:
        sections.append(Section("config", [("unreadable", str(err))]))
    for title, part in (("results", _results), ("code", _code), ("data", _data)):
        pa, pb = part(a), part(b)
        lines = [(k, _fmt(pa.get(k), k), _fmt(pb.get(k), k)) for k in dict.fromkeys([*pa, *pb])
                 if title == "results" or pa.get(k) != pb.get(k)]  # fmt: skip
        sections.append(Section(title, lines or [("", "the same")]))
    ma, mb = (machine_summary(r.record.machine) if r.record.machine else "-" for r in (a, b))
    sections.append(Section("machine", [("", "the same") if ma == mb else ("cpu", ma, mb)]))
    patches = [p.read_text() if (p := r.path / PATCH_FILE).exists() else "" for r in (a, b)]
    if patches[0] != patches[1]:
        where = f"diff {a.path / PATCH_FILE} {b.path / PATCH_FILE}"
        sections.append(Section("uncommitted change", [("", f"the runs' code.patch files differ: {where}")]))
    return sections
