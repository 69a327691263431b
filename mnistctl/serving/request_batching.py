"""Concurrent predictions merged into one ``session.run``, as TensorFlow Serving's batching does.

Requests queue up; a few worker threads each take whatever is waiting (up to ``max_batch``
images), wait at most ``max_wait_s`` for more, run the model once on all of it and hand each
request its own rows. With nothing else waiting a request runs at once, alone: batching costs
a lone client nothing, and under load one ``session.run`` of 32 images costs far less than 32
of one.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Request:
    images: np.ndarray
    future: Future = field(default_factory=Future)


class Batcher:
    """Merges the images of concurrent :meth:`submit` calls into batches for ``predict``.

    Args:
        predict: images ``[N, ...]`` -> one row per image; called from the worker threads.
        max_batch: images per ``predict`` call at most (a larger request runs alone).
        max_wait_s: how long a batch that is not full waits for more requests (0: take only
            what is already waiting).
        threads: batches in flight at once (one per core suits a session with one thread per run).
    """

    def __init__(self, predict: Predict, *, max_batch: int = 64, max_wait_s: float = 0.0, threads: int = 2):
        if max_batch < 1 or max_wait_s < 0 or threads < 1:
            raise ValueError("max_batch and threads must be >= 1 and max_wait_s >= 0")
        self.predict, self.max_batch, self.max_wait_s = predict, max_batch, max_wait_s
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()  # guards the counters
        self.batches = 0
        self.images = 0
        self._workers = [
            threading.Thread(target=self._work, daemon=True, name=f"batcher-{i}") for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, images: np.ndarray) -> Future:
        """Queue ``images``; the future's result is their rows of ``predict``'s output."""
        request = _Request(images)
        self._queue.put(request)
        return request.future

    def close(self) -> None:
        """Let the workers finish what is queued, then stop them."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=10)

    def _work(self) -> None:
        carry: _Request | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch, size = [first], len(first.images)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    left = deadline - time.monotonic()
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # a stop meant for this worker, after this batch
                    break
                if size + len(item.images) > self.max_batch:
                    carry = item  # first in the next batch
                    break
                batch.append(item)
                size += len(item.images)
            self._run(batch, size)

    def _run(self, batch: list[_Request], size: int) -> None:
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([r.images for r in batch])
            rows = self.predict(images)
        except Exception as err:  # every request of the batch gets the error
            for request in batch:
                request.future.set_exception(err)
            return
        with self._lock:
            self.batches += 1
            self.images += size
        start = 0
        for request in batch:
            end = start + len(request.images)
            request.future.set_result(rows[start:end])
            start = end
