"""Benchmarks for cutq, kept out of `make test`: they measure speed, which is noisy and machine-bound.

`python -m cutq.benchmarks.e2e` compares `cutq_runtime.remove()` with `rembg.remove()` end to end in one
process, and `benchmarks/suites` holds pytest-benchmark suites for the runtime's hot paths. See README.md.
"""
