"""Benchmarks for cutq, kept out of `make test`: they measure speed, which is noisy and machine-bound.

`cutq bench` (`harness.py` and the modules it names) compares every variant in one interleaved run;
`python -m cutq.benchmarks.e2e` compares `cutq_runtime.remove()` with `rembg.remove()` stage by stage;
`benchmarks/suites` holds pytest-benchmark suites for the runtime's hot paths. See README.md.
"""
