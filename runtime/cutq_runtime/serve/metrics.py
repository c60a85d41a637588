"""Prometheus text for GET /metrics, written by hand: a dozen lines instead of another dependency.

The session count is not bookkeeping: it counts the live `onnxruntime.InferenceSession` objects in the process,
so a session created per request (rembg's memory leak) would show.
"""

from __future__ import annotations

import gc
import os
import threading
from bisect import bisect_left
from collections import Counter

import onnxruntime as ort

from .pool import InferencePool

BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds


def rss_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 where it is not available)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def live_sessions() -> int:
    return sum(isinstance(obj, ort.InferenceSession) for obj in gc.get_objects())

class Metrics:
    """Request counts by route and status, and a latency histogram of the inference routes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, route: str, status: int, seconds: float | None) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            if seconds is not None:
                self.bucket_counts[bisect_left(BUCKETS, seconds)] += 1
                self.latency_sum += seconds
                self.latency_count += 1

    def render(self, pool: InferencePool) -> str:
        with self._lock:
            requests = sorted(self.requests.items())
            counts, total, count = list(self.bucket_counts), self.latency_sum, self.latency_count
        lines = ["# HELP cutq_requests_total HTTP requests by route and status.", "# TYPE cutq_requests_total counter"]
        lines += [f'cutq_requests_total{{route="{route}",status="{status}"}} {n}' for (route, status), n in requests]
        lines += ["# HELP cutq_inference_seconds Time from request to response of the cut-out routes.",
                  "# TYPE cutq_inference_seconds histogram"]
        cumulative = 0
        for bound, n in zip((*BUCKETS, "+Inf"), counts, strict=True):
            cumulative += n
            lines.append(f'cutq_inference_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines += [f"cutq_inference_seconds_sum {total:.6f}", f"cutq_inference_seconds_count {count}"]
        gauges = {
            "cutq_queue_depth": ("Requests admitted and not yet running (reading their upload or waiting).",
                                 pool.admitted - pool.running),
            "cutq_inflight": ("Inferences running now.", pool.running),
            "cutq_inflight_peak": ("The most inferences ever running at once.", pool.peak_running),
            "cutq_max_concurrency": ("The worker pool's size.", pool.concurrency),
            "cutq_max_queue": ("The queue's size.", pool.max_queue),
            "cutq_refused_total": ("Requests refused because the queue was full (503).", pool.refused),
            "cutq_queue_timeouts_total": ("Requests that waited too long (504).", pool.timed_out),
            "cutq_onnx_sessions": ("Live ONNX Runtime sessions in the process.", live_sessions()),
            "process_resident_memory_bytes": ("Resident memory of the server process.", rss_bytes()),
        }
        for name, (text, value) in gauges.items():
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        return "\n".join(lines) + "\n"
