"""The serving batcher: concurrent requests merged into one model call, each answered with its own rows."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mnistctl.serving.request_batching import Batcher


class SlowModel:
    """Each image's row is its index tag times the class index; every call takes 20 ms."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("the model failed")
        return images[:, :1] * np.arange(10)


def submit_concurrently(batcher: Batcher, requests: list[np.ndarray]) -> list:
    results: list = [None] * len(requests)

    def client(i: int) -> None:
        try:
            results[i] = batcher.submit(requests[i]).result(timeout=10)
        except RuntimeError as err:
            results[i] = err

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_are_merged_and_each_gets_its_own_rows():
    model = SlowModel()
    batcher = Batcher(model, max_batch=16, threads=1)
    requests = [np.full((1 + i % 3, 1), float(i)) for i in range(40)]  # 1-3 images each, tagged i
    results = submit_concurrently(batcher, requests)
    batcher.close()
    for i, (request, rows) in enumerate(zip(requests, results, strict=True)):
        assert rows.shape == (len(request), 10)
        assert np.array_equal(rows, np.full((len(request), 1), float(i)) * np.arange(10))
    assert sum(model.calls) == sum(len(r) for r in requests) == batcher.images
    assert max(model.calls) <= 16 and len(model.calls) < 40  # merged, never over the limit
    assert batcher.batches == len(model.calls)


def test_a_lone_request_runs_at_once_and_a_large_one_runs_alone():
    model = SlowModel()
    batcher = Batcher(model, max_batch=4, threads=1)
    started = time.perf_counter()
    assert batcher.submit(np.ones((1, 1))).result(timeout=10).shape == (1, 10)
    assert time.perf_counter() - started < 0.5  # no waiting for company with max_wait 0
    assert batcher.submit(np.ones((9, 1))).result(timeout=10).shape == (9, 10)
    batcher.close()
    assert model.calls == [1, 9]


def test_a_failing_model_call_fails_every_request_of_its_batch():
    batcher = Batcher(SlowModel(fail=True), max_batch=8, threads=1)
    results = submit_concurrently(batcher, [np.ones((1, 1))] * 6)
    batcher.close()
    assert all(isinstance(r, RuntimeError) and str(r) == "the model failed" for r in results)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_batch and threads must be >= 1"):
        Batcher(SlowModel(), max_batch=0)
