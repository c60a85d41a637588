"""The PNG writer: every mode it handles decodes (with Pillow) to exactly the pixels it was given."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cutq_runtime import png


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    bands = len(Image.new(mode, (1, 1)).getbands())
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-3, 4, size=(size[1], size[0], bands)), axis=1) % 256
    arr = smooth.astype(np.uint8)
    return Image.fromarray(arr[..., 0] if bands == 1 else arr, mode=mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(1, 1), (7, 3), (451, 300)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_round_trip_is_exact(mode: str, size: tuple[int, int], level: int) -> None:
    img = _noise(mode, size)
    decoded = Image.open(io.BytesIO(png.encode(img, level)))
    assert decoded.mode == mode and decoded.size == size
    assert np.array_equal(np.asarray(decoded), np.asarray(img))


def test_large_image_split_across_threads_is_one_valid_stream() -> None:
    img = _noise("RGBA", (2400, 1600), seed=1)
    assert len(png._bands(np.zeros((1600, 2400 * 4 + 1), np.uint8))) >= min(2, png.os.cpu_count() or 1)
    decoded = Image.open(io.BytesIO(png.encode(img, 1)))
    decoded.load()
    assert np.array_equal(np.asarray(decoded), np.asarray(img))


def test_other_modes_fall_back_to_pillow() -> None:
    img = _noise("RGB", (40, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    decoded = Image.open(io.BytesIO(png.encode(img, 1)))
    assert decoded.mode == "P" and np.array_equal(np.asarray(decoded), np.asarray(img))


def test_higher_level_is_not_larger() -> None:
    img = _noise("RGBA", (451, 300), seed=2)
    assert len(png.encode(img, 9)) <= len(png.encode(img, 1)) < len(png.encode(img, 0))
