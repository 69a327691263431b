"""A run's life: the statuses a run's record can hold and the changes between them.

``Run.update`` (mnistctl.run.directory) is the one place a status is written, and it refuses any change
that ``TRANSITIONS`` does not allow: a bug, never a user's error. Nothing here imports anything
of mnistctl's, so every layer can name a status.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Status(str, Enum):
    """How a run stands. Written to run.json as its value; ``crashed`` is never written but
    read: a run whose record claims a live process that is gone."""

    CREATED = "created"  # the directory exists; training has not begun
    RESUMING = "resuming"  # a resume is restoring the latest checkpoint
    RUNNING = "running"
    COMPLETED = "completed"  # every step trained
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: checkpointed, resumable
    DIVERGED = "diverged"  # the loss became NaN or infinite
    FAILED = "failed"  # an error; run.json's ``error`` says which
    STOPPED = "stopped"  # ended early on purpose (a sweep's scheduler): not resumed
    TARGET_REACHED = "target_reached"  # train.stop_at's target was met: trained enough
    EARLY_STOPPED = "early_stopped"  # train.early_stopping: no improvement for its patience
    CRASHED = "crashed"  # the process died without a word (kill -9, power cut)
    UNKNOWN = "unknown"  # a value this version does not know

    def __str__(self) -> str:
        return self.value

    @property
    def claimed(self) -> bool:
        """A process says it owns the run (alive, unless its process is gone)."""
        return self in (Status.CREATED, Status.RESUMING, Status.RUNNING)

    @property
    def finished(self) -> bool:
        """Trained to its last step, or as far as its stopping rules wanted, and ended cleanly."""
        return self in (Status.COMPLETED, Status.TARGET_REACHED, Status.EARLY_STOPPED)

    @property
    def ended_by_rule(self) -> bool:
        """Ended by ``train.stop_at`` or ``train.early_stopping`` (``stop_reason`` says how)."""
        return self in (Status.TARGET_REACHED, Status.EARLY_STOPPED)

    @property
    def resumable(self) -> bool:
        """Stopped part-way by accident, so running it again should continue it."""
        return self in (Status.INTERRUPTED, Status.CRASHED)

    @property
    def checkpointed_at_end(self) -> bool:
        """Ended in a state worth a final checkpoint and predictions."""
        return self in (
            Status.COMPLETED,
            Status.INTERRUPTED,
            Status.STOPPED,
            Status.TARGET_REACHED,
            Status.EARLY_STOPPED,
        )

    @classmethod
    def parse(cls, value: Any) -> Status:
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    def may_become(self, new: Status) -> bool:
        """Whether a run's record may go from this status to ``new`` (see TRANSITIONS)."""
        return new == self or new in TRANSITIONS.get(self, frozenset())


# A run's life, the one place that says it: each recorded status and those it may go to.
# ``crashed`` and ``unknown`` are only ever read (never written), and every other change is a
# bug that Run.update refuses. A resume starts from any ended status (``completed`` extended,
# ``failed`` or ``diverged`` retried from their last good checkpoint) or from a claimed one
# whose process is gone; a sweep says ``stopped`` (its scheduler ended the trial) or
# ``interrupted`` (the sweep itself was) of trials it ended.
_ENDED_BY_THE_LOOP = frozenset(
    {
        Status.COMPLETED,
        Status.INTERRUPTED,
        Status.DIVERGED,
        Status.FAILED,
        Status.STOPPED,
        Status.TARGET_REACHED,
        Status.EARLY_STOPPED,
    }
)
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.RUNNING, Status.RESUMING, Status.INTERRUPTED, Status.FAILED}),
    Status.RESUMING: frozenset({Status.RUNNING, Status.INTERRUPTED, Status.FAILED}),
    Status.RUNNING: _ENDED_BY_THE_LOOP | {Status.RESUMING},
    Status.COMPLETED: frozenset({Status.RESUMING}),
    Status.INTERRUPTED: frozenset({Status.RESUMING, Status.STOPPED}),
    Status.DIVERGED: frozenset({Status.RESUMING}),
    Status.FAILED: frozenset({Status.RESUMING}),
    Status.STOPPED: frozenset({Status.RESUMING, Status.INTERRUPTED}),
    Status.TARGET_REACHED: frozenset({Status.RESUMING}),
    Status.EARLY_STOPPED: frozenset({Status.RESUMING}),
}


class StatusError(TypeError):
    """A status change the run's life does not allow: a bug in mnistctl, not a user's error."""
