"""Save and restore: the latest checkpoint (for resuming) and the best one (for eval/export).

``tf.compat.v1.train.Saver`` writes each checkpoint under a temporary name and renames it, its
``.index`` last, so a checkpoint with an ``.index`` and its data is complete. The slots are
managed from the files themselves, not from TensorFlow's ``checkpoint`` text index (which this
module rewrites for TensorFlow's tools): a damaged index loses nothing, the promised number of
checkpoints is kept across processes, and leftovers of a save cut short are cleaned away.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistctl.errors import MnistctlError
from mnistctl.files import write_atomic
from mnistctl.run.directory import CHECKPOINT_DIR, is_run_dir
from mnistctl.status import Status
from mnistctl.train.events import EvalEvent, Hook, TrainContext

if TYPE_CHECKING:  # finding checkpoints (resolve, latest_in) needs no TensorFlow; saving does
    import tensorflow as tf

    from mnistctl.model import Graph

LATEST = "latest"
BEST = "best"
# Checkpoints kept per slot. Two latest: if the newest is being written when the process dies,
# the one before it remains.
KEEP = {LATEST: 2, BEST: 1}
_NAME = re.compile(r"^model-(\d+)")


class CheckpointError(MnistctlError):
    """A checkpoint that is missing, damaged or made for another model."""


class Checkpoints:
    """The run's two checkpoint slots."""

    def __init__(self, run_dir: Path, graph: Graph) -> None:
        from mnistctl._tf import tf

        self.root = run_dir / CHECKPOINT_DIR
        with graph.graph.as_default():
            # Retention is tidy()'s, from the files: a Saver knows only its own process's saves.
            self._saver = tf.compat.v1.train.Saver(max_to_keep=None, save_relative_paths=True)

    def save(self, session: tf.compat.v1.Session, slot: str, step: int) -> str:
        from mnistctl._tf import tf

        directory = self.root / slot
        directory.mkdir(parents=True, exist_ok=True)
        try:
            prefix = self._saver.save(
                session, str(directory / "model"), global_step=step, write_meta_graph=False, write_state=False
            )
        except tf.errors.OpError as err:  # a full disk, say: the earlier checkpoints are kept
            tidy(directory, KEEP[slot])  # and what the failed save left behind goes
            raise CheckpointError(
                f"{directory}: cannot save the checkpoint of step {step}: {_cause(err)}"
            ) from None
        tidy(directory, KEEP[slot])
        return prefix


class CheckpointHook(Hook):
    """Saves ``latest`` every ``checkpoint_every`` steps and at the end, ``best`` on improvement.

    On a resume from step N, checkpoints after N are deleted at ``begin`` (those steps are
    trained again), after the latest one has been restored.
    """

    def __init__(self, checkpoints: Checkpoints, every: int) -> None:
        self.checkpoints = checkpoints
        self.every = every
        self._saved_step = -1

    def begin(self, ctx: TrainContext) -> None:
        drop_checkpoints_after(self.checkpoints.root.parent, ctx.start_step)

    def after_step(self, ctx: TrainContext) -> None:
        if ctx.step % self.every == 0:
            self._save_latest(ctx)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        improved = event.improved
        if improved:
            self.checkpoints.save(ctx.session, BEST, ctx.step)

    def end(self, ctx: TrainContext, status: Status) -> None:
        if status.checkpointed_at_end:
            self._save_latest(ctx)

    def _save_latest(self, ctx: TrainContext) -> None:
        if ctx.step != self._saved_step:
            self.checkpoints.save(ctx.session, LATEST, ctx.step)
            self._saved_step = ctx.step


def drop_checkpoints_after(run_dir: Path, step: int) -> None:
    """Delete checkpoints saved after ``step`` (a resume redoes those steps)."""
    for slot, keep in KEEP.items():
        directory = run_dir / CHECKPOINT_DIR / slot
        if directory.is_dir():
            tidy(directory, keep, until=step)


def step_of(prefix: str) -> int:
    """The step in a checkpoint prefix (``.../model-1200`` -> 1200), or -1."""
    match = _NAME.match(Path(str(prefix)).name)
    return int(match.group(1)) if match else -1


def complete_steps(directory: Path) -> list[int]:
    """The steps of the complete checkpoints in a slot (an ``.index`` and its data), oldest first."""
    steps = []
    for index in directory.glob("model-*.index"):
        step = step_of(index.name)
        if step >= 0 and index.name == f"model-{step}.index" and any(directory.glob(f"model-{step}.data-*")):
            steps.append(step)
    return sorted(steps)


def tidy(directory: Path, keep: int, until: int | None = None) -> None:
    """Keep the newest ``keep`` complete checkpoints (none after step ``until``); delete the
    others and anything a save cut short left behind; rewrite the index TensorFlow reads."""
    steps = [s for s in complete_steps(directory) if until is None or s <= until]
    kept = {f"model-{s}" for s in steps[-keep:]}
    for path in directory.iterdir():
        belongs = path.name.split(".")[0] in kept and "temp" not in path.name
        if belongs or path.name == "checkpoint":
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    names = sorted(kept, key=step_of)
    if names:  # the index TensorFlow's tools read, paths relative to the directory
        lines = [f'model_checkpoint_path: "{names[-1]}"'] + [
            f'all_model_checkpoint_paths: "{n}"' for n in names
        ]
        write_atomic(directory / "checkpoint", "\n".join(lines) + "\n")
    else:
        (directory / "checkpoint").unlink(missing_ok=True)


def latest_in(directory: Path) -> str | None:
    """The newest complete checkpoint in a slot directory, found from its files."""
    steps = complete_steps(directory) if directory.is_dir() else []
    return str(directory / f"model-{steps[-1]}") if steps else None


def _refuse_incomplete(slot: Path) -> None:
    """A slot that holds a checkpoint's files but no complete checkpoint (its data or index
    deleted or lost) is named, rather than passed over for another slot's checkpoint."""
    if not slot.is_dir():
        return
    for path in sorted(slot.glob("model-*")):
        prefix = slot / path.name.split(".")[0]
        index, data = Path(f"{prefix}.index"), list(slot.glob(f"{prefix.name}.data-*"))
        if "temp" in path.name or (index.is_file() and data):
            continue
        missing = "its .data file" if index.is_file() else "its .index file"
        raise CheckpointError(
            f"{prefix}: incomplete checkpoint ({missing} is missing); name another checkpoint, "
            f"e.g. {slot.parent / LATEST}, or train the run again"
        )


def resolve(target: Path) -> tuple[Path, str]:
    """Map ``RUN_DIR`` (its best checkpoint) or a checkpoint prefix to (run dir, prefix)."""
    if target.is_dir() and is_run_dir(target):
        for slot in (BEST, LATEST):
            prefix = latest_in(target / CHECKPOINT_DIR / slot)
            if prefix:
                return target, prefix
            _refuse_incomplete(target / CHECKPOINT_DIR / slot)  # never another checkpoint silently
        raise CheckpointError(f"{target}: the run has no checkpoint yet")
    prefix = str(target)
    for suffix in (".index", ".data-00000-of-00001"):
        prefix = prefix.removesuffix(suffix)
    if not Path(prefix + ".index").is_file():
        if target.is_dir():
            found = latest_in(target)
            if found:
                prefix = found
            else:
                raise CheckpointError(f"{target}: neither a run directory nor a checkpoint")
        else:
            raise CheckpointError(f"{target}: no such run directory or checkpoint")
    for parent in Path(prefix).parents:
        if is_run_dir(parent):
            return parent, prefix
    raise CheckpointError(f"{target}: the checkpoint is not inside a run directory (no config.yaml)")


def saved_model_path(source: Path) -> Path | None:
    """The SavedModel at ``source``: the folder itself, or - for a TF Serving base path
    (``models/mnist`` holding ``1/``, ``2/``, ...) - its highest numbered version, as TF Serving
    would serve. None when there is none."""
    if (source / "saved_model.pb").is_file():
        return source
    if source.is_dir():
        versions = [p for p in source.iterdir() if p.name.isdigit() and (p / "saved_model.pb").is_file()]
        if versions:
            return max(versions, key=lambda p: int(p.name))
    return None


class ExportError(MnistctlError):
    """An export that cannot be written or read."""


def check_export_target(out: Path, overwrite: bool) -> None:
    """Refuse, before anything is built, a target an export may not take: one that exists
    (without ``overwrite``, or that is not an export), or one inside a run's checkpoints,
    where the run's next save would delete it (a slot keeps only its own checkpoints)."""
    for folder in (out.resolve(), *out.resolve().parents):
        if folder.name == CHECKPOINT_DIR and is_run_dir(folder.parent):
            raise ExportError(
                f"{out}: inside the checkpoints of the run {folder.parent}, whose next save would "
                "delete it; export somewhere else"
            )
    if out.exists():
        if not overwrite:
            raise ExportError(f"{out}: already exists (use --force to replace it)")
        if not (out / "saved_model.pb").is_file():
            raise ExportError(f"{out}: exists and is not a SavedModel; refusing to replace it")


def check_model_source(source: Path) -> None:
    """Fail fast - before TensorFlow loads - on a source that is neither an export nor a run
    (or checkpoint), with the same one line loading it would give."""
    if saved_model_path(source) is None:
        resolve(source)


def restore(session: tf.compat.v1.Session, graph: Graph, prefix: str) -> int:
    """Restore every variable of a training graph from a checkpoint and return its step.

    Raises:
        CheckpointError: as ``restore_variables``.
    """
    from mnistctl._tf import tf

    with graph.graph.as_default():
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    restore_variables(session, graph.graph, variables, prefix)
    return int(session.run(graph.global_step))


def restore_variables(session: Any, graph: Any, variables: dict[str, Any], prefix: str) -> None:
    """The one restore: ``variables`` (name in the checkpoint -> variable of ``graph``) from the
    checkpoint ``prefix``, for training, ``eval``, ``export`` and each member of an ensemble.

    Raises:
        CheckpointError: naming the variable and both shapes when the checkpoint was made for
            another model, or the file when it is unreadable or damaged.
    """
    from mnistctl._tf import tf

    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointError(f"{prefix}: unreadable checkpoint ({_first_line(err)})") from None
    saved = reader.get_variable_to_shape_map()
    for name, var in variables.items():
        if name not in saved:
            raise CheckpointError(f"{prefix}: made for another model: it has no variable {name}")
        if list(saved[name]) != var.shape.as_list():
            raise CheckpointError(
                f"{prefix}: made for another model: {name} has shape {list(saved[name])} "
                f"there and {var.shape.as_list()} in this config"
            )
    with graph.as_default():
        saver = tf.compat.v1.train.Saver(variables)
    try:
        saver.restore(session, prefix)
    except (tf.errors.OpError, ValueError) as err:
        raise CheckpointError(f"{prefix}: damaged checkpoint ({_first_line(err)})") from None


def _cause(err: Exception) -> str:
    """The operating system's words in a TensorFlow I/O error (``No space left on device``)."""
    text = getattr(err, "message", None) or str(err)
    for line in text.splitlines():
        if "; " in line and "/" in line.split("; ")[0]:
            return line.rsplit("; ", 1)[1].strip()
    return _first_line(err)


def _first_line(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__
