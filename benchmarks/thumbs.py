"""Small pictures for the HTML report: a photo, and a cut-out composited on a checkerboard.

A checkerboard, not white or black, so both a halo (background kept) and a hole (foreground lost) show.
JPEG at a fixed quality keeps a report with dozens of thumbnails to a few hundred kilobytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WIDTH = 280
SQUARE = 10
QUALITY = 82


def _fit(img: Image.Image, width: int) -> Image.Image:
    height = max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def _jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, "JPEG", quality=QUALITY, optimize=True)
    return buffer.getvalue()


def checkerboard(size: tuple[int, int], square: int = SQUARE) -> Image.Image:
    ys, xs = np.indices((size[1], size[0]))
    light = ((ys // square + xs // square) % 2 == 0)
    return Image.fromarray(np.where(light, 236, 196).astype(np.uint8), "L").convert("RGB")


def photo(img: Image.Image, width: int = WIDTH) -> bytes:
    return _jpeg(_fit(img.convert("RGB"), width))


def cutout(img: Image.Image, mask: Image.Image, width: int = WIDTH) -> bytes:
    """The photo through its served mask, over a checkerboard, scaled to `width`."""
    small, small_mask = _fit(img.convert("RGB"), width), _fit(mask.convert("L"), width)
    return _jpeg(Image.composite(small, checkerboard(small.size), small_mask))
