"""Timings taken with the variants interleaved, so drift on a busy machine hits every row alike.

Every measurement is a loop over rounds; in each round every runner does the same work once, in an
order shuffled with a seeded generator (no row always runs first, or next to the same neighbour) and
reproducible from the seed. Ratios between rows of one run are the figures to trust.

Per-call figures (session latency, end to end) time the second of two calls in a row. ONNX Runtime's
worker threads keep spinning for a while after a run, so the first call after another variant's shares
the cores with that variant's spinning threads (and starts on a cold cache): a fixed cost of some 30 ms
on 2 cores, which made a 125 ms model look 26% slower than in its steady state and a 655 ms model 5%
(u2net-p50-int8 against FP32 u2net: 0.230x instead of 0.191x). A user's session serving image after
image runs in the steady state; the untimed call in front measures that.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runners import Runner


@dataclass(frozen=True)
class Stats:
    """Milliseconds over the timed runs (warm-up excluded)."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        p50, p95 = np.percentile(samples, [50, 95])
        return cls(float(p50), float(p95), float(np.mean(samples)), len(samples))


def _interleave(runners: Sequence[Runner], rounds: int, rng: random.Random,
                work: Callable[[Runner, int], Any], settle: bool = False) -> dict[str, list[float]]:
    """Milliseconds of `work(runner, round)` for each runner, rounds outermost, order shuffled per round;
    with `settle`, each timed call follows an untimed one of the same work (see the module docstring)."""
    samples: dict[str, list[float]] = {r.variant.name: [] for r in runners}
    order = list(runners)
    for index in range(rounds):
        rng.shuffle(order)
        for runner in order:
            if settle:
                work(runner, index)
            start = time.perf_counter()
            work(runner, index)
            samples[runner.variant.name].append((time.perf_counter() - start) * 1000)
    return samples


def latency(runners: Sequence[Runner], photos: Sequence[Any], runs: int, warmup: int,
            rng: random.Random) -> dict[str, Stats]:
    """Session latency: one ONNX Runtime call on a prepared input, cycling through the photos."""
    prepared = {r.variant.name: [r.prepare(p) for p in photos] for r in runners}
    for runner in runners:
        for index in range(warmup):
            runner.infer(prepared[runner.variant.name][index % len(photos)])

    def one(runner: Runner, index: int) -> None:
        inputs = prepared[runner.variant.name]
        runner.infer(inputs[index % len(inputs)])

    return {name: Stats.of(ms) for name, ms in _interleave(runners, runs, rng, one, settle=True).items()}


def end_to_end(runners: Sequence[Runner], payloads: Sequence[bytes], repeats: int,
               rng: random.Random) -> dict[str, Stats]:
    """Bytes in to PNG bytes out per image (`remove()`), every image `repeats` times; sessions are already warm."""
    return {name: Stats.of(ms) for name, ms in
            _interleave(runners, repeats * len(payloads), rng, lambda r, i: r.remove(payloads[i % len(payloads)]),
                        settle=True).items()}


def throughput(runners: Sequence[Runner], paths: Sequence[Path], repeats: int, rng: random.Random) -> dict[str, float]:
    """Images per second over a folder run (read, remove, write each file) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="cutq-bench-") as tmp:

        def one(runner: Runner, index: int) -> None:
            out = Path(tmp) / f"{index}-{runner.variant.name.replace(' ', '_')}"
            out.mkdir()
            runner.folder(paths, out)

        samples = _interleave(runners, repeats, rng, one)
    return {name: len(paths) * len(ms) / (sum(ms) / 1000) for name, ms in samples.items()}
