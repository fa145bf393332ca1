"""Calls handed to a worker thread in batches.

Each hand-off between the event loop and a worker thread costs two thread wake-ups (the worker,
then the loop), ~25 us each on a virtual machine, more than a SoftHSM signature's own work.
Under load many requests wait for the one hardware thread at once; handed over as a batch, they
share those wake-ups: the worker runs every call queued when it starts, then the loop settles
all their futures at once. An idle service hands over one call at a time, as before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class BatchedWorker:
    """Runs calls on `executor` (one thread: a PKCS#11 session or PC/SC card) in batches."""

    def __init__(self, executor: Executor):
        self._executor = executor
        self._lock = threading.Lock()  # the queue is filled by the loop, emptied by the worker
        self._queue: list[tuple[Callable[..., Any], tuple, asyncio.Future]] = []
        self._draining = False

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)`, run on the worker thread; its result or its exception."""
        loop = asyncio.get_running_loop()
        job = (fn, args, loop.create_future())
        with self._lock:
            self._queue.append(job)
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain, loop)
            except BaseException:  # shut down: nothing will run this call
                with self._lock:
                    self._queue.remove(job)
                    self._draining = False
                raise
        return await job[2]

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the worker: run batches until the queue is empty."""
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            done = []
            for fn, args, future in batch:
                try:
                    done.append((future, fn(*args), None))
                except Exception as e:  # noqa: BLE001 - the caller's to handle
                    done.append((future, None, e))
            loop.call_soon_threadsafe(_settle, done)


def _settle(done: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, result, error in done:
        if future.done():  # the request was cancelled (its client went away)
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
