"""A bounded worker pool with a bounded queue in front: the server's only way to run an inference.

Decoding, the model and encoding all run on the pool's threads, so CPU work and the memory of decoded photos
are bounded by `concurrency`, and waiting requests by `max_queue`: a request that finds the queue full is
refused at once (503 with Retry-After) instead of piling up threads, and one that waits longer than
`timeout` gets 504. The event loop only reads uploads and writes responses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Busy(Exception):
    """The queue is full: the client should retry later."""


class QueueTimeout(Exception):
    """The request waited longer than the queue timeout for a worker."""


class InferencePool:
    """At most `concurrency` jobs run and at most `max_queue` wait; the counters feed /metrics."""

    def __init__(self, concurrency: int, max_queue: int, timeout: float) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cutq-infer")
        self._slots: asyncio.Semaphore | None = None  # created on the server's loop
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self.peak_running = 0  # the most jobs ever seen running at once: never above `concurrency`
        self.refused = 0
        self.timed_out = 0

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on a worker thread once a slot is free; `Busy` or `QueueTimeout` when it cannot."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        if self._slots.locked() and self.waiting >= self.max_queue:
            self.refused += 1
            raise Busy
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.timeout)
        except asyncio.TimeoutError:
            self.timed_out += 1
            raise QueueTimeout from None
        finally:
            self.waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._tracked, job)
        finally:
            self._slots.release()

    def _tracked(self, job: Callable[[], T]) -> T:
        with self._lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            return job()
        finally:
            with self._lock:
                self.running -= 1

    def shutdown(self) -> None:
        """Finish what runs, then stop the threads (uvicorn has already let in-flight requests complete)."""
        self._executor.shutdown(wait=True)
