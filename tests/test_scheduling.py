"""compute_bounded: order kept, bounded concurrency, errors raised, same on a distributed client."""

from __future__ import annotations

import threading
import time

import dask
import pytest

from migradetect.scheduling import compute_bounded


class _Gauge:
    """Counts tasks running at the same time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def run(self, i: int, delay: float) -> int:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        time.sleep(delay)
        with self.lock:
            self.now -= 1
        return i * i


def test_results_in_task_order_and_bounded_concurrency():
    gauge = _Gauge()
    # later tasks finish first: the order of results must still be the order of tasks
    delays = [0.04, 0.01, 0.03, 0.0, 0.02, 0.01, 0.0, 0.03, 0.01]
    tasks = [dask.delayed(gauge.run)(i, d) for i, d in enumerate(delays)]
    seen = []
    out = compute_bounded(tasks, n_workers=3, max_in_flight=3, on_done=seen.append)
    assert out == [i * i for i in range(len(delays))]
    assert seen == list(range(1, len(delays) + 1))
    assert 2 <= gauge.peak <= 3


def test_one_worker_runs_one_task_at_a_time():
    gauge = _Gauge()
    tasks = [dask.delayed(gauge.run)(i, 0.005) for i in range(5)]
    assert compute_bounded(tasks, n_workers=1) == [0, 1, 4, 9, 16]
    assert gauge.peak == 1


def test_empty_list():
    assert compute_bounded([], n_workers=2) == []


def _boom(i: int) -> int:
    if i == 3:
        raise ValueError("frame 3 is bad")
    return i


def test_task_error_is_raised():
    tasks = [dask.delayed(_boom)(i) for i in range(6)]
    with pytest.raises(ValueError, match="frame 3 is bad"):
        compute_bounded(tasks, n_workers=2)


def test_task_reading_a_dask_array_chunk():
    import dask.array as da
    import numpy as np

    arr = da.arange(40, chunks=4).reshape(10, 4)
    tasks = [dask.delayed(np.sum)(arr[t]) for t in range(10)]
    assert compute_bounded(tasks, n_workers=2) == [int(arr[t].sum()) for t in range(10)]


def _square(i: int) -> int:
    time.sleep(0.01 * (i % 3))
    return i * i


def test_distributed_client_gives_the_same_results():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        tasks = [dask.delayed(_square, pure=False)(i) for i in range(7)]
        seen = []
        out = compute_bounded(tasks, client=client, max_in_flight=2, on_done=seen.append)
        assert out == [i * i for i in range(7)]
        assert seen == list(range(1, 8))
        with pytest.raises(ValueError, match="frame 3 is bad"):
            compute_bounded([dask.delayed(_boom, pure=False)(i) for i in range(5)],
                            client=client)
