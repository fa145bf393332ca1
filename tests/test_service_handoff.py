"""The hardware thread's hand-off in batches (hsmsign/service/handoff.py), on a real thread
pool: what waits together runs together, each caller gets its own result or error, in the
order asked, and a caller that goes away takes nothing from the others."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hsmsign.service.handoff import BatchedWorker


def run(coroutine):
    return asyncio.run(coroutine)


def test_calls_waiting_together_share_a_hand_off_in_the_order_asked():
    seen: list[tuple[int, str]] = []  # (call, thread)
    gate = threading.Event()

    def work(n: int) -> int:
        if n == 0:
            gate.wait(5)  # the first call holds the thread while 49 more queue up
        seen.append((n, threading.current_thread().name))
        return n * n

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
            worker = BatchedWorker(pool)
            first = asyncio.ensure_future(worker.call(work, 0))
            await asyncio.sleep(0.05)
            rest = [asyncio.ensure_future(worker.call(work, n)) for n in range(1, 50)]
            await asyncio.sleep(0.05)
            # The 49 wait in the batch queue: none was handed to the pool on its own.
            handed_over = pool._work_queue.qsize()
            gate.set()
            results = await asyncio.gather(first, *rest)
            await asyncio.sleep(0.05)  # the worker finds the queue empty and goes idle
            later = await asyncio.wait_for(worker.call(work, 50), 5)  # a new drain starts
            return results, handed_over, later

    results, handed_over, later = run(main())
    assert handed_over == 0
    assert results == [n * n for n in range(50)] and later == 2500
    assert [n for n, _ in seen] == list(range(51))
    assert {name for _, name in seen} == {"worker_0"}


def test_each_caller_gets_its_own_error_and_the_worker_goes_on():
    def work(n: int) -> int:
        if n % 3 == 0:
            raise ValueError(f"call {n} failed")
        return n

    async def main():
        with ThreadPoolExecutor(1) as pool:
            worker = BatchedWorker(pool)
            outcomes = await asyncio.gather(*(worker.call(work, n) for n in range(10)),
                                            return_exceptions=True)
            after = await worker.call(work, 4)
            return outcomes, after

    outcomes, after = run(main())
    for n, outcome in enumerate(outcomes):
        if n % 3 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == f"call {n} failed"
        else:
            assert outcome == n
    assert after == 4


def test_a_caller_that_goes_away_takes_nothing_from_the_others():
    gate = threading.Event()

    def work(n: int) -> int:
        gate.wait(5)
        return n

    async def main():
        with ThreadPoolExecutor(1) as pool:
            worker = BatchedWorker(pool)
            calls = [asyncio.ensure_future(worker.call(work, n)) for n in range(5)]
            await asyncio.sleep(0.05)
            calls[2].cancel()  # its client hung up while the token was busy
            gate.set()
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = run(main())
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert [o for n, o in enumerate(outcomes) if n != 2] == [0, 1, 3, 4]


def test_a_shut_down_pool_is_an_error_and_leaves_nothing_queued():
    async def main():
        pool = ThreadPoolExecutor(1)
        pool.shutdown()
        worker = BatchedWorker(pool)
        with pytest.raises(RuntimeError):
            await worker.call(lambda: 1)
        return worker._queue, worker._draining

    assert run(main()) == ([], False)
