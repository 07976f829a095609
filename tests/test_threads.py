"""The one shared thread pool: one per process, jobs cancelled or awaited on the way out."""

from __future__ import annotations

import threading

import pytest

from vltools.threads import (
    THREAD_PREFIX,
    cancel_and_wait,
    on_pool_thread,
    pool_size,
    shared_pool,
)


def test_every_caller_gets_the_same_pool_of_a_few_named_threads():
    pool = shared_pool()
    assert shared_pool() is pool
    assert 2 <= pool_size() <= 4 and pool._max_workers == pool_size()
    name = pool.submit(lambda: threading.current_thread().name).result(timeout=30)
    assert name.startswith(THREAD_PREFIX)
    assert pool.submit(on_pool_thread).result(timeout=30) is True
    assert on_pool_thread() is False


def test_cancel_and_wait_drops_queued_jobs_and_waits_for_running_ones():
    pool = shared_pool()
    release = threading.Event()
    started = [threading.Event() for _ in range(pool_size())]
    finished: list[int] = []

    def block(k: int) -> None:
        started[k].set()
        release.wait(timeout=30)
        finished.append(k)

    running = [pool.submit(block, k) for k in range(pool_size())]  # every worker busy
    for event in started:
        assert event.wait(timeout=30)
    queued = pool.submit(finished.append, -1)  # cannot start: no free worker
    threading.Timer(0.2, release.set).start()
    cancel_and_wait([*running, queued, None])
    assert queued.cancelled()
    assert sorted(finished) == list(range(pool_size()))  # every running job had finished


def test_a_forked_child_gets_a_pool_of_its_own():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    shared_pool().submit(lambda: None).result(timeout=30)  # the parent's pool exists
    with multiprocessing.get_context("fork").Pool(1) as child:
        assert child.apply_async(_pool_works_in_child).get(timeout=60) is True


def _pool_works_in_child() -> bool:
    return shared_pool().submit(lambda: True).result(timeout=30)
