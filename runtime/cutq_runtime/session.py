"""An ONNX Runtime session for one U²-Net variant, loaded once and safe to share between threads.

`InferenceSession.run` is thread-safe, and pre/postprocessing keep no state, so one `Session` can
serve many requests at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from . import cpu, postprocess, preprocess
from .errors import CutqWarning, ModelError
from .models import ResolvedModel, resolve
from .progress import ProgressFn
from .registry import InputSpec

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime runs the model. `threads=None` lets it use every physical core.

    `strict_cpu` refuses (`ModelError`) a variant that may compute wrong masks on this CPU instead of
    warning; `CUTQ_STRICT_CPU=1` turns it on for every session, so deployments can insist without code."""

    threads: int | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    optimization: str = "all"
    strict_cpu: bool = False
    # Give ONNX Runtime's memory arena back after every run: the cut-out of a large photo then does not stack on
    # the model's working memory, at the cost of allocating that memory again on the next run. For small devices;
    # servers keep the arena.
    low_memory: bool = False
    # ONNX Runtime's memory pattern plans one block per input shape after the first run, on top of the arena that
    # run already filled: over a folder of photos of many sizes it costs memory and gains no speed. Off unless asked.
    memory_pattern: bool = False
    # At most this many inferences at once (None: as many as callers). A folder run with one worker decodes and
    # encodes the next and previous photos while one inference uses every core, without a second set of activations.
    parallel_runs: int | None = None

    def session_options(self) -> ort.SessionOptions:
        if self.optimization not in _OPT_LEVELS:
            raise ModelError(f"optimization must be one of {sorted(_OPT_LEVELS)}, not '{self.optimization}'")
        options = ort.SessionOptions()
        options.graph_optimization_level = _OPT_LEVELS[self.optimization]
        options.log_severity_level = 3
        options.enable_mem_pattern = self.memory_pattern
        if self.threads:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        return options


class Session:
    """A loaded model plus the input convention it is served with."""

    def __init__(self, model: ResolvedModel, config: SessionConfig | None = None) -> None:
        self.model = model
        self.config = config or SessionConfig()
        check_requirements(model.manifest, model.path)
        check_cpu(model.manifest, model.path, self.config.strict_cpu)
        self.disabled_optimizers = disabled_optimizers(model.manifest)
        self.inference = _load(model.path, self.config, self.disabled_optimizers)
        _check_io(self.inference, model.path)
        self.input_name = self.inference.get_inputs()[0].name
        self.output_name = self.inference.get_outputs()[0].name
        self._run_options: ort.RunOptions | None = None
        runs = self.config.parallel_runs
        self._gate = threading.BoundedSemaphore(runs) if runs else None
        if self.config.low_memory:
            self._run_options = ort.RunOptions()
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def input_spec(self) -> InputSpec:
        return self.model.input

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """The fused mask map [1, 1, H, W] for an input tensor from `preprocess.to_tensor`."""
        with self._gate or contextlib.nullcontext():
            return self.inference.run([self.output_name], {self.input_name: tensor}, self._run_options)[0]

    def predict_mask(self, img: Image.Image) -> Image.Image:
        """An 8-bit mask at the image's own size."""
        tensor = preprocess.to_tensor(img, self.input_spec)
        return postprocess.to_mask(self.run(tensor), img.size)

    def __repr__(self) -> str:
        return f"Session(name={self.name!r}, path={str(self.model.path)!r})"


def new_session(model: str | os.PathLike[str] = "u2net", *, threads: int | None = None,
                providers: list[str] | tuple[str, ...] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                config: SessionConfig | None = None, progress: ProgressFn | None = None,
                strict_cpu: bool = False) -> Session:
    """Load a model by variant name (`u2net`, `u2netp-int8`, ...) or path, pulling released models if missing.

    `strict_cpu=True` (or `CUTQ_STRICT_CPU=1`) refuses a variant this CPU may compute wrong masks with."""
    from .models import cache_dir as default_cache

    config = config or SessionConfig(
        threads=threads, providers=tuple(providers) if providers else SessionConfig.providers
    )
    if strict_cpu and not config.strict_cpu:
        config = replace(config, strict_cpu=True)
    resolved = resolve(model, default_cache(cache_dir), progress=progress)
    return Session(resolved, config)


def disabled_optimizers(manifest: dict | None) -> tuple[str, ...]:
    """ONNX Runtime graph optimizers the variant's manifest asks to leave out (`session.disabled_optimizers`).

    cutq's INT8 variants keep their output head float. At the "all" level ONNX Runtime would move those few
    float Convs into its NCHWc layout, and the reorders of full-resolution feature maps around them cost
    more than the layout saves. FP32 models gain from NCHWc and do not ask. An `.ort` file never gets it anyway."""
    section = (manifest or {}).get("session") or {}
    wanted = section.get("disabled_optimizers") or () if isinstance(section, dict) else section
    if not isinstance(wanted, list | tuple) or not all(isinstance(name, str) for name in wanted):
        raise ModelError(f"manifest: session.disabled_optimizers must be a list of names, not {wanted!r}")
    return tuple(wanted)


def check_requirements(manifest: dict | None, path: Path) -> None:
    """Refuse, with the fix, a variant whose manifest needs a newer onnxruntime (`requires.onnxruntime`).

    Variants with 4-bit weights need ONNX Runtime 1.23 for its INT4 Cast kernel; older versions fail at load
    time with a message about a missing Cast implementation, which does not say what to do."""
    requires = (manifest or {}).get("requires") or {}
    if not isinstance(requires, dict):
        raise ModelError(f"{path}: manifest 'requires' must be a mapping like {{\"onnxruntime\": \"1.23\"}}, not {requires!r}")
    needed = str(requires.get("onnxruntime", "") or "")
    if needed and _version(ort.__version__) < _version(needed):
        raise ModelError(f"{path}: needs onnxruntime >= {needed}, this is {ort.__version__} "
                         f"(pip install -U 'onnxruntime>={needed}')")


def check_cpu(manifest: dict | None, path: Path, strict: bool = False) -> None:
    """Warn (`CutqWarning`), or refuse when strict, if the variant's integer kernels may saturate on this CPU.

    INT8 variants with full 8-bit weights are exact only on ARM64 and x86 with VNNI (see `cpu`); users of
    other CPUs would otherwise get subtly wrong masks with no sign of why."""
    problem = cpu.claim_problem(manifest, path)
    if problem is None:
        return
    if strict or os.environ.get("CUTQ_STRICT_CPU", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise ModelError(f"{problem} (refused: strict CPU check, `strict_cpu` or CUTQ_STRICT_CPU=1)")
    warnings.warn(problem, CutqWarning, stacklevel=_outside_level())


def _outside_level() -> int:
    """The `stacklevel` of the first caller outside this package, so the warning points at the user's line."""
    here, level = Path(__file__).parent, 2
    frame = sys._getframe(2)  # the caller of check_cpu
    while frame.f_back is not None and Path(frame.f_code.co_filename).parent == here:
        frame, level = frame.f_back, level + 1
    return level


def _version(text: str) -> tuple[int, ...]:
    """Leading numeric release parts: '1.23.0rc1' -> (1, 23, 0)."""
    return tuple(int(match.group()) if (match := re.match(r"\d+", piece)) else 0 for piece in text.split(".")[:3])


def _load(path: Path, config: SessionConfig, disabled: tuple[str, ...] = ()) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=config.session_options(), providers=list(config.providers),
                                    disabled_optimizers=list(disabled) or None)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model ({first})") from exc


def _check_io(inference: ort.InferenceSession, path: Path) -> None:
    """Refuse models that are not U²-Net-like: one image input [N, 3, H, W], a first output [N, 1, H, W]."""
    inputs, outputs = inference.get_inputs(), inference.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3:
        shapes = [tuple(i.shape) for i in inputs]
        raise ModelError(f"{path}: not a U²-Net-like model (expects one [N, 3, H, W] image input, has {shapes})")
    if not outputs or len(outputs[0].shape) != 4 or outputs[0].shape[1] != 1:
        shape = tuple(outputs[0].shape) if outputs else None
        raise ModelError(f"{path}: not a U²-Net-like model (first output should be a [N, 1, H, W] mask, is {shape})")


def check_u2net_like(path: Path) -> None:
    """Load a file once to check it is a U²-Net-like model; `ModelError` otherwise."""
    config = SessionConfig(threads=1, optimization="disable")
    _check_io(_load(path, config), path)
