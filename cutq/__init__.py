"""cutq: quantize, prune, benchmark and serve U²-Net background-removal models on CPU.

Subpackages map to the repository's top-level folders: `cutq.quantize` is `quantize/`,
`cutq.benchmarks` is `benchmarks/`. Serving lives in the separate `cutq_runtime` distribution.
"""

__version__ = "0.1.0"
