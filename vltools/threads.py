"""The one thread pool vltools shares in a process: tiling, video frames, the second decoder.

PIL's resize, numpy's arithmetic and decord's decoding release the GIL, so a few threads help
on a machine with several cores. Every part of vltools that wants threads takes them from
:func:`shared_pool` instead of making its own: image tiling (:mod:`vltools.images`), the video
loader's frame tiler (:mod:`vltools.video`) and decord's second reader
(:mod:`vltools.decoding`).

Rules for work sent to the pool: a job never waits for another job of the pool (the pool is
small; a job waiting for a queued one could wait forever). Code that may itself run on a pool
thread checks :func:`on_pool_thread` and does its work inline there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

__all__ = [
    "THREAD_PREFIX",
    "build_ahead",
    "cancel_and_wait",
    "on_pool_thread",
    "pool_size",
    "shared_pool",
]

# The name every pool thread's name starts with.
THREAD_PREFIX = "vltools-pool"

_POOL: tuple[int, ThreadPoolExecutor] | None = None
_LOCK = threading.Lock()


def pool_size() -> int:
    """Worker threads of the shared pool: the machine's cores, at least 2 and at most 4."""
    return max(2, min(4, os.cpu_count() or 2))


def shared_pool() -> ThreadPoolExecutor:
    """The process's thread pool, made on first use and kept for the life of the process.

    One per process: a forked child (a DataLoader worker) gets its own, since the parent's
    worker threads do not exist there.
    """
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=pool_size(), thread_name_prefix=THREAD_PREFIX)
            _POOL = (os.getpid(), pool)
        return _POOL[1]


def on_pool_thread() -> bool:
    """Whether the calling thread is one of the shared pool's workers."""
    return threading.current_thread().name.startswith(THREAD_PREFIX)


def cancel_and_wait(futures: Iterable[Future | None]) -> None:
    """Drop the jobs of ``futures`` that have not started and wait for the running ones.

    What a caller does on the way out (also on error) when the jobs write into its buffers:
    none of them may still be running once it returns. ``None`` entries are skipped.
    """
    running = [f for f in futures if f is not None and not f.cancel()]
    wait(running)


def build_ahead(make: Callable[[int, int], tuple], steps: int, first: int) -> Iterator[tuple]:
    """``make(step, start)`` for ``step`` = 0 .. ``steps - 1`` in order, each built on the pool
    while the caller works on the one before.

    Each result is a tuple whose last item is the next step's ``start`` (the first is
    ``first``): a training loop's batches, where a batch's scenes follow the previous batch's.
    The results are those of calling ``make`` one step after another; only the time differs.
    Closing the iterator early (or an error in the caller's loop, with ``contextlib.closing``)
    drops or waits for the batch being built; an error in ``make`` is raised at its step.
    """
    pool = shared_pool()
    future = pool.submit(make, 0, first) if steps > 0 else None
    try:
        for step in range(steps):
            result = future.result()
            future = pool.submit(make, step + 1, result[-1]) if step + 1 < steps else None
            yield result
    finally:
        cancel_and_wait([future])
