"""Run a list of independent dask tasks with a bounded number in flight, results in order.

Per-frame work is a list of independent delayed tasks, one per frame. Computing them in fixed
windows (``dask.compute`` on ``window`` tasks, then the next window) keeps memory bounded but
leaves workers idle at each window's end, while the slowest frame of the window finishes. Here a
new task starts as soon as one finishes (a sliding window), on the local threaded scheduler or
on a ``dask.distributed`` client; at most ``max_in_flight`` results are pending at any time.

dask has no ready-made "bounded as-completed map" over delayed objects for the local scheduler
(``dask.compute`` takes the whole list at once, so memory would grow with the movie), hence this
small helper on ``concurrent.futures`` and ``distributed.as_completed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

__all__ = ["compute_bounded"]


def _compute_sync(task: Any) -> Any:
    import dask

    # each task runs on one pool thread; its own small graph (reading one frame) runs inline
    return dask.compute(task, scheduler="sync")[0]


def compute_bounded(
    tasks: Sequence[Any],
    *,
    client: Any = None,
    n_workers: int = 1,
    max_in_flight: int | None = None,
    on_done: Callable[[int], None] | None = None,
    consume: Callable[[int, Any], Any] | None = None,
) -> list[Any]:
    """Compute delayed ``tasks`` with at most ``max_in_flight`` running or unread at a time.

    Parameters
    ----------
    tasks
        Independent ``dask.delayed`` objects.
    client
        A ``dask.distributed.Client``; None: a local pool of ``n_workers`` threads.
    n_workers
        Threads of the local pool (ignored with a client).
    max_in_flight
        Tasks submitted but not yet collected; default ``2 * n_workers``.
    on_done
        Called with the number of finished tasks after each one finishes.
    consume
        ``consume(index, result) -> kept``, called in this thread as each result arrives
        (in the order they finish); what it returns is kept instead of the result, so large
        parts can be handed on and dropped while later tasks still run.

    Returns
    -------
    list
        The results, in the order of ``tasks`` (independent of the order they finish in).
    """
    n = len(tasks)
    n_workers = max(1, int(n_workers))
    limit = max(1, int(max_in_flight or 2 * n_workers))
    results: list[Any] = [None] * n
    done = 0
    if n == 0:
        return results
    if client is not None:
        from distributed import as_completed

        index: dict[Any, int] = {}
        pending = as_completed()
        nxt = 0
        while nxt < min(limit, n):
            fut = client.compute(tasks[nxt])
            index[fut.key] = nxt
            pending.add(fut)
            nxt += 1
        for fut in pending:
            i = index.pop(fut.key)
            res = fut.result()  # raises the task's own exception
            fut.release()
            results[i] = res if consume is None else consume(i, res)
            done += 1
            if on_done is not None:
                on_done(done)
            if nxt < n:
                new = client.compute(tasks[nxt])
                index[new.key] = nxt
                pending.add(new)
                nxt += 1
        return results

    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="migradetect") as pool:
        running: dict[Any, int] = {}
        nxt = 0
        try:
            while nxt < n or running:
                while nxt < n and len(running) < limit:
                    running[pool.submit(_compute_sync, tasks[nxt])] = nxt
                    nxt += 1
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in sorted(finished, key=running.__getitem__):
                    i = running.pop(fut)
                    res = fut.result()
                    results[i] = res if consume is None else consume(i, res)
                    done += 1
                    if on_done is not None:
                        on_done(done)
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    return results
