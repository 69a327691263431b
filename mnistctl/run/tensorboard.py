"""TensorBoard's view of a run: each evaluation's scalars, the weights' and biases' histograms,
an image of the misrecognised test digits, the graph, and the config's values for the HParams
dashboard, written as event files by a hook that only writes what the loop measured."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mnistctl.digits import mosaic_png
from mnistctl.train.events import EvalEvent, Hook, TrainContext

if TYPE_CHECKING:
    from mnistctl.config import Experiment
    from mnistctl.status import Status


def event_writer(tf, logdir: Path, graph):
    """A FileWriter whose file no other writer shares. TensorFlow names the file by the second it
    is made: a run resumed within the second its last process began (after a quick crash) would
    reuse the name and wipe the events written before. The suffix (the time in nanoseconds, then
    the pid) keeps the names apart and in the order they were made, which is the order
    TensorBoard reads them in."""
    suffix = f".{time.time_ns():019d}.{os.getpid()}"
    return tf.compat.v1.summary.FileWriter(str(logdir), graph=graph, filename_suffix=suffix)


def hparams_summary(exp: Experiment, trial: str) -> bytes:
    """The config's values for TensorBoard's HParams dashboard, so ``tensorboard --logdir runs``
    (or a sweep's directory) lines runs up by their settings and results."""
    from tensorboard.plugins.hparams import summary_v2 as hp

    from mnistctl.config import flatten, to_dict

    values = {}
    for key, value in flatten(to_dict(exp)).items():
        if key == "description" or value is None:
            continue
        values[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return hp.hparams_pb(values, trial_id=trial).SerializeToString()


SCALARS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "validation_loss",
    "validation_accuracy",
    "learning_rate",
)
MISRECOGNISED_SHOWN = 40  # digits in TensorBoard's image of each evaluation's mistakes


def _io_error(err: RuntimeError, logdir: Path) -> OSError:
    """TensorFlow's event writer error (``<file>; No space left on device``, then more lines) as
    the OSError it stands for."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    path, _, cause = first.rpartition("; ")
    return OSError(None, cause or first, path or str(logdir))


def _quiet_event_writer_threads() -> None:
    """TensorFlow's event writer thread logs its I/O error and dies with a traceback on stderr,
    then the error reaches us on the next write, and we report it in one line: keep the first
    two quiet."""
    import logging

    if getattr(_quiet_event_writer_threads, "done", False):
        return
    _quiet_event_writer_threads.done = True  # type: ignore[attr-defined]
    logging.getLogger("tensorflow").addFilter(
        lambda r: "EventFileWriter writer thread error" not in r.getMessage()
    )
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == "EventLoggerThread":
            return
        previous(args)

    threading.excepthook = hook


class TensorBoardWriter(Hook):
    """Writes the scalars of each evaluation, the weights' histograms and an image of the
    misrecognised test digits (and the graph, and the config's values for the HParams
    dashboard) as TensorFlow event files."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._writer = None

    def begin(self, ctx: TrainContext) -> None:
        from mnistctl._tf import tf  # only training writes events, and it has TF loaded

        self._tf = tf
        _quiet_event_writer_threads()
        self._writer = event_writer(tf, self.logdir, ctx.graph.graph)
        # A START session log tells TensorBoard to forget earlier events from step start+1 on,
        # which a resumed run (even one resumed from step 0) is about to write again.
        log = tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START)
        self._writer.add_session_log(log, ctx.start_step + 1)
        self._writer.add_summary(hparams_summary(ctx.experiment, self.logdir.parent.name), ctx.start_step)

    def after_eval(self, ctx: TrainContext, event: EvalEvent) -> None:
        record = event.record
        summary = self._tf.compat.v1.Summary()
        for tag in SCALARS:
            value = getattr(record, tag)
            if math.isfinite(value):
                group, _, name = tag.partition("_")
                summary.value.add(
                    tag=f"{name}/{group}" if group in ("train", "test", "validation") else tag,
                    simple_value=value,
                )
        wrong = np.flatnonzero(event.test_predictions != ctx.data.test_labels)[:MISRECOGNISED_SHOWN]
        if wrong.size:
            height, width, png = mosaic_png(ctx.data.test_images[wrong])
            image = self._tf.compat.v1.Summary.Image(
                height=height, width=width, colorspace=3, encoded_image_string=png
            )
            summary.value.add(tag="misrecognised_test_digits", image=image)
        for name, value in event.weights + event.biases:
            histogram = self._histogram(value)
            if histogram is not None:
                summary.value.add(tag=name, histo=histogram)
        try:
            self._writer.add_summary(summary, record.step)
            self._writer.flush()
        except RuntimeError as err:  # the writer thread's I/O error: "<file>; No space left on device"
            raise _io_error(err, self.logdir) from None

    def _histogram(self, values: np.ndarray):
        """A histogram of the finite values (a diverging run's weights may not all be), or None."""
        values = np.ravel(values).astype(np.float64)
        values = values[np.isfinite(values)]
        if not values.size:
            return None
        counts, edges = np.histogram(values, bins=30)
        return self._tf.compat.v1.HistogramProto(
            min=float(values.min()),
            max=float(values.max()),
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=[float(e) for e in edges[1:]],
            bucket=[float(c) for c in counts],
        )

    def end(self, ctx: TrainContext, status: Status) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except RuntimeError as err:  # as in after_eval: the writer thread's I/O error
                raise _io_error(err, self.logdir) from None
