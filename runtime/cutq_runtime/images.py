"""Decoding input images safely and encoding results.

Every failure becomes an `ImageError` naming the source, raised before anything is written, so a
folder run can report the file and go on.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import png
from .errors import CutqError, ImageError

DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb threshold (about 9459 x 9459); `CUTQ_MAX_PIXELS` or `max_pixels` changes it."""

MAX_SIDE = 32_768
"""The longest side accepted, whatever the pixel limit: resampling a 30,000,000 x 1 strip to the model's 320 x 320
and back builds filter tables that took 1.9 GB and 22 s for an image of 29 kB."""

DEFAULT_MAX_BYTES = 256 << 20
"""Files and stdin larger than this are refused before they are read whole (`CUTQ_MAX_BYTES` or `max_bytes`):
a 12 MP JPEG is a few MB and a 89 MP PNG rarely over 200 MB, while /dev/zero or an endless pipe never ends."""

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "PPM")  # JPEG opens MPO too
"""The only formats Pillow is asked to open. Each reads its size from the header and decodes in `load()`, after
the limits are checked; others (ICO decodes its largest frame inside `Image.open`) are refused unread."""
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, TIFF, GIF, PPM"

JPEG_MAX_PIXELS_PER_BYTE = 2_000
"""A baseline or progressive JPEG codes every 8 x 8 block in at least one bit (512 pixels a byte for a flat grey
image); a file declaring far more pixels than that is truncated or padded, and libjpeg would pad it with grey
at full size (1 kB declaring 9000 x 9000 decoded to 81 Mpx in 9 s)."""
JPEG_MAX_SCANS = 256
"""Each progressive scan walks the whole image again; libjpeg-turbo's own tools stop at 500. Real files have ~10."""

_KEEP_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


def max_pixels_default() -> int:
    return _env_int("CUTQ_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def max_bytes_default() -> int:
    return _env_int("CUTQ_MAX_BYTES", DEFAULT_MAX_BYTES)


def check_bytes(size: int, source: str, max_bytes: int | None, *, at_least: bool = False) -> int:
    """The byte limit (`max_bytes`, else the default); `ImageError` when `size` passes it. `at_least`: the size is
    where reading stopped, not the whole (a stream)."""
    limit = max_bytes or max_bytes_default()
    if size > limit:
        text = f"more than {limit} bytes, over the limit" if at_least else f"{size} bytes is over the limit of {limit}"
        raise ImageError(source, f"{text} (`max_bytes`)", "too_large")
    return limit


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise CutqError(f"{name}: expected a positive whole number, not '{raw}'")
    return int(raw)


def decode(data: bytes, source: str, max_pixels: int | None = None) -> Image.Image:
    """Bytes to a fully loaded, upright image in a mode the cut-out can use; `ImageError` otherwise."""
    if not data:
        raise ImageError(source, "empty file", "empty")
    limit = max_pixels if max_pixels is not None else max_pixels_default()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's warnings on odd data (bombs, corrupt EXIF): the checks here decide
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_pixels(img, source, limit)
            if img.format in ("JPEG", "MPO"):
                _check_jpeg(img, data, source)
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(source, f"image too large: {exc}", "too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(source, f"not an image in a format cutq reads ({FORMAT_NAMES})", "not_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError) as exc:
        raise ImageError(source, f"corrupt or truncated image data ({first_line(exc)})") from exc
    except MemoryError as exc:
        raise ImageError(source, "corrupt image data: decoding it ran out of memory", "too_large") from exc
    except RecursionError as exc:
        raise ImageError(source, "corrupt image data: nested too deeply to read") from exc
    return prepare(img, source, limit, owned=True)


def header_pixels(data: bytes) -> int:
    """Width x height from the header alone (0 if unreadable: `decode` will say why)."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            return img.size[0] * img.size[1]
    except Exception:  # noqa: BLE001 - any failure here is reported by decode, with its reason
        return 0


def prepare(img: Image.Image, source: str, max_pixels: int | None = None, *, owned: bool = False) -> Image.Image:
    """Apply EXIF orientation (as rembg does) and bring odd modes to ones the pipeline handles.

    `owned=True` means the image was decoded here, so it may be rotated in place instead of copied
    (a caller's image is never modified).
    """
    _check_pixels(img, source, max_pixels if max_pixels is not None else max_pixels_default())
    # A malformed EXIF block must not lose the image: keep it as stored.
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_jpeg(img: Image.Image, data: bytes, source: str) -> None:
    width, height = img.size
    if width * height > len(data) * JPEG_MAX_PIXELS_PER_BYTE:
        raise ImageError(source, f"declares {width}x{height} pixels in {len(data)} bytes: a truncated or padded JPEG")
    scans = data.count(b"\xff\xda")  # start-of-scan markers; 0xFF inside coded data is always followed by 0x00
    if scans > JPEG_MAX_SCANS:
        raise ImageError(source, f"has {scans} scans, over the {JPEG_MAX_SCANS} any real JPEG needs", "too_large")


def _check_pixels(img: Image.Image, source: str, limit: int) -> None:
    width, height = img.size
    if max(width, height) > MAX_SIDE:
        raise ImageError(source, f"{width}x{height}: a side over {MAX_SIDE} pixels is refused (long-strip guard)",
                         "too_large")
    if width * height > limit:
        raise ImageError(
            source,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} "
            "(decompression-bomb guard; raise it with `max_pixels` or CUTQ_MAX_PIXELS)",
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
