"""`remove()`: rembg's call signature, cutq's runtime underneath.

Given the same FP32 model, the RGBA result equals rembg's. Time is saved outside the model, mostly
in PNG encoding: byte output goes through `png.encode` at a fast zlib level (same pixels, larger
file; raise `png_compress_level` for smaller files). See benchmarks/README.md for where time goes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TypeVar, overload

import numpy as np
from PIL import Image

from . import images, postprocess
from .errors import ImageError
from .session import Session, new_session

DEFAULT_MODEL = "u2net"
DEFAULT_PNG_LEVEL = 1

Bgcolor = tuple[int, int, int, int]
ImageLike = TypeVar("ImageLike", bytes, Image.Image, np.ndarray)


@dataclass(frozen=True)
class RemoveOptions:
    """What to produce for each image; shared by `remove()`, the CLIs and folder runs."""

    only_mask: bool = False
    bgcolor: Bgcolor | None = None
    max_pixels: int | None = None
    png_compress_level: int = DEFAULT_PNG_LEVEL
    max_bytes: int | None = None  # files and stdin over this are refused unread (default: images.max_bytes_default)


_default_sessions: dict[str, Session] = {}
_default_lock = threading.Lock()


def default_session(model: str = DEFAULT_MODEL) -> Session:
    """One shared session per model name, created on first use, so `remove(data)` loads the model once."""
    with _default_lock:
        if model not in _default_sessions:
            _default_sessions[model] = new_session(model)
        return _default_sessions[model]


def cut(img: Image.Image, session: Session, options: RemoveOptions, source: str = "<input>") -> Image.Image:
    """The cut-out (or mask) for an already decoded image. Pillow checks some image data only when it is used
    (a PNG transparency table longer than its palette fails in the composite): that is the image's fault, an
    `ImageError` naming `source`, not a crash."""
    try:
        mask = session.predict_mask(img)
        if options.only_mask:
            return mask
        result = postprocess.cutout(img, mask)
    except (ValueError, OSError, IndexError) as exc:
        raise ImageError(source, f"image data cutq cannot use ({images.first_line(exc)})") from exc
    if options.bgcolor is not None:
        result = postprocess.apply_background(result, options.bgcolor)
    return result


@overload
def remove(data: bytes, session: Session | None = ..., only_mask: bool = ..., bgcolor: Bgcolor | None = ...,
           *, source: str = ..., options: RemoveOptions | None = ...) -> bytes: ...
@overload
def remove(data: Image.Image, session: Session | None = ..., only_mask: bool = ..., bgcolor: Bgcolor | None = ...,
           *, source: str = ..., options: RemoveOptions | None = ...) -> Image.Image: ...
@overload
def remove(data: np.ndarray, session: Session | None = ..., only_mask: bool = ..., bgcolor: Bgcolor | None = ...,
           *, source: str = ..., options: RemoveOptions | None = ...) -> np.ndarray: ...
def remove(data, session=None, only_mask=False, bgcolor=None, *, source="<input>", options=None):
    """Remove the background. Bytes in give PNG bytes out; a PIL image or numpy array gives the same kind back.

    `session` defaults to a shared `u2net` session. `options` overrides `only_mask` and `bgcolor` and
    adds the pixel limit and PNG level. Bad input raises `ImageError` naming `source`.
    """
    opts = options or RemoveOptions(only_mask=only_mask, bgcolor=tuple(bgcolor) if bgcolor else None)
    session = session or default_session()
    if isinstance(data, (bytes, bytearray, memoryview)):
        images.check_bytes(len(data), source, opts.max_bytes)
        result = cut(images.decode(bytes(data), source, opts.max_pixels), session, opts, source)
        return images.encode_png(result, opts.png_compress_level)  # the decoded photo is freed before encoding
    if isinstance(data, Image.Image):
        return cut(images.prepare(data, source, opts.max_pixels), session, opts, source)
    if isinstance(data, np.ndarray):
        try:
            img = Image.fromarray(data)
        except (TypeError, ValueError) as exc:
            raise ImageError(source, f"array of shape {data.shape} and dtype {data.dtype} is not an image") from exc
        return np.asarray(cut(images.prepare(img, source, opts.max_pixels), session, opts, source))
    raise TypeError(f"remove() takes bytes, a PIL image or a numpy array, not {type(data).__name__}")
