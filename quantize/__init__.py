"""The model pipeline (`cutq quantize`, `cutq prune`): each step is `ModelProto (+ config) -> ModelProto (+ report)`.

Steps import preprocessing from `cutq_runtime.preprocess`, never re-implement it, so calibration sees
exactly the tensors the runtime serves.
"""
