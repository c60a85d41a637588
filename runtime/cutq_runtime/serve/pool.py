"""A bounded worker pool with a bounded queue in front: the server's only way to run an inference.

Decoding, the model and encoding all run on the pool's threads, so CPU work and the memory of decoded photos
are bounded by `concurrency`. Requests are admitted before their body is read (`admit`, called by the
admission middleware): at most `concurrency + max_queue` are inside at once, and one more is refused at once
(503 with Retry-After) without reading its upload, so a burst of clients costs the server almost nothing.
One that waits longer than `timeout` for a worker gets 504. The event loop only reads uploads and writes
responses.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


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
        self.admitted = 0  # requests inside: reading their upload, waiting for a worker or running
        self.waiting = 0
        self.running = 0
        self.peak_running = 0  # the most jobs ever seen running at once: never above `concurrency`
        self.refused = 0
        self.timed_out = 0

    def admit(self) -> bool:
        """Let one more request in, or count a refusal when `concurrency + max_queue` are already inside."""
        if self.admitted >= self.concurrency + self.max_queue:
            self.refused += 1
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on a worker thread once a slot is free; `QueueTimeout` when none frees up in time."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
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
