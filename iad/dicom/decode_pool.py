"""Decoding a series' compressed files on a pool of worker processes (or threads), in file order.

pydicom's decoders (pylibjpeg-libjpeg, -openjpeg, gdcm) hold the GIL while they decode: threads
spread a JPEG-lossless or JPEG 2000 series over no more cores than one (`benchmarks/read.py`
measures both), so processes are the default. Pools live as long as the interpreter (started on
first use, reused by every series) so a predictor pays their start once, not per series.
"""

from __future__ import annotations

import atexit
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
import multiprocessing
import os
import warnings

DEFAULT_POOL = "processes"
PREFETCH_PER_WORKER = 2  # files decoded ahead of the consumer per worker: bounds the pixels held in flight


def _process_pool(workers: int) -> Executor:
    # spawn, not fork: the caller may hold torch/OpenMP threads, which a forked child can deadlock on
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


POOL_KINDS: dict[str, Callable[[int], Executor]] = {
    "processes": _process_pool,
    "threads": lambda workers: ThreadPoolExecutor(workers, thread_name_prefix="iad-decode"),
}
_POOLS: dict[tuple[str, int], Executor] = {}


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(workers: int | None) -> int:
    """`None` → every core; 0 or 1 → serial (1)."""
    return default_workers() if workers is None else max(1, int(workers))


def get_pool(kind: str, workers: int) -> Executor:
    """The interpreter-wide pool of `kind` ("processes" | "threads") with `workers` workers."""
    if kind not in POOL_KINDS:
        raise ValueError(f"read pool must be one of {sorted(POOL_KINDS)}, got {kind!r}")
    key = (kind, workers)
    if key not in _POOLS:
        _POOLS[key] = POOL_KINDS[kind](workers)
    return _POOLS[key]


def warm_pool(kind: str, workers: int) -> None:
    """Start every worker now (process start-up and imports), so the first series does not pay for it."""
    pool = get_pool(kind, workers)
    for future in [pool.submit(os.getpid) for _ in range(workers)]:
        future.result()


def discard_pool(kind: str, workers: int, reason: BaseException) -> None:
    """Forget a pool that broke (e.g. a worker killed, or a script that spawns at import); warns once per pool."""
    pool = _POOLS.pop((kind, workers), None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
        warnings.warn(f"the {kind} read pool broke ({type(reason).__name__}: {reason}); decoding serially until a new "
                      "one starts (a script using process pools needs `if __name__ == '__main__':`)", RuntimeWarning,
                      stacklevel=3)


@atexit.register
def shutdown_pools() -> None:
    """Stop every pool (their workers exit with the interpreter anyway)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=False, cancel_futures=True)


def ordered_map(pool: Executor, fn: Callable, items: list, workers: int) -> Iterator:
    """fn(*item) for each item, yielded in item order, at most PREFETCH_PER_WORKER × workers in flight.

    Stopping the iteration (a time-out, an exception in the consumer) cancels what has not started.
    """
    pending: deque[Future] = deque()
    todo = iter(items)
    window = PREFETCH_PER_WORKER * workers
    try:
        for item in todo:
            pending.append(pool.submit(fn, *item))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            for item in todo:
                pending.append(pool.submit(fn, *item))
                break
            yield result
    finally:
        for future in pending:
            future.cancel()
