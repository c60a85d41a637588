"""Inputs for the hot-path suites, built once per run so each benchmark times exactly one stage.

Every size-dependent stage runs on two samples: `photo` (the first davis-val photo, 854x480, or the first
bundled calibration image when davis-val is not checked out) and `uhd` (that photo upscaled to 3840x2160,
as in the e2e benchmark). Models come from the cutq cache only: a missing model skips its benchmarks
instead of starting a 176 MB download in the middle of a timing run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from cutq.benchmarks.data import BenchImage, default_images_dir, load_photos, make_large, source_name
from cutq_runtime import images, postprocess, preprocess
from cutq_runtime.errors import ModelError
from cutq_runtime.models import resolve
from cutq_runtime.session import Session

SAMPLES = ("photo", "uhd")


@pytest.fixture(scope="session")
def photo() -> BenchImage:
    folder = default_images_dir()
    if not folder.is_dir():
        pytest.skip(f"no benchmark images: {folder} does not exist (set CUTQ_BENCH_IMAGES)")
    return load_photos(folder, 1)[0]


@pytest.fixture(scope="session", params=SAMPLES)
def sample(request: pytest.FixtureRequest, photo: BenchImage) -> BenchImage:
    """The encoded input for one size: the photo itself, or its 3840x2160 upscale."""
    return photo if request.param == "photo" else make_large(photo)


@pytest.fixture(scope="session")
def decoded(sample: BenchImage) -> Image.Image:
    return images.decode(sample.data, sample.label)


_sessions: dict[str, Session] = {}


def load_session(name: str) -> Session:
    """A cached session for a model (released or variant) already in the cache; skips the test when it is not there."""
    if name not in _sessions:
        try:
            _sessions[name] = Session(resolve(name, pull_missing=False))
        except ModelError as exc:
            pytest.skip(f"{exc} (benchmarks never download models)")
    return _sessions[name]


@pytest.fixture(scope="session")
def load_model() -> Callable[[str], Session]:
    """`load_session`, for test modules (they cannot import conftest)."""
    return load_session


@pytest.fixture(scope="session")
def prediction(decoded: Image.Image) -> np.ndarray:
    """A real u2netp output for the sample, so postprocessing sees a realistic mask."""
    session = load_session("u2netp")
    return session.run(preprocess.to_tensor(decoded, session.input_spec))


@pytest.fixture(scope="session")
def cut(decoded: Image.Image, prediction: np.ndarray) -> Image.Image:
    """The RGBA cut-out the encoder benchmarks compress."""
    return postprocess.cutout(decoded, postprocess.to_mask(prediction, decoded.size))


@pytest.fixture(autouse=True)
def _record_source(request: pytest.FixtureRequest) -> None:
    """Note in every saved result which photos it ran on, so baselines from different data are not compared blindly."""
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info["images"] = source_name(default_images_dir())
