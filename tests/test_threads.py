"""The one shared thread pool: one per process, jobs cancelled or awaited on the way out."""

from __future__ import annotations

import threading

import pytest

from vltools.threads import (
    THREAD_PREFIX,
    build_ahead,
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


def _batch(step: int, start: int) -> tuple[int, str, list[int], int]:
    """A step's "batch": scenes from ``start``, as many as the step's number plus one."""
    scenes = list(range(start, start + step + 1))
    return step, threading.current_thread().name, scenes, start + len(scenes)


def test_build_ahead_gives_the_batches_in_order_each_built_on_the_pool_ahead_of_its_step():
    made: list[int] = []
    second = threading.Event()

    def make(step: int, start: int):
        made.append(step)
        if step == 1:
            second.set()
        return _batch(step, start)

    batches = build_ahead(make, 4, 10)
    one = next(batches)
    assert one[0] == 0 and one[2] == [10] and one[1].startswith(THREAD_PREFIX)
    assert second.wait(timeout=30)  # the next step is built while the caller holds this one
    assert made == [0, 1]
    rest = list(batches)
    assert [b[0] for b in rest] == [1, 2, 3]
    assert [b[2] for b in rest] == [[11, 12], [13, 14, 15], [16, 17, 18, 19]]
    sequential, start = [], 10
    for step in range(4):
        result = _batch(step, start)
        sequential.append(result[2])
        start = result[-1]
    assert [one[2], *(b[2] for b in rest)] == sequential
    assert list(build_ahead(make, 0, 10)) == []


def test_build_ahead_raises_a_failed_step_at_that_step_and_waits_for_the_next_when_closed():
    def make(step: int, start: int):
        if step == 2:
            raise ValueError(f"no scenes for step {step}")
        return _batch(step, start)

    batches = build_ahead(make, 5, 0)
    assert next(batches)[0] == 0 and next(batches)[0] == 1
    with pytest.raises(ValueError, match="no scenes for step 2"):
        next(batches)
    started, release = threading.Event(), threading.Event()
    finished: list[int] = []

    def slow(step: int, start: int):
        if step == 1:
            started.set()
            release.wait(timeout=30)
            finished.append(step)
        return _batch(step, start)

    early = build_ahead(slow, 3, 0)
    assert next(early)[0] == 0
    assert started.wait(timeout=30)  # step 1 is being built, and blocks
    threading.Timer(0.2, release.set).start()
    early.close()
    assert finished == [1]  # closing waited for it
