"""pytest-benchmark suites for the runtime's hot paths, one stage per benchmark.

These are the stages the e2e benchmark breaks `remove()` into; here each is timed alone and many times,
so a change to one stage shows up against a saved baseline (`--benchmark-compare`) without the noise of
the others. Not collected by `make test` (testpaths is `tests/`); see benchmarks/README.md.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from cutq.benchmarks.data import BenchImage
from cutq_runtime import images, postprocess, preprocess
from cutq_runtime.api import DEFAULT_PNG_LEVEL
from cutq_runtime.models import list_models
from cutq_runtime.registry import InputSpec
from cutq_runtime.session import Session

Benchmark = Callable[..., object]  # pytest-benchmark's fixture: call it with the function and its arguments
SPEC = InputSpec()


@pytest.mark.benchmark(group="decode")
def test_decode(benchmark: Benchmark, sample: BenchImage) -> None:
    """Bytes to an upright image; grows with pixel count, and dominates nothing at 854x480."""
    img = benchmark(images.decode, sample.data, sample.label)
    assert img.size == sample.size


@pytest.mark.benchmark(group="preprocess")
def test_preprocess_to_tensor(benchmark: Benchmark, decoded: Image.Image) -> None:
    """Resize to 320x320 plus the table-driven normalisation; the resize is the size-dependent part."""
    tensor = benchmark(preprocess.to_tensor, decoded, SPEC)
    assert tensor.shape == (1, 3, 320, 320)


def _cached_variants() -> list:
    """u2netp and u2net, plus every variant in the cache (INT8, pruned, ...), so each gets its own line."""
    names = ["u2netp", "u2net", *(i.name for i in list_models() if i.kind == "variant")]
    return [pytest.param(n, marks=pytest.mark.slow) if n == "u2net" else n for n in names]


@pytest.mark.benchmark(group="inference")
@pytest.mark.parametrize("model", _cached_variants())
def test_session_run(benchmark: Benchmark, model: str, photo: BenchImage,
                     load_model: Callable[[str], Session]) -> None:
    """One ONNX Runtime call on a 320x320 tensor: independent of the photo size, so timed once per variant."""
    session = load_model(model)
    tensor = preprocess.to_tensor(images.decode(photo.data, photo.label), session.input_spec)
    prediction = benchmark(session.run, tensor)
    assert prediction.shape[-2:] == (320, 320)


@pytest.mark.benchmark(group="postprocess")
def test_postprocess(benchmark: Benchmark, decoded: Image.Image, prediction: np.ndarray) -> None:
    """Min-max mask, LANCZOS upscale to the image size and the composite: grows with pixel count."""

    def run() -> Image.Image:
        return postprocess.cutout(decoded, postprocess.to_mask(prediction, decoded.size))

    result = benchmark(run)
    assert result.mode == "RGBA"


@pytest.mark.benchmark(group="encode")
@pytest.mark.parametrize("level", [DEFAULT_PNG_LEVEL, 9], ids=lambda level: f"level{level}")
def test_encode_png(benchmark: Benchmark, cut: Image.Image, level: int) -> None:
    """cutq's PNG writer at its default level and at its smallest-file level."""
    data = benchmark(images.encode_png, cut, level)
    assert data.startswith(b"\x89PNG")


@pytest.mark.benchmark(group="encode")
def test_encode_png_pillow_level6(benchmark: Benchmark, cut: Image.Image) -> None:
    """Pillow's encoder at its default level 6: what rembg spends, for comparison."""

    def run() -> bytes:
        buffer = io.BytesIO()
        cut.save(buffer, "PNG")
        return buffer.getvalue()

    assert benchmark(run).startswith(b"\x89PNG")
