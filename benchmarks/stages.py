"""Both pipelines cut into the same five stages, so the e2e report can say where the time goes.

The rembg side replays what `rembg.remove(bytes, session=...)` does for a U²-Net session, line for line
(open + EXIF fix, `normalize`, `inner_session.run`, min-max + LANCZOS mask + `naive_cutout`, PNG at
Pillow's default level). The cutq side calls the runtime's own stage functions. `check_replicas` proves
each replay produces the same bytes as the real `remove()`, so the breakdown describes the measured code.

rembg is a dev dependency only: it is imported inside `rembg_stages`, never at module level, because
`cutq bench` imports this module (through `runners`) and must start without rembg installed.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from cutq_runtime import images, postprocess, preprocess
from cutq_runtime.api import DEFAULT_PNG_LEVEL
from cutq_runtime.session import Session

if TYPE_CHECKING:
    from rembg.sessions.base import BaseSession

STAGES = ("decode", "preprocess", "inference", "postprocess", "encode")
# U2netSession/U2netpSession.predict hard-code these; the replay must use the same.
REMBG_MEAN = (0.485, 0.456, 0.406)
REMBG_STD = (0.229, 0.224, 0.225)
REMBG_SIZE = (320, 320)

StageFn = Callable[[bytes], tuple[dict[str, float], bytes]]


class _Laps:
    """Milliseconds per stage, measured as consecutive laps of one clock."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = (now - self._last) * 1000.0
        self._last = now


def cutq_stages(data: bytes, session: Session) -> tuple[dict[str, float], bytes]:
    """`cutq_runtime.remove(bytes)` stage by stage: returns ms per stage and the PNG bytes."""
    laps = _Laps()
    img = images.decode(data, "<bench>")
    laps.lap("decode")
    tensor = preprocess.to_tensor(img, session.input_spec)
    laps.lap("preprocess")
    prediction = session.run(tensor)
    laps.lap("inference")
    cut = postprocess.cutout(img, postprocess.to_mask(prediction, img.size))
    laps.lap("postprocess")
    out = images.encode_png(cut, DEFAULT_PNG_LEVEL)
    laps.lap("encode")
    return laps.times, out


def rembg_stages(data: bytes, session: BaseSession) -> tuple[dict[str, float], bytes]:
    """`rembg.remove(bytes, session=...)` stage by stage: returns ms per stage and the PNG bytes."""
    from rembg.bg import fix_image_orientation, naive_cutout  # imported before the first lap: not timed

    laps = _Laps()
    img = fix_image_orientation(Image.open(io.BytesIO(data)))
    img.load()  # exif_transpose already loads via copy(); kept so a lazy image can never leak time
    laps.lap("decode")
    inputs = session.normalize(img, REMBG_MEAN, REMBG_STD, REMBG_SIZE)
    laps.lap("preprocess")
    outputs = session.inner_session.run(None, inputs)
    laps.lap("inference")
    pred = outputs[0][:, 0, :, :]
    ma, mi = np.max(pred), np.min(pred)
    pred = np.squeeze((pred - mi) / (ma - mi))
    if session.name() != "u2netp":  # U2netpSession.predict skips the clip; U2netSession does it
        pred = pred.clip(0, 1)
    mask = Image.fromarray((pred * 255).astype("uint8"), mode="L").resize(img.size, Image.Resampling.LANCZOS)
    cut = naive_cutout(img, mask)
    laps.lap("postprocess")
    buffer = io.BytesIO()
    cut.save(buffer, "PNG")
    out = buffer.getvalue()
    laps.lap("encode")
    return laps.times, out


def png_pixels(data: bytes) -> np.ndarray:
    """RGBA pixels of a PNG, as int16 so differences cannot wrap."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGBA"), dtype=np.int16)


def max_abs_diff(a: bytes, b: bytes) -> tuple[int, int]:
    """(max |Δalpha|, max |ΔRGBA|) between two PNG outputs; -1 when their sizes differ."""
    pa, pb = png_pixels(a), png_pixels(b)
    if pa.shape != pb.shape:
        return -1, -1
    diff = np.abs(pa - pb)
    return int(diff[..., 3].max()), int(diff.max())


def check_replicas(data: bytes, rembg_png: bytes, cutq_png: bytes, rembg_fn: StageFn, cutq_fn: StageFn) -> list[str]:
    """Problems found when a stage replay's pixels differ from the real `remove()` output (empty list: none)."""
    problems = []
    for name, fn, reference in (("rembg", rembg_fn, rembg_png), ("cutq", cutq_fn, cutq_png)):
        if max_abs_diff(fn(data)[1], reference)[1] != 0:
            problems.append(f"{name} stage replay differs from {name}.remove(); its breakdown is approximate")
    return problems
