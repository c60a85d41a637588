"""One interface over the two engines a benchmark row can use: cutq's runtime or rembg.

The harness times `infer` (one ONNX Runtime call on a prepared input), `remove` (bytes in, PNG bytes out),
`folder` (what `cutq remove DIR --out-dir` or `rembg p` does) and asks `masks` for quality, without
knowing which library is behind a row. Each engine uses its own public calls and its own preprocessing,
so a rembg row measures rembg as its users run it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from PIL import Image

import cutq_runtime
from cutq_runtime import batch, postprocess, preprocess
from cutq_runtime.api import RemoveOptions
from cutq_runtime.session import Session, SessionConfig

from .stages import REMBG_MEAN, REMBG_SIZE, REMBG_STD
from .variants import Variant


class Runner(Protocol):
    variant: Variant
    load_ms: float

    def prepare(self, img: Image.Image) -> Any: ...
    def infer(self, prepared: Any) -> None: ...
    def remove(self, data: bytes) -> bytes: ...
    def folder(self, paths: Sequence[Path], out_dir: Path) -> None: ...
    def masks(self, img: Image.Image) -> tuple[np.ndarray, Image.Image]: ...


class CutqRunner:
    """A cutq `Session` on the variant's file (already verified when the variant was selected)."""

    def __init__(self, variant: Variant, threads: int | None) -> None:
        self.variant = variant
        start = time.perf_counter()
        self.session = Session(variant.model, SessionConfig(threads=threads))
        self.load_ms = (time.perf_counter() - start) * 1000

    def prepare(self, img: Image.Image) -> np.ndarray:
        return preprocess.to_tensor(img, self.session.input_spec)

    def infer(self, prepared: np.ndarray) -> None:
        self.session.run(prepared)

    def remove(self, data: bytes) -> bytes:
        return cutq_runtime.remove(data, session=self.session)

    def folder(self, paths: Sequence[Path], out_dir: Path) -> None:
        jobs = batch.plan([str(p) for p in paths], None, str(out_dir))
        failed = batch.run(jobs, self.session, RemoveOptions()).failed
        if failed:
            raise RuntimeError(f"{self.variant.name}: {failed[0][1]}")

    def masks(self, img: Image.Image) -> tuple[np.ndarray, Image.Image]:
        """The min-max normalised map at model resolution and the served 8-bit mask at the image's size."""
        prediction = self.session.run(self.prepare(img))
        return postprocess.normalize(prediction), postprocess.to_mask(prediction, img.size)


class _Recording:
    """Wraps rembg's ORT session to keep the raw output of the last call, so one `predict` gives both masks."""

    def __init__(self, inner: ort.InferenceSession) -> None:
        self.inner = inner
        self.outputs: list[np.ndarray] = []

    def run(self, *args: Any, **kwargs: Any) -> list[np.ndarray]:
        self.outputs = self.inner.run(*args, **kwargs)
        return self.outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def rembg_session(name: str, model_path: Path, threads: int | None) -> Any:
    """A rembg session on exactly `model_path` (rembg finds it through `U2NET_HOME`); refuses another file.

    rembg's default model is not U²-Net, so the session is always built by name.
    """
    import rembg

    os.environ["U2NET_HOME"] = str(model_path.parent)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = rembg.new_session(name, sess_opts=options)
    loaded = Path(type(session).download_models()).resolve()
    if loaded != model_path.resolve():
        raise RuntimeError(f"{name}: rembg loads {loaded}, not {model_path}; the rows would not be comparable")
    return session


class RembgRunner:
    """rembg's own session, `remove()` and preprocessing, on the same released model file as the cutq row."""

    def __init__(self, variant: Variant, threads: int | None) -> None:
        import rembg

        self._remove = rembg.remove
        self.variant = variant
        start = time.perf_counter()
        self.session = rembg_session(variant.model.name, variant.model.path, threads)
        self.load_ms = (time.perf_counter() - start) * 1000

    def prepare(self, img: Image.Image) -> dict[str, np.ndarray]:
        return self.session.normalize(img, REMBG_MEAN, REMBG_STD, REMBG_SIZE)

    def infer(self, prepared: dict[str, np.ndarray]) -> None:
        self.session.inner_session.run(None, prepared)

    def remove(self, data: bytes) -> bytes:
        return self._remove(data, session=self.session)

    def folder(self, paths: Sequence[Path], out_dir: Path) -> None:
        """What `rembg p IN OUT` does per file: read, remove, write `<stem>.png`."""
        for path in paths:
            (out_dir / f"{path.stem}.png").write_bytes(self.remove(path.read_bytes()))

    def masks(self, img: Image.Image) -> tuple[np.ndarray, Image.Image]:
        recorder = _Recording(self.session.inner_session)
        self.session.inner_session = recorder
        try:
            mask = self.session.predict(img)[0]
        finally:
            self.session.inner_session = recorder.inner
        return postprocess.normalize(recorder.outputs[0]), mask


def load(variant: Variant, threads: int | None) -> Runner:
    return RembgRunner(variant, threads) if variant.engine == "rembg" else CutqRunner(variant, threads)
