"""Decoding input images safely and encoding results.

Every failure becomes an `ImageError` naming the source, raised before anything is written, so a
folder run can report the file and go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import png
from .errors import ImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (about 9459 x 9459); `CUTQ_MAX_PIXELS` or `max_pixels` changes it."""

_KEEP_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def max_pixels_default() -> int:
    raw = os.environ.get("CUTQ_MAX_PIXELS")
    return int(raw) if raw else DEFAULT_MAX_PIXELS


def decode(data: bytes, source: str, max_pixels: int | None = None) -> Image.Image:
    """Bytes to a fully loaded, upright image in a mode the cut-out can use; `ImageError` otherwise."""
    if not data:
        raise ImageError(source, "empty file", "empty")
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img, source, limit)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"image too large: {exc}", "too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(source, "not an image, or a format Pillow cannot read", "not_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(source, f"corrupt or truncated image data ({exc})") from exc
    return prepare(img, source, limit, owned=True)


def prepare(img: Image.Image, source: str, max_pixels: int | None = None, *, owned: bool = False) -> Image.Image:
    """Apply EXIF orientation (as rembg does) and bring odd modes to ones the pipeline handles.

    `owned=True` means the image was decoded here, so it may be rotated in place instead of copied
    (a caller's image is never modified).
    """
    _check_pixels(img, source, max_pixels if max_pixels is not None else max_pixels_default())
    # A malformed EXIF block must not lose the image: keep it as stored.
    with contextlib.suppress(Exception):
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
    if img.mode in _KEEP_MODES:
        return img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        return _to_8bit(img)
    try:
        return img.convert("RGBA" if "A" in img.getbands() else "RGB")
    except (ValueError, OSError) as exc:
        raise ImageError(source, f"unsupported image mode {img.mode}", "unsupported") from exc


def _check_pixels(img: Image.Image, source: str, limit: int) -> None:
    width, height = img.size
    if width * height > limit:
        raise ImageError(
            source,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(decompression-bomb guard; raise it with --max-pixels or CUTQ_MAX_PIXELS)",
            "too_large",
        )
    if width == 0 or height == 0:
        raise ImageError(source, "image has no pixels", "empty")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale to 8-bit by range, instead of Pillow's clipping (which turns them white)."""
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(arr) * scale, 0, 255)
    elif img.mode == "I" and int(arr.max(initial=0)) <= 255:
        out = np.clip(arr, 0, 255)
    else:
        out = np.clip(arr.astype(np.float64) / 257.0, 0, 255)
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L")


def encode_png(img: Image.Image, compress_level: int) -> bytes:
    """PNG bytes. Pixels never depend on `compress_level`; only file size and time do."""
    return png.encode(img, compress_level)


def encode_webp(img: Image.Image) -> bytes:
    """Lossless WebP bytes (the same pixels as the PNG, alpha included; smaller, slower to encode)."""
    out = io.BytesIO()
    img.save(out, "WEBP", lossless=True, quality=50, method=2)
    return out.getvalue()
